//! `protonet embed`: embeddings and labels of an image folder as `.npy` files.

use std::path::PathBuf;

use clap::Args;
use ndarray::{Array1, Array2};
use ndarray_npy::WriteNpyExt;
use protonet::data::list_image_folder;
use protonet::io::write_atomic;
use protonet::{Error, FewShotClassifier, Result};

use crate::common::device;

/// Arguments of `protonet embed`.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Model directory (from `protonet train`).
    #[arg(long)]
    model: PathBuf,
    /// Image folder: one sub-folder of images per class.
    #[arg(long)]
    data: PathBuf,
    /// Output folder: embeddings.npy (N x D float32), labels.npy (N int64, index into
    /// classes.txt), classes.txt and files.txt (one line per image).
    #[arg(long)]
    out: PathBuf,
    /// cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn npy_bytes(write: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), ndarray_npy::WriteNpyError>, path: &std::path::Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    write(&mut buf).map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?;
    Ok(buf)
}

pub fn run(a: EmbedArgs) -> Result<()> {
    let dev = device(&a.device)?;
    let clf = FewShotClassifier::load(&a.model, &dev)?;
    let classes = list_image_folder(&a.data)?;
    let mut embeddings = Vec::new();
    let mut labels = Vec::new();
    let mut files = Vec::new();
    let bar = crate::support::progress::bar(classes.iter().map(|c| c.1.len() as u64).sum(), true, "embed");
    for (k, (_, class_files)) in classes.iter().enumerate() {
        for chunk in class_files.chunks(64) {
            let images = clf.load_images(chunk)?;
            embeddings.extend(clf.embed(&images)?);
            labels.extend(std::iter::repeat_n(k as i64, chunk.len()));
            files.extend(chunk.iter().map(|f| f.to_string_lossy().into_owned()));
            bar.inc(chunk.len() as u64);
        }
    }
    bar.finish_and_clear();
    let d = clf.model().config().embedding_dim();
    let n = embeddings.len();
    let emb = Array2::from_shape_vec((n, d), embeddings.into_iter().flatten().collect()).expect("n x d values");
    let lab = Array1::from_vec(labels);
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let p = a.out.join("embeddings.npy");
    write_atomic(&p, &npy_bytes(|b| emb.write_npy(b), &p)?)?;
    let p = a.out.join("labels.npy");
    write_atomic(&p, &npy_bytes(|b| lab.write_npy(b), &p)?)?;
    let names: String = classes.iter().map(|c| format!("{}\n", c.0)).collect();
    write_atomic(&a.out.join("classes.txt"), names.as_bytes())?;
    let listing: String = files.iter().map(|f| format!("{f}\n")).collect();
    write_atomic(&a.out.join("files.txt"), listing.as_bytes())?;
    outln!("wrote {n} embeddings of dimension {d} ({} classes) to {}", classes.len(), a.out.display());
    Ok(())
}
