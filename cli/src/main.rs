//! `protonet`: train, evaluate and benchmark prototypical networks from the command line.

/// `println!` that ends the program quietly when stdout is a closed pipe.
macro_rules! outln {
    ($($t:tt)*) => { crate::common::emit(format!($($t)*)) };
}

mod bench;
mod common;
mod embed;
mod eval;
mod fetch;
mod finetune;
mod plot;
mod predict;
mod serve;
mod train;

/// Progress bars, pictures and the allocator settings, shared with the examples.
#[path = "../../examples/support/mod.rs"]
mod support;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Few-shot image classification with prototypical networks (Snell et al. 2017).
#[derive(Parser)]
#[command(name = "protonet", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model episodically and save the best one (by validation) to a directory.
    Train(train::TrainArgs),
    /// Fine-tune the pretrained EfficientNet-Lite0's head episodically on base classes (frozen trunk, cached features).
    FineTune(finetune::FineTuneArgs),
    /// Evaluate a saved model: mean accuracy and 95% CI over many episodes.
    Eval(eval::EvalArgs),
    /// Time N-way K-shot episodes (inference, or a training step with --train) on random images.
    Bench(bench::BenchArgs),
    /// Classify query images from a few support images per class (or a saved classifier).
    Predict(predict::PredictArgs),
    /// Download the pretrained EfficientNet-Lite0 weights (SHA-256 checked) into the per-user cache.
    FetchWeights(fetch::FetchArgs),
    /// Write the embeddings and labels of an image folder as .npy files.
    Embed(embed::EmbedArgs),
    /// Draw a 2-D projection (PCA) of query embeddings and prototypes of a folder as a PNG.
    PlotEmbeddings(plot::PlotEmbeddingsArgs),
    /// Draw a model's training curves (from its config.json) as a PNG.
    PlotCurves(plot::PlotCurvesArgs),
    /// Serve the web page of the coin classifier (or another model): classes from a few
    /// photos each, then any photo classified.
    Serve(serve::ServeArgs),
}

fn main() {
    support::alloc::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train::run(a),
        Command::FineTune(a) => finetune::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Predict(a) => predict::run(a),
        Command::FetchWeights(a) => fetch::run(a),
        Command::Embed(a) => embed::run(a),
        Command::PlotEmbeddings(a) => plot::run_embeddings(a),
        Command::PlotCurves(a) => plot::run_curves(a),
        Command::Serve(a) => serve::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        if let protonet::Error::OutputExists { path, .. } = &e {
            if let Some(holds) = protonet::train::describe(path) {
                eprintln!("note: {} holds {holds}", path.display());
            }
            eprintln!("hint: --resume continues its training run; --overwrite replaces it (for predict --save: --overwrite)");
        }
        std::process::exit(1);
    }
}
