//! Progress bars (indicatif) for the library's long work: an [`protonet::Observer`] that
//! draws a bar per task, prints validation lines, and redraws the training curves.

use std::cell::RefCell;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use protonet::record::HistoryPoint;
use protonet::Observer;

/// File name of the training curves (loss and accuracy against episodes) that the
/// command line draws into a training output directory at every validation.
pub const CURVES_FILE: &str = "curves.png";

/// A progress bar of `len` steps labelled `prefix`; hidden when `show` is false.
pub fn bar(len: u64, show: bool, prefix: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}").expect("valid template").progress_chars("=> ");
    ProgressBar::new(len).with_style(style).with_prefix(prefix.to_string())
}

/// The command line's observer: progress bars on stderr (when `show`), log lines on
/// stderr, and the training curves redrawn into `curves` at every validation.
pub struct Bars {
    show: bool,
    bar: RefCell<Option<ProgressBar>>,
    curves: Option<PathBuf>,
}

impl Bars {
    /// Bars shown when `show` is true; nothing is printed otherwise.
    pub fn new(show: bool) -> Self {
        Self { show, bar: RefCell::new(None), curves: None }
    }

    /// Also draws the training curves into `path` at every validation.
    pub fn with_curves(mut self, path: PathBuf) -> Self {
        self.curves = Some(path);
        self
    }
}

impl Observer for Bars {
    fn start(&self, task: &str, total: u64) {
        if let Some(old) = self.bar.borrow_mut().replace(bar(total, self.show, task)) {
            old.finish_and_clear();
        }
    }

    fn progress(&self, done: u64, status: &str) {
        if let Some(b) = self.bar.borrow().as_ref() {
            b.set_position(done);
            if !status.is_empty() {
                b.set_message(status.to_string());
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = self.bar.borrow_mut().take() {
            b.finish_and_clear();
        }
    }

    fn note(&self, line: &str) {
        if !self.show {
            return;
        }
        match self.bar.borrow().as_ref() {
            // Without a terminal the bar is hidden; keep the lines in the log.
            Some(b) if !b.is_hidden() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn validated(&self, history: &[HistoryPoint], _best: bool) {
        if let Some(path) = &self.curves {
            // The curves are a convenience: a failure to draw them does not stop training.
            if let Err(e) = super::pictures::training_curves(history, path) {
                self.note(&format!("warning: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[allow(unused_imports)] // unused where a program includes this file without running its tests (benchmarks)
    use super::*;

    #[test]
    fn bar_works() {
        let bar = bar(10, false, "eval");
        bar.inc(1);
        assert_eq!(bar.position(), 1);
    }

    #[test]
    fn bars_works() {
        use protonet::Observer;
        let bars = Bars::new(false);
        bars.start("eval", 3);
        bars.progress(1, "");
        bars.finish();
    }
}
