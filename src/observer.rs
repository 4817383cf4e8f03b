//! Progress of long work, reported to whoever runs it: the library prints and draws
//! nothing itself. The command line's observer draws progress bars and training curves;
//! a program that wants silence passes [`Silent`].

use crate::record::HistoryPoint;

/// Receives the progress of training, evaluation and embedding. Every method has an
/// empty default, so an observer implements only what it shows.
///
/// ```
/// use std::cell::Cell;
/// use protonet::observer::Observer;
/// /// Counts the steps reported.
/// struct Count(Cell<u64>);
/// impl Observer for Count {
///     fn progress(&self, done: u64, _status: &str) {
///         self.0.set(done);
///     }
/// }
/// let c = Count(Cell::new(0));
/// c.start("eval", 10);
/// c.progress(3, "acc 50%");
/// assert_eq!(c.0.get(), 3);
/// ```
pub trait Observer {
    /// Work named `task` (`train`, `eval`, `embed`, `features`) of `total` steps starts.
    fn start(&self, _task: &str, _total: u64) {}
    /// `done` steps of the current task are done; `status` is a short summary (may be empty).
    fn progress(&self, _done: u64, _status: &str) {}
    /// The current task ended.
    fn finish(&self) {}
    /// A line worth keeping in a log: a validation result, what is being prepared.
    fn note(&self, _line: &str) {}
    /// A validation ended: the history so far (its last point is the new one) and whether
    /// this is the best model so far (then saved).
    fn validated(&self, _history: &[HistoryPoint], _best: bool) {}
}

/// An observer that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Observer for Silent {}
