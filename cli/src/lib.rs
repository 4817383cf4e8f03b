//! What the `protonet` command line adds to the library: progress bars (an
//! [`protonet::Observer`] drawn with indicatif), pictures (plotters), the allocator
//! set-up, the benchmark workloads shared with `cargo bench`, and the coin renderer of
//! the coin example. The library itself prints, draws and reads the environment not at all.
#![warn(missing_docs)]

pub mod alloc;
pub mod coins;
pub mod pictures;
pub mod progress;
pub mod workload;

use std::path::PathBuf;

/// The default root of the shared data sets: `$PROTONET_DATA`, else `../shared/data`.
///
/// ```
/// let root = protonet_cli::default_data_root();
/// assert!(root.ends_with("data"));
/// ```
pub fn default_data_root() -> PathBuf {
    std::env::var_os("PROTONET_DATA").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("../shared/data"))
}
