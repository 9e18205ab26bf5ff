//! A run's folder: held by one process for the run's life, its records (`metrics.jsonl`,
//! `curves.svg`, `last.safetensors` with the optimiser's state, `best.safetensors`), and what a
//! resume reads back from it and checks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::{curves_svg, EpochMetrics, Observer, Optimizer, RunLock, TrainConfig};
use crate::checkpoint::{
    architecture_differences, expected_tensors, is_temporary, state_dict, varmap_tensors, write_safetensors,
    Checkpoint, Metadata,
};
use crate::error::{Error, Result};
use crate::model::DenseNet;
use crate::output::write_atomic;
use crate::spec::VariantSpec;

/// A run's progress, saved in `last.safetensors` with the model and optimiser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Progress {
    /// Epochs completed.
    pub epoch: usize,
    /// Batches completed of the next epoch (a Ctrl-C stop).
    pub batch: usize,
    /// Sums over those batches: loss × samples, correct, samples, seconds.
    pub partial: (f64, usize, usize, f64),
    /// Optimiser steps so far (also every batch norm's `num_batches_tracked`).
    pub steps: u64,
    /// Best test accuracy so far.
    pub best_test_acc: f64,
    /// Wall seconds of the run before this session.
    pub wall_s: f64,
    /// One entry per completed epoch.
    pub metrics: Vec<EpochMetrics>,
    /// Processes the run trained with last (data-parallel training), 1 before it was recorded.
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            epoch: 0,
            batch: 0,
            partial: Default::default(),
            steps: 0,
            best_test_acc: 0.0,
            wall_s: 0.0,
            metrics: Vec::new(),
            world_size: 1,
        }
    }
}

/// The checkpoint `--resume` reads, in `out`.
pub fn last_checkpoint(out: &Path) -> PathBuf {
    out.join("last.safetensors")
}

/// Reads the configuration saved in `out`'s last checkpoint.
pub fn saved_config(out: &Path) -> Result<TrainConfig> {
    let ckpt = Checkpoint::read(&resumable_checkpoint(out)?, &Device::Cpu)?;
    Ok(TrainingRecord::read(&ckpt)?.config)
}

/// What a checkpoint written by training records of the run, in its metadata's
/// `densenet_zoo.training`: written by [`RunDir::save`] and read back by
/// [`TrainingRecord::read`], the one place of each.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainingRecord {
    /// Epochs completed.
    epoch: usize,
    /// The last completed epoch's test accuracy.
    test_acc: Option<f64>,
    /// The best test accuracy so far.
    best_test_acc: f64,
    /// The data set folder.
    data: PathBuf,
    /// Everything the run is configured by.
    config: TrainConfig,
    /// Where the run is, for `--resume`.
    progress: Progress,
}

impl TrainingRecord {
    /// The record in `ckpt`'s metadata; the error names the file.
    fn read(ckpt: &Checkpoint) -> Result<Self> {
        let training = ckpt
            .metadata
            .as_ref()
            .and_then(|m| m.training.clone())
            .ok_or_else(|| Error::Training(format!("{} holds no training state", ckpt.origin)))?;
        serde_json::from_value(training)
            .map_err(|e| Error::Training(format!("{}: bad training state: {e}", ckpt.origin)))
    }
}

/// The checkpoint `--resume` continues from, `out/last.safetensors`, or an error that says
/// there is none.
fn resumable_checkpoint(out: &Path) -> Result<PathBuf> {
    let last = last_checkpoint(out);
    if !last.exists() {
        return Err(Error::Training(format!(
            "nothing to resume in {}: {} does not exist",
            out.display(),
            last.display()
        )));
    }
    Ok(last)
}

/// What a checkpoint of the run holds besides the progress: the model's variables, the
/// optimiser (for `last`), and what is saved as it was loaded.
pub(super) struct Weights<'a> {
    /// The run's configuration.
    pub config: &'a TrainConfig,
    /// The names of the classifier's outputs.
    pub classes: &'a [String],
    /// Every variable of the model.
    pub varmap: &'a VarMap,
    /// The `num_batches_tracked` of the frozen batch norms, as loaded.
    pub frozen_counts: &'a HashMap<String, Tensor>,
}

/// The folder a run writes. Rank 0's holds the folder's [`RunLock`] and writes; the other
/// ranks' write nothing.
pub(super) struct RunDir {
    out: PathBuf,
    writes: bool,
    _lock: Option<RunLock>,
}

impl RunDir {
    /// `out`, held (unless this process holds it already) and cleared of the temporary files a
    /// killed run left, when this process `writes` it.
    pub fn open(out: &Path, writes: bool) -> Result<Self> {
        let lock = match writes {
            true => RunLock::acquire_unless_held(out)?,
            false => None,
        };
        if writes {
            if let Ok(entries) = std::fs::read_dir(out) {
                for entry in entries.flatten() {
                    if entry.file_name().to_str().is_some_and(is_temporary) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        Ok(Self {
            out: out.to_path_buf(),
            writes,
            _lock: lock,
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.out
    }

    /// The last checkpoint and the progress it records, for a resume with `config` on
    /// `world_size` processes: the configuration's changes are noted, and refused when they
    /// change the net, or the batches of an epoch stopped in the middle; `metrics.jsonl` is
    /// rewritten from the checkpoint, which is the truth (a kill between an epoch's line and
    /// its checkpoint leaves a line it does not know).
    pub fn resume(
        &self,
        config: &TrainConfig,
        world_size: usize,
        device: &Device,
        observer: &mut dyn Observer,
    ) -> Result<(Checkpoint, Progress)> {
        let ckpt = Checkpoint::read(&resumable_checkpoint(&self.out)?, device)?;
        let record = TrainingRecord::read(&ckpt)?;
        check_same_net(&record.config.spec, &config.spec, &self.out)?;
        check_resumed_config(&record, config, observer)?;
        let progress = record.progress;
        if self.writes {
            let lines: String = progress
                .metrics
                .iter()
                .map(|m| serde_json::to_string(m).expect("metrics serialise") + "\n")
                .collect();
            write_atomic(&self.out.join("metrics.jsonl"), lines.as_bytes())?;
        }
        if progress.world_size != world_size {
            // Per-rank batch norm's batches change size with the number of ranks.
            let batch_norm = match config.sync_batch_norm {
                true => String::new(),
                false => format!(
                    ": batch norm's statistics now come from parts of {} image(s) per batch instead \
                     of {}",
                    config.recipe.batch_size.div_ceil(world_size),
                    config.recipe.batch_size.div_ceil(progress.world_size.max(1)),
                ),
            };
            observer.note(&format!(
                "the run trained with {} process(es) until now and goes on with {world_size}{batch_norm}",
                progress.world_size,
            ));
        }
        let at = match progress.batch {
            0 => format!("after epoch {}", progress.epoch),
            b => format!("at epoch {}, after batch {b}", progress.epoch + 1),
        };
        observer.note(&format!(
            "resuming from {} {at}",
            last_checkpoint(&self.out).display()
        ));
        Ok((ckpt, progress))
    }

    /// A new run in the folder: an earlier run's is replaced, said.
    pub fn start_afresh(&self, observer: &mut dyn Observer) {
        if last_checkpoint(&self.out).exists() {
            observer.note(&format!(
                "{} holds an earlier run: starting afresh replaces it (resuming would continue it)",
                self.out.display()
            ));
        }
        if self.writes {
            let _ = std::fs::remove_file(self.out.join("metrics.jsonl"));
        }
    }

    /// Appends an epoch's line to `metrics.jsonl`.
    pub fn append_metrics(&self, metrics: &EpochMetrics) -> Result<()> {
        if !self.writes {
            return Ok(());
        }
        use std::io::Write;
        let path = self.out.join("metrics.jsonl");
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        writeln!(
            f,
            "{}",
            serde_json::to_string(metrics).expect("metrics serialise")
        )
        .map_err(io)
    }

    /// Writes `last.safetensors` (with the optimiser's state) or, without an optimiser,
    /// `best.safetensors`, with metadata that makes the file usable alone: spec, classes,
    /// preprocessing, and the training facts.
    pub fn save(
        &self,
        weights: &Weights,
        progress: &Progress,
        optimizer: Option<&Optimizer>,
    ) -> Result<PathBuf> {
        let path = match optimizer {
            Some(_) => last_checkpoint(&self.out),
            None => self.out.join("best.safetensors"),
        };
        if !self.writes {
            return Ok(path);
        }
        let config = weights.config;
        let spec = &config.spec;
        let mut tensors = state_dict(spec, &varmap_tensors(weights.varmap))?;
        for (name, t) in tensors.iter_mut() {
            if name.ends_with("num_batches_tracked") {
                *t = match weights.frozen_counts.get(name) {
                    Some(kept) => kept.clone(),
                    None => Tensor::new(progress.steps as i64, &Device::Cpu)?,
                };
            }
        }
        if let Some(o) = optimizer {
            tensors.extend(o.state());
        }
        let mut metadata = Metadata::for_spec(spec);
        metadata.classes = weights.classes.to_vec();
        let record = TrainingRecord {
            epoch: progress.epoch,
            test_acc: progress.metrics.last().map(|m| m.test_acc),
            best_test_acc: progress.best_test_acc,
            data: config.data.clone(),
            config: config.clone(),
            progress: progress.clone(),
        };
        metadata.training = Some(serde_json::to_value(record).expect("the training record serialises"));
        write_safetensors(&path, &tensors, Some(&metadata))?;
        Ok(path)
    }

    /// Writes `curves.svg`, the book's plot of the epochs so far.
    pub fn write_curves(&self, metrics: &[EpochMetrics]) -> Result<()> {
        match self.writes {
            true => write_atomic(&self.out.join("curves.svg"), curves_svg(metrics).as_bytes()),
            false => Ok(()),
        }
    }
}

/// Refuses to resume the run of `saved` as another net (another variant, a spec file edited
/// since, other pooling in the transitions): its weights would not fit, or would mean
/// something else.
fn check_same_net(saved: &VariantSpec, now: &VariantSpec, out: &Path) -> Result<()> {
    let mut differences = architecture_differences(&now.architecture, saved);
    let (pool, saved_pool) = (
        now.architecture.transition_pool,
        saved.architecture.transition_pool,
    );
    if pool != saved_pool {
        differences.push(format!(
            "it was trained with {} pooling in its transitions, not {}",
            saved_pool.name(),
            pool.name()
        ));
    }
    if now.name == saved.name && differences.is_empty() {
        return Ok(());
    }
    let what = match differences.is_empty() {
        true => String::new(),
        false => format!(": {}", differences.join(", ")),
    };
    Err(Error::Training(format!(
        "{} holds a run of {}; resuming it as {} would change the net{what}",
        out.display(),
        saved.name,
        now.name
    )))
}

/// Notes how `config` differs from the configuration `record` was saved with; refuses the
/// changes that would change the batches of an epoch stopped in the middle.
fn check_resumed_config(
    record: &TrainingRecord,
    config: &TrainConfig,
    observer: &mut dyn Observer,
) -> Result<()> {
    let flat = |c: &TrainConfig| -> Vec<(String, serde_json::Value)> {
        let value = serde_json::to_value(c).expect("the configuration serialises");
        let mut fields = Vec::new();
        for (key, v) in value.as_object().into_iter().flatten() {
            match (key.as_str(), v.as_object()) {
                ("recipe", Some(recipe)) => {
                    fields.extend(recipe.iter().map(|(k, v)| (format!("recipe.{k}"), v.clone())));
                }
                ("spec", _) => {}
                // The same folder however it was written.
                ("data", _) => {
                    let path = std::fs::canonicalize(&c.data).unwrap_or_else(|_| c.data.clone());
                    fields.push((key.clone(), path.display().to_string().into()));
                }
                _ => fields.push((key.clone(), v.clone())),
            }
        }
        fields
    };
    let saved = flat(&record.config);
    let changed: Vec<(String, String)> = flat(config)
        .into_iter()
        .filter_map(|(k, now)| {
            let before = saved.iter().find(|(s, _)| *s == k).map(|(_, v)| v.clone());
            (before.as_ref() != Some(&now)).then(|| (k, format!("{} → {now}", before.unwrap_or_default())))
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let list = changed
        .iter()
        .map(|(k, d)| format!("{k} {d}"))
        .collect::<Vec<_>>()
        .join(", ");
    let batches = [
        "recipe.batch_size",
        "seed",
        "data",
        "image_size",
        "recipe.augment",
        "skip_bad_images",
    ];
    if record.progress.batch > 0 && changed.iter().any(|(k, _)| batches.contains(&k.as_str())) {
        return Err(Error::Training(format!(
            "the run stopped in the middle of epoch {}: it resumes exactly only with the batches it \
             started, and these would change them: {list}",
            record.progress.epoch + 1
        )));
    }
    observer.note(&format!("resuming with a changed configuration: {list}"));
    Ok(())
}

/// The `num_batches_tracked` tensors a checkpoint holds, by canonical name.
pub(super) fn batch_counts(ckpt: &Checkpoint) -> HashMap<String, Tensor> {
    ckpt.tensors
        .iter()
        .filter(|(name, _)| name.ends_with("num_batches_tracked"))
        .map(|(name, t)| (name.clone(), t.clone()))
        .collect()
}

/// The `num_batches_tracked` of each of `model`'s frozen batch norms, as `loaded` has it (0
/// where the file had none, as torchvision's oldest files): frozen, they count no batch.
pub(super) fn frozen_batch_counts(
    spec: &VariantSpec,
    model: &DenseNet,
    loaded: HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    let mut counts = HashMap::new();
    for t in expected_tensors(spec)? {
        let Some(norm) = t.name.strip_suffix("running_var") else {
            continue;
        };
        let name = format!("{norm}num_batches_tracked");
        if model.is_frozen(&name) {
            let count = match loaded.get(&name) {
                Some(c) => c.to_device(&Device::Cpu)?,
                None => Tensor::new(0i64, &Device::Cpu)?,
            };
            counts.insert(name, count);
        }
    }
    Ok(counts)
}
