//! `protonet plot-embeddings` and `protonet plot-curves`.

use std::path::PathBuf;

use clap::Args;
use protonet::data::list_image_folder;
use protonet::{Error, FewShotClassifier, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::common::device;

/// Arguments of `protonet plot-embeddings`.
#[derive(Args, Debug)]
pub struct PlotEmbeddingsArgs {
    /// Model directory (from `protonet train`).
    #[arg(long)]
    model: PathBuf,
    /// Image folder: one sub-folder of images per class.
    #[arg(long)]
    data: PathBuf,
    /// Support images per class for the prototypes (drawn at random); the others are queries.
    #[arg(long, default_value_t = 5)]
    shot: usize,
    /// Seed for choosing the support images.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run_embeddings(a: PlotEmbeddingsArgs) -> Result<()> {
    if a.shot == 0 {
        return Err(Error::param("shot", "must be at least 1"));
    }
    let dev = device(&a.device)?;
    let mut clf = FewShotClassifier::from_model_dir(&a.model, &dev)?;
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let mut queries = Vec::new();
    let mut names = Vec::new();
    for (k, (name, mut files)) in list_image_folder(&a.data)?.into_iter().enumerate() {
        if files.len() <= a.shot {
            return Err(Error::NotEnoughImages { class: name, have: files.len(), shot: a.shot, query: 1, need: a.shot + 1 });
        }
        files.shuffle(&mut rng);
        clf.add_class_files(&name, &files[..a.shot])?;
        let images = clf.load_images(&files[a.shot..])?;
        queries.extend(clf.embed(&images)?.into_iter().map(|e| (e, k)));
        names.push(name);
    }
    let prototypes: Vec<Vec<f32>> = names.iter().map(|n| clf.prototype(n).expect("added").to_vec()).collect();
    let predictions = clf.store().predict(&queries.iter().map(|q| q.0.clone()).collect::<Vec<_>>())?;
    let correct = predictions.iter().zip(&queries).filter(|(p, q)| p.class.as_deref() == Some(names[q.1].as_str())).count();
    crate::support::pictures::embeddings(&queries, &prototypes, &names, &a.out)?;
    outln!(
        "wrote {} ({} classes, {} queries; nearest-prototype accuracy {:.1}% with {}-shot prototypes)",
        a.out.display(),
        names.len(),
        queries.len(),
        100.0 * correct as f64 / queries.len() as f64,
        a.shot
    );
    Ok(())
}

/// Arguments of `protonet plot-curves`.
#[derive(Args, Debug)]
pub struct PlotCurvesArgs {
    /// Model directory whose config.json holds a training history.
    #[arg(long)]
    model: PathBuf,
    /// The PNG to write (default: curves.png in the model directory).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run_curves(a: PlotCurvesArgs) -> Result<()> {
    let config = protonet::ModelConfig::read(&a.model)?;
    let history = config
        .training
        .as_ref()
        .map(|t| t.history.clone())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| Error::param("model", format!("{} has no training history in its config.json", a.model.display())))?;
    let out = a.out.unwrap_or_else(|| a.model.join(crate::support::progress::CURVES_FILE));
    crate::support::pictures::training_curves(&history, &out)?;
    outln!("wrote {} ({} validation points)", out.display(), history.len());
    Ok(())
}
