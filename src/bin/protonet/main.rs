//! `protonet`: train, evaluate and benchmark prototypical networks from the command line.

mod bench;
mod common;
mod eval;
mod train;

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
    /// Evaluate a saved model: mean accuracy and 95% CI over many episodes.
    Eval(eval::EvalArgs),
    /// Time N-way K-shot episodes (inference, or a training step with --train) on random images.
    Bench(bench::BenchArgs),
}

fn main() {
    protonet::alloc::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
