//! The classes the web page edits, kept on disk in the `--store` folder:
//!
//! - `classifier/`: the classifier, as [`FewShotClassifier::save_with`] writes it (the
//!   model, the support embeddings of every class, `classifier.json`), so that `protonet
//!   predict --model STORE/classifier` answers as the page does;
//! - `catalog.json`: every class in the page's order (empty ones too: a class gets its
//!   first photo after it is created) and the ids of its photos, in the order of the
//!   classifier's support embeddings;
//! - `thumbs/<id>.jpg`: a small copy of each support photo, for the page.
//!
//! Every file is written to a temporary file and renamed; thumbnails first, the classifier
//! next, the catalog last, so a crash leaves at worst a thumbnail nobody names. Class names
//! never become file names.

use std::path::{Path, PathBuf};

use image::DynamicImage;
use protonet::{Error, FewShotClassifier, OutputMode, Result};
use serde::{Deserialize, Serialize};

/// The longest class name, in characters.
pub const MAX_CLASS_NAME: usize = 64;

/// The side of the thumbnails kept for the page, in pixels.
const THUMB_SIDE: u32 = 160;

/// Checks a class name: 1 to [`MAX_CLASS_NAME`] characters after trimming, no path
/// separators, no control characters, not `.` or `..`.
pub fn check_class_name(name: &str) -> Result<String> {
    let name = name.trim();
    let bad = |why: &str| Err(Error::param("class name", format!("{why} (got {:?})", name.chars().take(80).collect::<String>())));
    if name.is_empty() {
        return bad("a class needs a name");
    }
    if name.chars().count() > MAX_CLASS_NAME {
        return bad(&format!("a class name has at most {MAX_CLASS_NAME} characters"));
    }
    if name.chars().any(|c| c == '/' || c == '\\') {
        return bad("a class name cannot contain / or \\");
    }
    if name.chars().any(char::is_control) {
        return bad("a class name cannot contain control characters");
    }
    if name == "." || name == ".." {
        return bad("a class name cannot be . or ..");
    }
    Ok(name.to_string())
}

/// Whether two classifiers hold the same model (the same `config.json`).
fn same_model(a: &FewShotClassifier, b: &FewShotClassifier) -> bool {
    serde_json::to_value(a.model().config()).ok() == serde_json::to_value(b.model().config()).ok()
}

/// One class of the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassEntry {
    /// The name.
    pub name: String,
    /// The ids of its support photos, in the order of the classifier's embeddings.
    pub photos: Vec<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Catalog {
    classes: Vec<ClassEntry>,
    next_id: u64,
}

/// The classifier and the page's classes, saved after every change.
pub struct Store {
    dir: PathBuf,
    catalog: Catalog,
    /// The classifier (read by predictions while no change is being made).
    pub classifier: FewShotClassifier,
}

impl Store {
    /// Opens the store in `dir` (created when missing) around `fresh`, a classifier with no
    /// classes of the model to serve; a store made with another model is refused.
    pub fn open(dir: &Path, fresh: FewShotClassifier, device: &protonet::Device) -> Result<Self> {
        std::fs::create_dir_all(dir.join("thumbs")).map_err(|e| Error::io(dir, e))?;
        let saved = dir.join("classifier");
        let classifier = if saved.join("classifier.json").is_file() {
            let loaded = FewShotClassifier::load(&saved, device)?;
            if !same_model(&loaded, &fresh) {
                return Err(Error::param(
                    "store",
                    format!("{} was made with another model than the one served; give another --store (or the model it was made with)", dir.display()),
                ));
            }
            loaded
        } else {
            fresh
        };
        let catalog: Catalog = match std::fs::read(dir.join("catalog.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::param("store", format!("{}: {e}", dir.join("catalog.json").display())))?,
            Err(_) => Catalog::default(),
        };
        let mut store = Self { dir: dir.to_path_buf(), catalog, classifier };
        store.reconcile();
        Ok(store)
    }

    /// Makes the catalog agree with the classifier: a class the classifier holds with
    /// another number of photos (a classifier saved by `protonet predict --save`, or
    /// imported) gets photo ids without thumbnails; a catalog class the classifier lacks
    /// is kept only when it has no photos.
    fn reconcile(&mut self) {
        let counts = self.classifier.store().class_counts();
        let mut classes: Vec<ClassEntry> = Vec::new();
        for entry in &self.catalog.classes {
            match counts.iter().find(|(n, _)| *n == entry.name) {
                Some((_, k)) if *k == entry.photos.len() => classes.push(entry.clone()),
                Some(_) => {}
                None if entry.photos.is_empty() => classes.push(entry.clone()),
                None => {}
            }
        }
        for (name, k) in counts {
            if !classes.iter().any(|c| c.name == name) {
                let photos = (0..k).map(|_| self.new_id()).collect();
                classes.push(ClassEntry { name, photos });
            }
        }
        self.catalog.classes = classes;
    }

    fn new_id(&mut self) -> u64 {
        self.catalog.next_id += 1;
        self.catalog.next_id
    }

    /// The classes, in the page's order.
    pub fn classes(&self) -> &[ClassEntry] {
        &self.catalog.classes
    }

    fn class_mut(&mut self, name: &str) -> Result<&mut ClassEntry> {
        self.catalog.classes.iter_mut().find(|c| c.name == name).ok_or_else(|| Error::param("class", format!("no class `{name}`")))
    }

    /// The file of photo `id`'s thumbnail.
    pub fn thumbnail(&self, id: u64) -> PathBuf {
        self.dir.join("thumbs").join(format!("{id}.jpg"))
    }

    /// Creates an empty class.
    pub fn create_class(&mut self, name: &str) -> Result<String> {
        let name = check_class_name(name)?;
        if self.catalog.classes.iter().any(|c| c.name == name) {
            return Err(Error::param("class name", format!("a class `{name}` exists already")));
        }
        self.catalog.classes.push(ClassEntry { name: name.clone(), photos: Vec::new() });
        self.save()?;
        Ok(name)
    }

    /// Removes a class and its photos.
    pub fn delete_class(&mut self, name: &str) -> Result<()> {
        let i = self.catalog.classes.iter().position(|c| c.name == name).ok_or_else(|| Error::param("class", format!("no class `{name}`")))?;
        if !self.catalog.classes[i].photos.is_empty() {
            self.classifier.remove_class(name)?;
        }
        let gone = self.catalog.classes.remove(i);
        self.save()?;
        for id in gone.photos {
            std::fs::remove_file(self.thumbnail(id)).ok();
        }
        Ok(())
    }

    /// Adds a support photo (its `embedding` by [`FewShotClassifier::embed`], `photo` for
    /// the thumbnail) to class `name`; returns its id.
    pub fn add_photo(&mut self, name: &str, embedding: Vec<f32>, photo: &DynamicImage) -> Result<u64> {
        self.class_mut(name)?;
        let id = self.new_id();
        let thumb = photo.thumbnail(THUMB_SIDE, THUMB_SIDE).to_rgb8();
        let mut jpeg = Vec::new();
        thumb.write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).map_err(|e| Error::param("photo", e.to_string()))?;
        protonet::io::write_atomic(&self.thumbnail(id), &jpeg)?;
        self.classifier.add_embeddings(name, vec![embedding])?;
        self.class_mut(name)?.photos.push(id);
        self.save()?;
        Ok(id)
    }

    /// Removes support photo `id` of class `name`.
    pub fn delete_photo(&mut self, name: &str, id: u64) -> Result<()> {
        let index =
            self.class_mut(name)?.photos.iter().position(|&p| p == id).ok_or_else(|| Error::param("photo", format!("class `{name}` has no photo {id}")))?;
        self.classifier.remove_support(name, index)?;
        self.class_mut(name)?.photos.remove(index);
        self.save()?;
        std::fs::remove_file(self.thumbnail(id)).ok();
        Ok(())
    }

    /// Replaces every class with those of `imported` (a classifier of the same model).
    pub fn replace(&mut self, imported: FewShotClassifier) -> Result<()> {
        if !same_model(&imported, &self.classifier) {
            return Err(Error::param("import", "the classifier was made with another model than the one served"));
        }
        let old: Vec<u64> = self.catalog.classes.iter().flat_map(|c| c.photos.clone()).collect();
        self.classifier = imported;
        self.catalog.classes.clear();
        self.reconcile();
        self.save()?;
        for id in old {
            std::fs::remove_file(self.thumbnail(id)).ok();
        }
        Ok(())
    }

    /// Refits the rejection threshold to the support set (the CLI's `--reject` default,
    /// 95% of the leave-one-out distances) when it can be fitted, else none.
    fn refit_threshold(&mut self) {
        if self.classifier.calibrate_threshold(0.95).is_err() {
            self.classifier.set_threshold(None).ok();
        }
    }

    /// Writes the classifier, then the catalog.
    fn save(&mut self) -> Result<()> {
        self.refit_threshold();
        self.classifier.save_with(self.dir.join("classifier"), OutputMode::Overwrite)?;
        let json = serde_json::to_vec_pretty(&self.catalog).expect("the catalog serialises");
        protonet::io::write_atomic(&self.dir.join("catalog.json"), &json)
    }

    /// The classifier's files, as [`FewShotClassifier::save_with`] writes them, in `dir`.
    pub fn export_to(&self, dir: &Path) -> Result<()> {
        self.classifier.save_with(dir, OutputMode::Overwrite)
    }
}
