//! `protonet predict`: classify query images from a few support images per class.

use std::path::PathBuf;

use clap::Args;
use protonet::data::list_images;
use protonet::{Error, FewShotClassifier, FilePrediction, OutputMode, Prediction, Result};

use crate::common::{device, ClassifyArgs, PretrainedBackbone};

/// Arguments of `protonet predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Model directory (from `protonet train`), or a classifier saved with --save (its
    /// classes are then known without --support).
    #[arg(long, required_unless_present = "backbone", conflicts_with = "backbone")]
    model: Option<PathBuf>,
    /// Use a frozen pretrained backbone instead of a trained model (its weights are
    /// referenced by name and SHA-256 in a saved classifier, not copied).
    #[arg(long, value_enum)]
    backbone: Option<PretrainedBackbone>,
    /// Image side for the pretrained backbone (RGB, ImageNet normalization).
    #[arg(long, default_value_t = 224)]
    image_size: usize,
    #[command(flatten)]
    classify: ClassifyArgs,
    /// Support folder: one sub-folder of images per class; the sub-folder's name is the class.
    #[arg(long)]
    support: Option<PathBuf>,
    /// Query images: files, or folders searched recursively for PNG and JPEG files. A query
    /// in a folder named like a support class counts as that class: the accuracy on those
    /// is printed at the end (and --json adds "expected").
    #[arg(long, num_args = 1.., required = true)]
    query: Vec<PathBuf>,
    /// Answer "unknown" for queries far from every prototype: the threshold is --threshold,
    /// else the one saved with the classifier, else calibrated from the support set.
    #[arg(long)]
    reject: bool,
    /// Rejection threshold on the squared distance to the nearest prototype (turns rejection on).
    #[arg(long)]
    threshold: Option<f32>,
    /// For calibration: the share of leave-one-out support distances the threshold covers.
    #[arg(long, default_value_t = 0.95)]
    quantile: f32,
    /// Save the classifier (model, prototypes, class names, threshold) to this directory.
    /// A directory that holds a model, classifier or training run is refused unless
    /// --overwrite is given; the --model directory itself is always refused (save the
    /// classifier beside it instead), so a trained model is never replaced by accident.
    #[arg(long)]
    save: Option<PathBuf>,
    /// With --save: replace the classifier or model that the directory holds.
    #[arg(long, requires = "save")]
    overwrite: bool,
    /// Classes listed per query in --json output (nearest first).
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// One JSON object per line and query: file, class (null for unknown), confidence,
    /// distance, top (the nearest classes with distance and probability), and expected
    /// (the class its folder names, if any).
    #[arg(long)]
    json: bool,
    /// cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: PredictArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let mut clf = open(&a, &dev)?;
    configure(&mut clf, &a)?;
    if let Some(dir) = &a.save {
        save(&clf, &a, dir)?;
    }
    answer(&clf, &a)
}

/// The classifier `--model` names (a model or a saved classifier), or the pretrained
/// backbone with the library's defaults for it.
fn open(a: &PredictArgs, dev: &protonet::Device) -> Result<FewShotClassifier> {
    match (&a.model, a.backbone) {
        (Some(dir), _) => FewShotClassifier::load(dir, dev),
        (None, Some(PretrainedBackbone::EfficientnetLite0)) => FewShotClassifier::efficientnet_lite0(a.image_size, dev),
        (None, None) => Err(Error::param("model", "give --model DIR or --backbone")),
    }
}

/// Applies the flags: normalization, rotations, the support folder, the threshold policy.
/// Refuses (before any query) a classifier that cannot answer.
fn configure(clf: &mut FewShotClassifier, a: &PredictArgs) -> Result<()> {
    let model_name = a.model.as_ref().map(|m| m.display().to_string()).unwrap_or_else(|| "the pretrained backbone".into());
    if let Some(n) = a.classify.normalize {
        clf.set_normalization(n.feature_norm())?;
    }
    if let Some(r) = a.classify.rotations {
        if r != clf.rotations() && !clf.class_names().is_empty() {
            return Err(Error::param("rotations", format!("{model_name} was saved with {} rotations; its prototypes cannot change to {r}", clf.rotations())));
        }
        clf.set_rotations(r)?;
    }
    if let Some(steps) = a.classify.adapt_steps {
        clf.set_method(&clf.store().method().config().with_adaptation_steps(steps))?;
    }
    if let Some(support) = &a.support {
        let added = clf.add_support_folder(support).map_err(|e| match e {
            // The library's reason already says what a class folder is when that is the fault.
            Error::Dataset { path, reason } if reason.contains("sub-folder") => Error::param("support", format!("{}: {reason}", path.display())),
            Error::Dataset { path, reason } => {
                Error::param("support", format!("{}: {reason} (--support takes a folder with one sub-folder of images per class)", path.display()))
            }
            other => other,
        })?;
        if let Some(imbalance) = added.imbalance() {
            eprintln!("warning: {imbalance}");
        }
    }
    if clf.class_names().is_empty() {
        return Err(Error::param("support", format!("{model_name} holds no classes: give --support DIR (one sub-folder per class)")));
    }
    match (a.threshold, a.reject) {
        (Some(t), _) => clf.set_threshold(Some(t))?,
        (None, true) if clf.threshold().is_some() => {}
        (None, true) => {
            clf.calibrate_threshold(a.quantile)?;
        }
        (None, false) => clf.set_threshold(None)?,
    }
    // One class without rejection would answer every query with it: refused before any query.
    clf.store().check_ready().map_err(|e| match e {
        Error::InvalidParameter { reason, .. } if reason.starts_with("only one class") => {
            Error::param("support", format!("{reason}: --reject (a threshold calibrated on the support set) or --threshold D"))
        }
        other => other,
    })?;
    let names = clf.class_names();
    eprintln!(
        "{} class{} ({}{}){}",
        names.len(),
        if names.len() == 1 { "" } else { "es" },
        names.iter().take(8).map(|n| escape_tsv(n)).collect::<Vec<_>>().join(", "),
        if names.len() > 8 { ", ..." } else { "" },
        clf.threshold().map(|t| format!("; rejecting queries farther than {t:.4} (squared distance)")).unwrap_or_default()
    );
    Ok(())
}

/// `--save`: never into the `--model` directory itself.
fn save(clf: &FewShotClassifier, a: &PredictArgs, dir: &std::path::Path) -> Result<()> {
    if a.model.as_ref().is_some_and(|model| same_dir(model, dir)) {
        return Err(Error::param(
            "save",
            format!("{} is the --model directory; save the classifier to another directory (it holds its own copy of the model)", dir.display()),
        ));
    }
    clf.save_with(dir, if a.overwrite { OutputMode::Overwrite } else { OutputMode::New })?;
    eprintln!("saved the classifier to {}", dir.display());
    Ok(())
}

/// Classifies the queries and prints a line each (errors and warnings included), then
/// the accuracy on queries whose folder names a class. Fails when a query could not be read.
fn answer(clf: &FewShotClassifier, a: &PredictArgs) -> Result<()> {
    // Paths that do not exist are reported like unreadable files: one line each, and the
    // other queries are still answered.
    let (present, missing): (Vec<PathBuf>, Vec<PathBuf>) = a.query.iter().cloned().partition(|p| p.exists());
    let files = list_images(&present)?;
    if files.is_empty() && missing.is_empty() {
        return Err(Error::param("query", "no PNG or JPEG images found in the query paths"));
    }
    let missing: Vec<FilePrediction> = missing
        .into_iter()
        .map(|p| FilePrediction { answer: Err(Error::param("query", format!("--query {}: no such file or folder", p.display()))), file: p, warning: None })
        .collect();
    let total = files.len() + missing.len();
    let names = clf.class_names();
    let mut labelled = LabelledResults::default();
    let mut failed = 0;
    for p in missing.into_iter().chain(clf.predict_files(&files)?) {
        let expected = folder_label(&p.file, &names);
        if let Some(w) = &p.warning {
            eprintln!("warning: {w}");
        }
        match &p.answer {
            Ok(answer) => {
                if let Some(label) = expected {
                    labelled.push(answer.class.as_deref() == Some(label), answer.confidence);
                }
                print_answer(&p.file, answer, expected, p.warning.as_deref(), a);
            }
            Err(e) => {
                failed += 1;
                print_error(&p.file, e, a.json);
            }
        }
    }
    if let Some(summary) = labelled.summary() {
        eprintln!("{summary}");
    }
    if failed > 0 {
        return Err(Error::param("query", format!("{failed} of {total} queries could not be read (see above)")));
    }
    Ok(())
}

/// One query's answer: a JSON object, or `file<TAB>class<TAB>confidence` with tabs and
/// newlines in names escaped.
fn print_answer(file: &std::path::Path, p: &Prediction, expected: Option<&str>, warning: Option<&str>, a: &PredictArgs) {
    if a.json {
        let top: Vec<_> = p.ranked.iter().take(a.top.max(1)).collect();
        let mut v = serde_json::json!({"file": file.to_string_lossy(), "class": p.class, "confidence": p.confidence, "distance": p.distance, "top": top});
        if let Some(label) = expected {
            v["expected"] = serde_json::Value::String(label.to_string());
        }
        if let Some(w) = warning {
            v["warning"] = serde_json::Value::String(w.to_string());
        }
        outln!("{v}");
    } else {
        outln!("{}\t{}\t{:.3}", escape_tsv(&file.to_string_lossy()), escape_tsv(p.label()), p.confidence);
    }
}

/// A query that could not be read: a JSON object with `error`, or a line on stderr.
fn print_error(file: &std::path::Path, e: &Error, json: bool) {
    if json {
        outln!("{}", serde_json::json!({"file": file.to_string_lossy(), "class": null, "error": e.to_string()}));
    } else {
        eprintln!("error: {e}");
    }
}

/// A field of tab-separated output: backslash, tab, newline and carriage return written
/// as `\\`, `\t`, `\n` and `\r`, so that every answer stays one line of three fields.
fn escape_tsv(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    for c in field.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// The class a query is known to belong to: the name of the folder that holds it, when
/// that is one of the support classes (`query/2-euro/img.jpg` is a `2-euro`).
fn folder_label<'a>(file: &std::path::Path, classes: &'a [String]) -> Option<&'a str> {
    let folder = file.parent()?.file_name()?.to_str()?;
    classes.iter().find(|c| c.as_str() == folder).map(String::as_str)
}

/// Right and wrong answers for queries whose class is known, with their confidences.
#[derive(Default)]
struct LabelledResults {
    /// (right, confidence) per labelled query.
    answers: Vec<(bool, f32)>,
}

impl LabelledResults {
    fn push(&mut self, right: bool, confidence: f32) {
        self.answers.push((right, confidence));
    }

    /// "accuracy ... on N queries in folders named like support classes; among the 80%
    /// most confident ...", or `None` when no query was labelled.
    fn summary(&self) -> Option<String> {
        let n = self.answers.len();
        if n == 0 {
            return None;
        }
        let right = self.answers.iter().filter(|a| a.0).count();
        let mut by_confidence = self.answers.clone();
        by_confidence.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top = ((n as f64 * 0.8).round() as usize).max(1);
        let top_right = by_confidence[..top].iter().filter(|a| a.0).count();
        let mean_confidence = self.answers.iter().map(|a| a.1 as f64).sum::<f64>() / n as f64;
        Some(format!(
            "accuracy {:.1}% ({right} of {n} queries in folders named like support classes), mean confidence {:.1}%; among the 80% most confident: {:.1}% ({top_right} of {top})",
            100.0 * right as f64 / n as f64,
            100.0 * mean_confidence,
            100.0 * top_right as f64 / top as f64
        ))
    }
}

/// Whether two paths name the same directory (by their canonical forms when both exist).
fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::escape_tsv;

    #[test]
    fn tsv_fields_stay_on_one_line() {
        assert_eq!(escape_tsv("two\neuro\tcoin\\x\r"), "two\\neuro\\tcoin\\\\x\\r");
        assert_eq!(escape_tsv("chf_10rappen"), "chf_10rappen");
    }
}
