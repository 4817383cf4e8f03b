use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rayon::prelude::*;

use super::{load_image, rotate_square_ccw, ImageConfig, ImageSet};
use crate::error::{Error, Result};

/// A split of Omniglot as listed in `splits/vinyals/<name>.txt`.
///
/// ```
/// use protonet::data::OmniglotSplit;
/// let s: OmniglotSplit = "val".parse().unwrap();
/// assert_eq!(s.file_name(), "val.txt");
/// assert!("bogus".parse::<OmniglotSplit>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OmniglotSplit {
    /// 1028 characters, 4112 classes with rotations.
    Train,
    /// 172 characters, 688 classes.
    Val,
    /// 423 characters, 1692 classes.
    Test,
    /// Train and val together: 1200 characters, 4800 classes.
    TrainVal,
}

impl OmniglotSplit {
    /// The split list's file name.
    pub fn file_name(self) -> &'static str {
        match self {
            OmniglotSplit::Train => "train.txt",
            OmniglotSplit::Val => "val.txt",
            OmniglotSplit::Test => "test.txt",
            OmniglotSplit::TrainVal => "trainval.txt",
        }
    }
}

impl FromStr for OmniglotSplit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(OmniglotSplit::Train),
            "val" => Ok(OmniglotSplit::Val),
            "test" => Ok(OmniglotSplit::Test),
            "trainval" => Ok(OmniglotSplit::TrainVal),
            other => Err(Error::param("split", format!("`{other}` is not one of train, val, test, trainval"))),
        }
    }
}

/// Loads one split of Omniglot from its standard layout: `root/images_background/`,
/// `root/images_evaluation/` and `root/splits/vinyals/<split>.txt`.
///
/// Each line `Alphabet/characterNN/rotDDD` becomes one class holding the character's 20
/// drawings rotated counter-clockwise by DDD degrees, resized to 28x28 (as
/// [`ImageConfig::omniglot`]: grey, strokes 1 on 0). Class names are the split lines.
///
/// ```no_run
/// use protonet::data::{load_omniglot, OmniglotSplit};
/// let train = load_omniglot("../shared/data/omniglot".as_ref(), OmniglotSplit::Train)?;
/// assert_eq!(train.num_classes(), 4112);
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn load_omniglot(root: &Path, split: OmniglotSplit) -> Result<ImageSet> {
    let config = ImageConfig::omniglot();
    let split_file = root.join("splits").join("vinyals").join(split.file_name());
    let text = std::fs::read_to_string(&split_file).map_err(|e| Error::io(&split_file, e))?;
    // character folder -> rotations wanted, in order of first appearance.
    let mut order: Vec<String> = Vec::new();
    let mut rotations: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || Error::Dataset { path: split_file.clone(), reason: format!("line {}: `{line}` is not `Alphabet/characterNN/rotDDD`", lineno + 1) };
        let (character, rot) = line.rsplit_once('/').ok_or_else(bad)?;
        let degrees: usize = rot.strip_prefix("rot").and_then(|d| d.parse().ok()).ok_or_else(bad)?;
        if !degrees.is_multiple_of(90) {
            return Err(bad());
        }
        if !rotations.contains_key(character) {
            order.push(character.to_string());
        }
        rotations.entry(character.to_string()).or_default().push((degrees / 90, line.to_string()));
    }
    let set_dirs = [root.join("images_background"), root.join("images_evaluation")];
    // Per character: its classes (one per rotation), each a name and its images.
    type Classes = Vec<(String, Vec<Vec<f32>>)>;
    let loaded: Vec<Result<Classes>> = order
        .par_iter()
        .map(|character| {
            let dir = set_dirs.iter().map(|d| d.join(character)).find(|d| d.is_dir()).ok_or_else(|| Error::Dataset {
                path: root.to_path_buf(),
                reason: format!("character `{character}` (from {}) is in neither images_background nor images_evaluation", split_file.display()),
            })?;
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| Error::io(&dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "png"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(Error::Dataset { path: dir, reason: "no PNG drawings".into() });
            }
            let drawings = files.iter().map(|f| load_image(f, &config)).collect::<Result<Vec<_>>>()?;
            Ok(rotations[character]
                .iter()
                .map(|(turns, name)| {
                    let imgs = drawings.iter().map(|d| rotate_square_ccw(d, 1, config.size, *turns)).collect();
                    (name.clone(), imgs)
                })
                .collect())
        })
        .collect();
    let mut set = ImageSet::new(1, config.size, config.size);
    for classes in loaded {
        for (name, imgs) in classes? {
            set.push_class(name, imgs)?;
        }
    }
    Ok(set)
}
