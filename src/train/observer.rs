//! What a run reports as it goes, for the caller to show: the library prints nothing.

use std::path::Path;

use super::EpochMetrics;

/// What a run reports as it goes, for the caller to show (the command line draws a progress
/// bar and prints the book's line per epoch). Every method does nothing by default, and `()`
/// is the observer that shows nothing.
pub trait Observer {
    /// A sentence for the user: a resume, a notice from loading the starting weights.
    fn note(&mut self, _message: &str) {}
    /// Epoch `epoch` (from 1) of `epochs` starts with `done` of its `batches` already done (a
    /// resume mid-epoch).
    fn epoch_started(&mut self, _epoch: usize, _epochs: usize, _batches: usize, _done: usize) {}
    /// A batch was trained: the epoch's running mean loss and training examples per second.
    fn batch_done(&mut self, _mean_loss: f64, _examples_per_s: f64) {}
    /// The epoch ended early: a non-finite loss, or a stop request.
    fn epoch_abandoned(&mut self) {}
    /// A stop request was honoured: the state is in `checkpoint`, after `batch` batches of
    /// epoch `epoch` (from 1).
    fn stopped(&mut self, _checkpoint: &Path, _epoch: usize, _batch: usize) {}
    /// An epoch finished, evaluated, and its checkpoints were written.
    fn epoch_done(&mut self, _metrics: &EpochMetrics) {}
}

impl Observer for () {}
