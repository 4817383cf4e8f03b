//! `protonet predict`, `embed`, `plot-embeddings`, `plot-curves` and the PNGs that
//! `train` and `eval --confusion-png` write.

mod common;

use std::path::{Path, PathBuf};

fn protonet(args: &[&str]) -> (bool, String, String) {
    common::run_protonet(args)
}

fn shipped_model() -> PathBuf {
    common::repo_root().join("data/omniglot-conv4")
}

/// A PNG that decodes, has a sensible size and is not one flat colour.
fn assert_picture(path: &Path) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    assert!(img.width() >= 200 && img.height() >= 200, "{}: {}x{}", path.display(), img.width(), img.height());
    let first = *img.get_pixel(0, 0);
    let other = img.pixels().filter(|p| **p != first).count();
    assert!(other > 1000, "{}: almost blank ({other} pixels differ from the background)", path.display());
}

/// 20 characters of one Omniglot alphabet (test background): 5 support drawings each,
/// the other 15 as queries; the folder names are the classes (Glagolitic, test background).
fn omniglot_folders(root: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let alphabet = root.join("images_evaluation/Glagolitic");
    let (support, query) = (dir.join("support"), dir.join("query"));
    let mut chars: Vec<PathBuf> = std::fs::read_dir(&alphabet).unwrap().map(|e| e.unwrap().path()).collect();
    chars.sort();
    for c in chars.iter().take(20) {
        let name = c.file_name().unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(c).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for (i, f) in files.iter().enumerate() {
            let to = if i < 5 { support.join(name) } else { query.join(name) };
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    (support, query)
}

#[test]
fn predict_names_most_omniglot_characters_and_its_json_parses_needs_data() {
    let root = common::require_omniglot("predict_names_most_omniglot_characters_and_its_json_parses_needs_data");
    let dir = tempfile::tempdir().unwrap();
    let (support, query) = omniglot_folders(&root, dir.path());
    let (m, s, q) = (shipped_model(), support.to_str().unwrap().to_string(), query.to_str().unwrap().to_string());
    let (ok, stdout, stderr) = protonet(&["predict", "--model", m.to_str().unwrap(), "--support", &s, "--query", &q]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 300, "one line per query");
    let correct = lines
        .iter()
        .filter(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Path::new(f[0]).parent().unwrap().file_name().unwrap().to_str() == Some(f[1])
        })
        .count();
    eprintln!("protonet predict: {correct}/300 correct (20-way 5-shot, one alphabet)");
    assert!(correct >= 240, "only {correct} of 300 correct");

    // JSON: one object per query with the file as given, the class and a confidence.
    let one = query.join("character01");
    let saved = dir.path().join("classifier");
    let (ok, stdout, stderr) =
        protonet(&["predict", "--model", m.to_str().unwrap(), "--support", &s, "--query", &q, "--json", "--reject", "--save", saved.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON object per line")).collect();
    assert_eq!(rows.len(), 300);
    assert!(rows.iter().all(|r| r["file"].as_str().unwrap().starts_with(&q) && r["confidence"].as_f64().unwrap() <= 1.0));
    let unknown = rows.iter().filter(|r| r["class"].is_null()).count();
    assert!(unknown < 60, "{unknown} of 300 seen-character queries rejected at the calibrated threshold");

    // The saved classifier predicts without the support folder, identically.
    let (ok, again, stderr) = protonet(&["predict", "--model", saved.to_str().unwrap(), "--query", &q, "--json", "--reject"]);
    assert!(ok, "{stderr}");
    assert_eq!(again, stdout);
    // A single file, given as is.
    let file = std::fs::read_dir(&one).unwrap().next().unwrap().unwrap().path();
    let (ok, out, _) = protonet(&["predict", "--model", saved.to_str().unwrap(), "--query", file.to_str().unwrap(), "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["file"].as_str(), file.to_str());
    assert_eq!(v["class"].as_str(), Some("character01"));
}

#[test]
fn predict_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let m = shipped_model();
    let (ok, _, stderr) = protonet(&["predict", "--model", m.to_str().unwrap(), "--query", dir.path().to_str().unwrap()]);
    assert!(!ok && stderr.contains("--support"), "{stderr}");
    assert!(!stderr.contains("panicked"));
    common::write_glyph_folder(&dir.path().join("s"), 3, 3, 28, 1);
    std::fs::write(dir.path().join("bad.png"), b"not a png").unwrap();
    let s = dir.path().join("s");
    let bad = dir.path().join("bad.png");
    let (ok, stdout, stderr) =
        protonet(&["predict", "--model", m.to_str().unwrap(), "--support", s.to_str().unwrap(), "--query", bad.to_str().unwrap(), s.to_str().unwrap()]);
    assert!(!ok, "an unreadable query must fail the command");
    assert!(stderr.contains("bad.png") && stderr.contains("1 of 10 queries"), "{stderr}");
    assert_eq!(stdout.lines().count(), 9, "the readable queries are still answered");

    // One class is refused unless rejection is on ("this class or unknown").
    let one = dir.path().join("one");
    common::write_glyph_folder(&one, 1, 4, 28, 2);
    let (o, q) = (one.to_str().unwrap(), s.to_str().unwrap());
    let (ok, stdout, stderr) = protonet(&["predict", "--model", m.to_str().unwrap(), "--support", o, "--query", q]);
    assert!(!ok && stdout.is_empty() && stderr.contains("only one class") && stderr.contains("--reject"), "{stderr}");
    let (ok, stdout, stderr) = protonet(&["predict", "--model", m.to_str().unwrap(), "--support", o, "--query", o, q, "--reject"]);
    assert!(ok && stderr.contains("1 class ("), "{stderr}");
    // Confidences say how typical each query's distance is, not a softmax over one class
    // (which is always 1): they differ between queries (the support photos themselves,
    // other glyphs) and stay in [0, 1].
    let confidences: Vec<f64> = stdout.lines().map(|l| l.rsplit('\t').next().unwrap().parse().unwrap()).collect();
    assert!(confidences.iter().all(|c| (0.0..=1.0).contains(c)), "{stdout}");
    assert!(confidences.iter().any(|&c| c < 1.0) && confidences.iter().any(|&c| c != confidences[0]), "{stdout}");

    // A folder that is not a model says so.
    let (ok, _, stderr) = protonet(&["predict", "--model", q, "--support", q, "--query", q]);
    assert!(!ok && stderr.contains("not a model directory (no config.json; looked for in"), "{stderr}");

    // A flat folder of photos as the support set: told once where the class folders go.
    let flat = dir.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    for f in std::fs::read_dir(one.join(std::fs::read_dir(&one).unwrap().next().unwrap().unwrap().file_name())).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, flat.join(f.file_name().unwrap())).unwrap();
    }
    let (ok, _, stderr) = protonet(&["predict", "--model", m.to_str().unwrap(), "--support", flat.to_str().unwrap(), "--query", q]);
    assert!(!ok && stderr.contains("directly in this folder"), "{stderr}");
    assert!(!stderr.contains("--support takes a folder"), "the hint is said once: {stderr}");
}

#[test]
fn pictures_and_embeddings_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("glyphs");
    common::write_glyph_folder(&data, 8, 8, 28, 3);
    let model = dir.path().join("model");
    let (d, m) = (data.to_str().unwrap(), model.to_str().unwrap());
    let (ok, _, stderr) = protonet(&[
        "train",
        "--dataset",
        "folder",
        "--data",
        d,
        "--val-data",
        d,
        "--out",
        m,
        "--channels",
        "1",
        "--image-size",
        "28",
        "--hidden",
        "16",
        "--way",
        "4",
        "--shot",
        "2",
        "--query",
        "2",
        "--episodes",
        "8",
        "--val-every",
        "2",
        "--val-way",
        "4",
        "--val-query",
        "3",
        "--val-episodes",
        "3",
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    assert_picture(&model.join("curves.png"));

    let conf = dir.path().join("confusion.png");
    let (ok, _, stderr) = protonet(&[
        "eval",
        "--model",
        m,
        "--dataset",
        "folder",
        "--data",
        d,
        "--way",
        "4",
        "--shot",
        "2",
        "--episodes",
        "5",
        "--query",
        "3",
        "--confusion-png",
        conf.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    assert_picture(&conf);

    let pca = dir.path().join("pca.png");
    let (ok, stdout, stderr) = protonet(&["plot-embeddings", "--model", m, "--data", d, "--shot", "3", "--out", pca.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("8 classes, 40 queries"), "{stdout}");
    assert_picture(&pca);

    let curves = dir.path().join("curves-again.png");
    let (ok, _, stderr) = protonet(&["plot-curves", "--model", m, "--out", curves.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_picture(&curves);

    let out = dir.path().join("emb");
    let (ok, _, stderr) = protonet(&["embed", "--model", m, "--data", d, "--out", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let emb: ndarray::Array2<f32> = ndarray_npy::read_npy(out.join("embeddings.npy")).unwrap();
    let labels: ndarray::Array1<i64> = ndarray_npy::read_npy(out.join("labels.npy")).unwrap();
    // 28 -> 14 -> 7 -> 3 -> 1 with 16 filters: 16 values per image.
    assert_eq!(emb.dim(), (64, 16));
    assert_eq!(labels.len(), 64);
    assert_eq!((labels[0], labels[63]), (0, 7));
    assert!(emb.iter().all(|v| v.is_finite()));
    assert_eq!(std::fs::read_to_string(out.join("classes.txt")).unwrap().lines().count(), 8);
    assert_eq!(std::fs::read_to_string(out.join("files.txt")).unwrap().lines().count(), 64);
}

/// What a new user meets on the way to an answer: a JPEG cut off after 3 kB is answered
/// with a warning (its missing part decoded as grey), a class folder whose name holds a
/// newline keeps the tab-separated output one line per query, and a class with fewer
/// support photos than the others is pointed out.
#[test]
fn cut_off_photos_odd_names_and_small_classes_are_told() {
    let dir = tempfile::tempdir().unwrap();
    let support = dir.path().join("support");
    common::write_glyph_folder(&support, 3, 4, 28, 3);
    std::fs::rename(support.join("glyph002"), support.join("two\neuro")).unwrap();
    // A fourth class of one photo.
    std::fs::create_dir_all(support.join("single")).unwrap();
    std::fs::copy(support.join("glyph000").join("00.png"), support.join("single").join("00.png")).unwrap();
    // A noisy 96x96 photo as JPEG, whole and cut off after 3 kB.
    let photo = image::RgbImage::from_fn(96, 96, |x, y| image::Rgb([((x * 7 + y * 13) % 251) as u8, ((x * x + y) % 253) as u8, ((x ^ y) * 3 % 256) as u8]));
    let whole = dir.path().join("whole.jpg");
    photo.save(&whole).unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    assert!(bytes.len() > 4000, "the test photo must be larger than the cut ({} bytes)", bytes.len());
    let cut = dir.path().join("cut.jpg");
    std::fs::write(&cut, &bytes[..3000]).unwrap();
    let m = shipped_model();
    let args = ["predict", "--model", m.to_str().unwrap(), "--support", support.to_str().unwrap(), "--query", whole.to_str().unwrap(), cut.to_str().unwrap()];
    let (ok, stdout, stderr) = protonet(&args);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("cut.jpg") && stderr.contains("cut off"), "a warning for the cut-off photo: {stderr}");
    assert!(!stderr.contains("whole.jpg"), "no warning for the whole photo: {stderr}");
    assert!(stderr.contains("`single` has 1") && stderr.contains("4 support images"), "the small class is pointed out: {stderr}");
    assert!(stderr.contains("two\\neuro"), "class names escaped in the summary: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one line per query: {stdout:?}");
    assert!(lines.iter().all(|l| l.split('\t').count() == 3), "{stdout:?}");

    // The newline is in the answer when that class wins: query with its own photo.
    let own = support.join("two\neuro").join("00.png");
    let (ok, stdout, stderr) = protonet(&["predict", "--model", m.to_str().unwrap(), "--support", support.to_str().unwrap(), "--query", own.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(stdout.contains("two\\neuro"), "{stdout:?}");
    // JSON keeps the name as it is, and carries the warning.
    let (ok, stdout, _) = protonet(&[&args[..], &["--json"]].concat());
    assert!(ok);
    let cut_line: serde_json::Value =
        stdout.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|v| v["file"].as_str().unwrap().ends_with("cut.jpg")).unwrap();
    assert!(cut_line["warning"].as_str().unwrap().contains("cut off"), "{cut_line}");
}
