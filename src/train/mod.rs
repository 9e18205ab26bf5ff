//! Training: the run's configuration, the paper's optimiser, schedules, seeded
//! initialisation, the loop and its observer, the run folder, evaluation, metrics and the
//! book's plot.

mod allocator;
mod config;
pub mod distributed;
mod evaluate;
pub(crate) mod init;
mod loss;
mod metrics;
mod observer;
mod optim;
mod plot;
mod run_dir;
mod run_lock;
mod schedule;
mod trainer;

pub use allocator::keep_freed_memory;
pub use config::{Outcome, Start, TrainConfig};
pub use evaluate::{evaluate, non_finite_rows, top_k_hits, Evaluation};
pub use init::seeded_varmap;
pub use loss::cross_entropy;
pub use metrics::EpochMetrics;
pub use observer::Observer;
pub use optim::{Optimizer, OptimizerKind};
pub use plot::curves_svg;
pub use run_dir::{last_checkpoint, saved_config};
pub use run_lock::{RunLock, LOCK_FILE};
#[cfg(test)]
pub(crate) use schedule::assert_short_runs_start_at_the_full_rate;
pub use schedule::{Milestone, Schedule, ScheduleKind};
pub use trainer::{train, Trainer};
