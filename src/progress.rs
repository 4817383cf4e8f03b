//! Progress bars for long work (indicatif), hidden when not wanted.

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar of `len` steps labelled `prefix`; hidden when `show` is false.
///
/// ```
/// let bar = protonet::progress::bar(10, false, "eval");
/// bar.inc(1);
/// assert_eq!(bar.position(), 1);
/// ```
pub fn bar(len: u64, show: bool, prefix: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{prefix:>6} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    ProgressBar::new(len).with_style(style).with_prefix(prefix.to_string())
}
