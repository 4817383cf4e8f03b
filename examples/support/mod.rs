//! What the examples, the benchmarks and the `protonet` binary share beside the library:
//! progress bars (an [`protonet::Observer`] drawn with indicatif), pictures (plotters),
//! coin scenes (a coin photo pasted small into a larger frame),
//! the allocator settings and the default data root. The library itself prints, draws
//! and reads the environment not at all; everything here is for programs.
//!
//! Each program includes this folder as a module (`#[path = ...] mod support;`) and uses
//! what it needs of it.
#![allow(dead_code)]

pub mod alloc;
pub mod pictures;
pub mod progress;
pub mod scene;

use std::path::PathBuf;

/// The default root of the shared data sets: `$PROTONET_DATA`, else `../shared/data`.
pub fn default_data_root() -> PathBuf {
    std::env::var_os("PROTONET_DATA").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("../shared/data"))
}
