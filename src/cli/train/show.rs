//! How `train` shows an image run: notes and a progress bar per epoch on stderr, the book's
//! line per epoch on stdout, and the line that announces the run.

use std::path::Path;

use densenet_zoo::data::Shard;
use densenet_zoo::train::{EpochMetrics, Observer, TrainConfig};
use indicatif::{ProgressBar, ProgressStyle};

/// What a rank other than 0 shows of a data-parallel run: the files its shards left out
/// (`--skip-bad-images`), which no other rank sees; rank 0 shows the rest.
pub struct RankSkips(pub usize);

impl Observer for RankSkips {
    fn note(&mut self, message: &str) {
        if message.starts_with("skipped ") {
            let _ = crate::cli::write_line(
                &mut std::io::stderr().lock(),
                format_args!("note (rank {}): {message}", self.0),
            );
        }
    }
}

/// How a run is shown: notes and a progress bar per epoch on stderr, the book's line per epoch
/// on stdout.
#[derive(Default)]
pub struct Shown {
    bar: Option<ProgressBar>,
    /// The first failed write to stdout, reported when the run ends (the checkpoints matter
    /// more than the lines).
    pub write_error: Option<anyhow::Error>,
}

impl Observer for Shown {
    fn note(&mut self, message: &str) {
        match &self.bar {
            Some(bar) if !bar.is_finished() => bar.suspend(|| say!("note: {message}")),
            _ => say!("note: {message}"),
        }
    }

    fn epoch_started(&mut self, epoch: usize, epochs: usize, batches: usize, done: usize) {
        let bar = ProgressBar::new(batches as u64);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "epoch {epoch}/{epochs} [{{bar:30}}] {{pos}}/{{len}} {{msg}} eta {{eta}}"
            ))
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_position(done as u64);
        self.bar = Some(bar);
    }

    fn batch_done(&mut self, mean_loss: f64, examples_per_s: f64) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("loss {mean_loss:.3}, {examples_per_s:.0} ex/s"));
            bar.inc(1);
        }
    }

    fn epoch_abandoned(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }

    fn stopped(&mut self, checkpoint: &Path, epoch: usize, batch: usize) {
        say!(
            "interrupted: saved {} at epoch {epoch}, batch {batch}; --resume continues from there",
            checkpoint.display()
        );
    }

    fn epoch_done(&mut self, metrics: &EpochMetrics) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if let Err(e) = out!("{}", metrics.line()) {
            self.write_error.get_or_insert(e);
        }
    }
}

/// The line that announces a run on `world` processes, with the settings it trains with, and
/// notes on the settings that do what a reader might not expect.
pub fn announce(config: &TrainConfig, device: &candle_core::Device, world: usize) {
    let r = &config.recipe;
    say!(
        "training {} on {} at {}×{} for {} epoch{}: {} lr {} (schedule {}), batch {}, momentum {}{}, \
         weight decay {}, augment {}{}, seed {}, device {}{}",
        config.spec.name,
        config.data.display(),
        config.image_size,
        config.image_size,
        r.epochs,
        if r.epochs == 1 { "" } else { "s" },
        name(r.optimizer),
        r.lr,
        name(r.schedule),
        r.batch_size,
        r.momentum,
        if r.nesterov { " (Nesterov)" } else { "" },
        r.weight_decay,
        name(r.augment),
        if r.label_smoothing > 0.0 {
            format!(", label smoothing {}", r.label_smoothing)
        } else {
            String::new()
        },
        config.seed,
        match device.location() {
            candle_core::DeviceLocation::Cpu => "cpu".to_string(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        },
        match (config.memory_efficient, &config.freeze) {
            (true, _) => ", memory-efficient".to_string(),
            (false, Some(level)) => format!(", frozen up to {level}"),
            (false, None) => String::new(),
        }
    );
    if world > 1 {
        let (lo, hi) = Shard::part_sizes(r.batch_size, world);
        say!(
            "data-parallel over {world} processes (MPI): each takes {} image(s) of every batch of {}, \
             gradients averaged before each step; {}",
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo} or {hi}")
            },
            r.batch_size,
            match config.sync_batch_norm {
                true => "batch norm over the whole batch (--sync-bn)",
                false => "batch norm per process",
            }
        );
    } else if config.sync_batch_norm {
        say!("note: --sync-bn with one process changes nothing: its batch norms see the whole batch");
    }
    let pool = config.spec.architecture.transition_pool;
    if !pool.is_avg() {
        say!(
            "note: the transitions pool by {} instead of the published average",
            pool.name()
        );
    }
}

/// A setting as the flags and the recipe files write it (`sgd`, `step`, `crop-flip`).
fn name(value: impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
