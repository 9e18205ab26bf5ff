//! Training: the paper's optimiser, schedules, seeded initialisation, the loop, evaluation,
//! metrics and the book's plot.

mod evaluate;
pub(crate) mod init;
mod loss;
mod metrics;
mod optim;
mod plot;
mod run_lock;
mod schedule;
mod trainer;

pub use evaluate::{evaluate, top_k_hits, Evaluation};
pub use init::seeded_varmap;
pub use loss::cross_entropy;
pub use metrics::EpochMetrics;
pub use optim::{Optimizer, OptimizerKind};
pub use plot::curves_svg;
pub use run_lock::{RunLock, LOCK_FILE};
#[cfg(test)]
pub(crate) use schedule::assert_short_runs_start_at_the_full_rate;
pub use schedule::{Milestone, Schedule, ScheduleKind};
pub use trainer::{last_checkpoint, saved_config, train, Observer, Outcome, Start, TrainConfig, Trainer};
