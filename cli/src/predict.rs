//! `protonet predict`: classify query images from a few support images per class.

use std::path::PathBuf;

use clap::Args;
use protonet::data::{list_images, load_image};
use protonet::{Error, FewShotClassifier, OutputMode, Result};

use crate::common::device;

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
    backbone: Option<crate::eval::PretrainedBackbone>,
    /// Image side for the pretrained backbone (RGB, ImageNet normalisation).
    #[arg(long, default_value_t = 224)]
    image_size: usize,
    /// Embedding normalisation before prototypes (center-l2: centred on the mean of all
    /// support embeddings, then L2; SimpleShot). Default: as saved, else none.
    #[arg(long, value_enum)]
    normalize: Option<crate::eval::Normalize>,
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
    /// Average embeddings over this many rotations by 90 degrees (1 to 4; for subjects such
    /// as coins whose class does not depend on the angle). Default: as saved, else 1.
    #[arg(long)]
    rotations: Option<usize>,
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
    let mut clf = match (&a.model, a.backbone) {
        (Some(dir), _) => FewShotClassifier::load(dir, &dev)?,
        (None, Some(crate::eval::PretrainedBackbone::EfficientnetLite0)) => {
            let weights = protonet::backbone::PretrainedWeights::efficientnet_lite0();
            let config = protonet::ModelConfig::new(
                protonet::backbone::BackboneConfig::EfficientNetLite0 { weights, head: None },
                protonet::data::ImageConfig::rgb(a.image_size),
            );
            FewShotClassifier::new(protonet::Model::new(config, 0, &dev)?)
        }
        (None, None) => return Err(Error::param("model", "give --model DIR or --backbone")),
    };
    let model_name = a.model.as_ref().map(|m| m.display().to_string()).unwrap_or_else(|| "the pretrained backbone".into());
    if let Some(n) = a.normalize {
        clf.store_mut().set_normalization(n.feature_norm())?;
    }
    if let Some(r) = a.rotations {
        if r != clf.rotations() && !clf.class_names().is_empty() {
            return Err(Error::param("rotations", format!("{model_name} was saved with {} rotations; its prototypes cannot change to {r}", clf.rotations())));
        }
        clf.set_rotations(r)?;
    }
    if let Some(support) = &a.support {
        clf.add_support_folder(support).map_err(|e| match e {
            Error::Dataset { path, reason } => {
                Error::param("support", format!("{}: {reason} (--support takes a folder with one sub-folder of images per class)", path.display()))
            }
            other => other,
        })?;
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
    clf.store().check_ready()?;
    let names = clf.class_names();
    eprintln!(
        "{} class{} ({}{}){}",
        names.len(),
        if names.len() == 1 { "" } else { "es" },
        names.iter().take(8).cloned().collect::<Vec<_>>().join(", "),
        if names.len() > 8 { ", ..." } else { "" },
        clf.threshold().map(|t| format!("; rejecting queries farther than {t:.4} (squared distance)")).unwrap_or_default()
    );
    if let Some(dir) = &a.save {
        if let Some(model) = &a.model {
            if same_dir(model, dir) {
                return Err(Error::param(
                    "save",
                    format!("{} is the --model directory; save the classifier to another directory (it holds its own copy of the model)", dir.display()),
                ));
            }
        }
        clf.save_with(dir, if a.overwrite { OutputMode::Overwrite } else { OutputMode::New })?;
        eprintln!("saved the classifier to {}", dir.display());
    }
    // Paths that do not exist are reported like unreadable files: one line each, and the
    // other queries are still answered.
    let (present, missing): (Vec<PathBuf>, Vec<PathBuf>) = a.query.iter().cloned().partition(|p| p.exists());
    let files = list_images(&present)?;
    if files.is_empty() && missing.is_empty() {
        return Err(Error::param("query", "no PNG or JPEG images found in the query paths"));
    }
    let report_error = |file: &std::path::Path, e: &dyn std::fmt::Display| {
        if a.json {
            outln!("{}", serde_json::json!({"file": file.to_string_lossy(), "class": null, "error": e.to_string()}));
        } else {
            eprintln!("error: {e}");
        }
    };
    for p in &missing {
        report_error(p, &format!("--query {}: no such file or folder", p.display()));
    }
    let image_cfg = clf.model().config().image.clone();
    let mut failed = missing.len();
    let mut labelled = LabelledResults::default();
    // Decode in chunks so that a large query folder does not sit in memory at once.
    for chunk in files.chunks(256) {
        let mut good = Vec::new();
        let mut images = Vec::new();
        for f in chunk {
            match load_image(f, &image_cfg) {
                Ok(im) => {
                    good.push(f);
                    images.push(im);
                }
                Err(e) => {
                    failed += 1;
                    report_error(f, &e);
                }
            }
        }
        if images.is_empty() {
            continue;
        }
        for (f, p) in good.iter().zip(clf.predict_batch(&images)?) {
            let file = f.to_string_lossy();
            let expected = folder_label(f, &names);
            if let Some(label) = expected {
                labelled.push(p.class.as_deref() == Some(label), p.confidence);
            }
            if a.json {
                let top: Vec<_> = p.ranked.iter().take(a.top.max(1)).collect();
                let mut v = serde_json::json!({"file": file, "class": p.class, "confidence": p.confidence, "distance": p.distance, "top": top});
                if let Some(label) = expected {
                    v["expected"] = serde_json::Value::String(label.to_string());
                }
                outln!("{v}");
            } else {
                outln!("{file}\t{}\t{:.3}", p.class.as_deref().unwrap_or("unknown"), p.confidence);
            }
        }
    }
    if let Some(summary) = labelled.summary() {
        eprintln!("{summary}");
    }
    if failed > 0 {
        return Err(Error::param("query", format!("{failed} of {} queries could not be read (see above)", files.len() + missing.len())));
    }
    Ok(())
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
