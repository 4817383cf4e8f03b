//! `protonet`: train, evaluate and benchmark prototypical networks from the command line.

mod bench;
mod common;
mod eval;
mod train;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps freed memory in the process instead of returning it to the OS after 10 ms:
/// training allocates and frees the same large buffers every episode, and re-faulting
/// them costs about half of a step (see the speed issue).
fn keep_freed_memory() {
    // `mi_option_arena_eager_commit` and `mi_option_purge_delay` in mimalloc v3's
    // `mimalloc.h` (libmimalloc-sys 0.1.49).
    const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting a mimalloc option is thread-safe and takes plain integers.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 1);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}

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
    keep_freed_memory();
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
