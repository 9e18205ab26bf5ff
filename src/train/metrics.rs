//! One record per epoch, as a line of `metrics.jsonl`.

use serde::{Deserialize, Serialize};

/// What an epoch measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub loss: f64,
    /// Training accuracy over the epoch (train mode, as the book measures it).
    pub train_acc: f64,
    /// Accuracy on the test split after the epoch.
    pub test_acc: f64,
    /// Training examples per second, the epoch's training time only.
    pub examples_per_s: f64,
    /// Seconds since the run began (across resumes).
    pub wall_s: f64,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
}

impl EpochMetrics {
    /// The book's line: `epoch 3: loss 0.412, train acc 0.851, test acc 0.832, 905.1 examples/sec`.
    pub fn line(&self) -> String {
        format!(
            "epoch {}: loss {:.3}, train acc {:.3}, test acc {:.3}, {:.1} examples/sec, lr {:.4}, {:.0} s",
            self.epoch, self.loss, self.train_acc, self.test_acc, self.examples_per_s, self.lr, self.wall_s
        )
    }
}
