use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{load_image, ImageConfig, ImageSet};
use crate::error::{Error, Result};

/// Options for [`load_image_folder`].
#[derive(Debug, Clone, Default)]
pub struct FolderOptions {
    /// Skip PNG/JPEG files that cannot be used (unreadable, corrupt, truncated, not an
    /// image, too large or too small) instead of failing on the first one. Skipped files
    /// are reported by [`load_image_folder_report`]; [`load_image_folder`] prints each one
    /// and their count on stderr. Off by default: a bad file is an error naming it.
    pub skip_bad_images: bool,
}

/// A file that [`load_image_folder_report`] skipped, and why.
#[derive(Debug)]
pub struct SkippedImage {
    /// The file.
    pub path: PathBuf,
    /// The error that made it unusable.
    pub error: Error,
}

/// File extensions read as images (case-insensitive).
const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        out.push(entry.map_err(|e| Error::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

/// Lists the image files of an image folder: one `(class name, files)` per sub-folder,
/// sorted by name. Files other than PNG and JPEG are ignored.
///
/// ```no_run
/// for (class, files) in protonet::data::list_image_folder("coins/".as_ref())? {
///     println!("{class}: {} images", files.len());
/// }
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn list_image_folder(root: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    if !root.exists() {
        return Err(Error::Dataset { path: root.to_path_buf(), reason: "does not exist".into() });
    }
    if !root.is_dir() {
        return Err(Error::Dataset { path: root.to_path_buf(), reason: "is not a folder".into() });
    }
    let mut classes = Vec::new();
    for dir in sorted_entries(root)? {
        if !dir.is_dir() {
            continue;
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let files: Vec<PathBuf> = sorted_entries(&dir)?.into_iter().filter(|p| p.is_file() && is_image(p)).collect();
        if files.is_empty() {
            return Err(Error::Dataset { path: dir.clone(), reason: "class folder holds no PNG or JPEG images".into() });
        }
        classes.push((name, files));
    }
    if classes.is_empty() {
        let flat = sorted_entries(root)?.iter().any(|p| p.is_file() && is_image(p));
        let reason = if flat {
            "no class sub-folders: the images are directly in this folder; put each class's images in a sub-folder named after the class"
        } else {
            "no class sub-folders (expected one sub-folder of images per class)"
        };
        return Err(Error::Dataset { path: root.to_path_buf(), reason: reason.into() });
    }
    Ok(classes)
}

/// Expands `paths` into image files: a file is kept as given (whatever its extension),
/// a folder is searched recursively for PNG and JPEG files (sorted by path).
///
/// ```no_run
/// let files = protonet::data::list_images(&["queries/".into(), "one.png".into()])?;
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn list_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
        if depth > 32 {
            return Err(Error::Dataset { path: dir.to_path_buf(), reason: "folders nested more than 32 deep (a symbolic-link loop?)".into() });
        }
        for p in sorted_entries(dir)? {
            if p.is_dir() {
                walk(&p, depth + 1, out)?;
            } else if p.is_file() && is_image(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, 0, &mut out)?;
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(Error::io(p, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder")));
        }
    }
    Ok(out)
}

/// Loads an image folder: one sub-folder per class, PNG and JPEG files inside, decoded
/// in parallel, resized and normalized as `config` says, and kept in memory. Files
/// skipped under [`FolderOptions::skip_bad_images`] are left out without a word:
/// [`load_image_folder_report`] says which.
///
/// ```no_run
/// use protonet::data::{load_image_folder, FolderOptions, ImageConfig};
/// let set = load_image_folder("coins/".as_ref(), &ImageConfig::rgb(84), &FolderOptions::default())?;
/// println!("{} classes, {} images", set.num_classes(), set.num_images());
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn load_image_folder(root: &Path, config: &ImageConfig, options: &FolderOptions) -> Result<ImageSet> {
    Ok(load_image_folder_report(root, config, options)?.0)
}

/// Like [`load_image_folder`], also returning the skipped files (with
/// [`FolderOptions::skip_bad_images`]) and why.
///
/// ```no_run
/// use protonet::data::{load_image_folder_report, FolderOptions, ImageConfig};
/// let opts = FolderOptions { skip_bad_images: true };
/// let (set, skipped) = load_image_folder_report("photos/".as_ref(), &ImageConfig::rgb(84), &opts)?;
/// println!("{} images, {} skipped", set.num_images(), skipped.len());
/// # Ok::<(), protonet::Error>(())
/// ```
pub fn load_image_folder_report(root: &Path, config: &ImageConfig, options: &FolderOptions) -> Result<(ImageSet, Vec<SkippedImage>)> {
    config.validate()?;
    let classes = list_image_folder(root)?;
    let mut set = ImageSet::new(config.channels, config.size, config.size);
    let mut skipped = Vec::new();
    for (name, files) in classes {
        let decoded: Vec<Result<Vec<f32>>> = files.par_iter().map(|f| load_image(f, config)).collect();
        let mut images = Vec::with_capacity(decoded.len());
        for (file, r) in files.iter().zip(decoded) {
            match r {
                Ok(im) => images.push(im),
                Err(error) if options.skip_bad_images => skipped.push(SkippedImage { path: file.clone(), error }),
                Err(e) => return Err(e),
            }
        }
        if images.is_empty() {
            return Err(Error::Dataset { path: root.join(&name), reason: "no image in this class could be decoded".into() });
        }
        set.push_class(name, images)?;
    }
    Ok((set, skipped))
}
