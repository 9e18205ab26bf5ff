//! The training loop: epochs of SGD over a data set, a metrics line and two checkpoints per
//! epoch, exact resume, and a clean stop on Ctrl-C or a non-finite loss.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{
    cross_entropy, curves_svg, evaluate, seeded_varmap, top_k_hits, EpochMetrics, Optimizer, RunLock,
    Schedule,
};
use crate::checkpoint::{
    is_buffer, is_temporary, state_dict, varmap_tensors, write_atomic, write_safetensors, Checkpoint,
    Metadata, StateDictKey,
};
use crate::data::{self, Dataset, Loader, LoaderOptions, Shard, Split, Transform};
use crate::distributed::{average_gradients, broadcast_tensors, Buffer, Collective, SingleProcess};
use crate::error::{Error, Result};
use crate::model::DenseNet;
use crate::spec::{Recipe, VariantSpec};

/// Everything a run is configured by; saved in its checkpoints, so `--resume` needs no flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The variant, with the number of classes and input size it is trained with.
    pub spec: VariantSpec,
    /// Data set folder (IDX, CIFAR batches or ImageFolder).
    pub data: PathBuf,
    /// Epochs, batch size, optimiser, schedule and augmentation.
    pub recipe: Recipe,
    /// Epochs of linear warmup.
    pub warmup_epochs: usize,
    /// Square input side the images are resized to.
    pub image_size: usize,
    /// Seed for the initial weights, the shuffling and the augmentation.
    pub seed: u64,
    /// Recompute each dense layer's first batch norm and ReLU in the backward pass instead of
    /// storing them ([`DenseNet::with_memory_efficient`]): less memory, same numbers.
    #[serde(default)]
    pub memory_efficient: bool,
    /// Data-parallel runs: every batch norm takes the statistics of the whole batch across
    /// the ranks ([`DenseNet::with_sync_batch_norm`]), as PyTorch's `SyncBatchNorm`, instead of
    /// each rank's part. Nothing changes with one process. CPU only.
    #[serde(default)]
    pub sync_batch_norm: bool,
    /// Threads that decode and augment the training images; 0, one per core.
    #[serde(default)]
    pub workers: usize,
    /// Leave out an image that cannot be decoded, with a note, instead of stopping the run.
    #[serde(default)]
    pub skip_bad_images: bool,
    /// Keep everything up to and including this `feature_info` level exactly as loaded
    /// (`stem`, `block1` ... `blockN`, or `features` for the whole backbone), and train the
    /// rest ([`DenseNet::with_frozen`]); needs starting weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze: Option<String>,
    /// The names of the data's classes, in the data's order, recorded in the checkpoints
    /// instead of the data's own (an ImageFolder's folder names, WordNet ids say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
}

impl TrainConfig {
    /// A run of `spec` on the data set folder `data`, with the variant's own recipe and input
    /// size, seed 0, no warmup, not memory-efficient; change the fields as needed.
    pub fn new(spec: VariantSpec, data: impl Into<PathBuf>) -> Self {
        Self {
            image_size: spec.input_size(),
            data: data.into(),
            recipe: spec.recipe.clone(),
            warmup_epochs: 0,
            seed: 0,
            memory_efficient: false,
            sync_batch_norm: false,
            workers: 0,
            skip_bad_images: false,
            freeze: None,
            class_names: None,
            spec,
        }
    }
}

/// Where a run's weights start from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Start {
    /// Continue from `OUT/last.safetensors` exactly.
    pub resume: bool,
    /// A checkpoint to fine-tune from (path or `hf:`), adapted to the spec (new classifier,
    /// input channels); `None` with `resume` false: new weights from the seed.
    pub weights: Option<String>,
    /// Which state dict of `weights` to read, when it is a training checkpoint that holds
    /// several (timm's EMA copy, ...).
    pub state_dict: StateDictKey,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every epoch ran.
    Finished,
    /// Stopped on request (Ctrl-C on the command line): the state was saved to
    /// `last.safetensors` mid-epoch, and `--resume` goes on from there.
    Interrupted,
}

/// A run's progress, saved in `last.safetensors` with the model and optimiser.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Progress {
    /// Epochs completed.
    epoch: usize,
    /// Batches completed of the next epoch (a Ctrl-C stop).
    batch: usize,
    /// Sums over those batches: loss × samples, correct, samples, seconds.
    partial: (f64, usize, usize, f64),
    /// Optimiser steps so far (also every batch norm's `num_batches_tracked`).
    steps: u64,
    /// Best test accuracy so far.
    best_test_acc: f64,
    /// Wall seconds of the run before this session.
    wall_s: f64,
    /// One entry per completed epoch.
    metrics: Vec<EpochMetrics>,
    /// Processes the run trained with last (data-parallel training), 1 before it was recorded.
    #[serde(default = "one")]
    world_size: usize,
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

/// What a checkpoint written by training records of the run, in its metadata's
/// `densenet_zoo.training`: written by [`save_model`] and read back by [`TrainingRecord::read`],
/// the one place of each.
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

/// Reads the configuration saved in `out`'s last checkpoint.
pub fn saved_config(out: &Path) -> Result<TrainConfig> {
    let ckpt = Checkpoint::read(&resumable_checkpoint(out)?, &Device::Cpu)?;
    Ok(TrainingRecord::read(&ckpt)?.config)
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

/// A training run: the data, the model and its optimiser, the schedule and the progress,
/// checkpointed in `out` after every epoch (`last.safetensors`, `best.safetensors`,
/// `metrics.jsonl`, `curves.svg`) so that a run killed at any point resumes exactly.
///
/// ```no_run
/// use std::sync::atomic::AtomicBool;
/// use densenet_zoo::train::{Start, TrainConfig, Trainer};
/// # fn run(config: TrainConfig) -> densenet_zoo::Result<()> {
/// let device = candle_core::Device::Cpu;
/// let stop = AtomicBool::new(false); // set it from a signal handler to stop mid-epoch
/// let mut trainer = Trainer::new(&config, "runs/a".as_ref(), &Start::default(), &device, &mut ())?;
/// while !trainer.is_finished() {
///     if let Some(metrics) = trainer.run_epoch(&stop, &mut ())? {
///         println!("{}", metrics.line());
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Trainer {
    config: TrainConfig,
    out: PathBuf,
    device: Device,
    train_set: Arc<Dataset>,
    test_set: Arc<Dataset>,
    classes: Vec<String>,
    varmap: VarMap,
    optimizer: Optimizer,
    model: DenseNet,
    schedule: Schedule,
    progress: Progress,
    started: Instant,
    /// Wall seconds of the run before this session (a resume).
    wall_before: f64,
    /// The processes the run trains with ([`SingleProcess`] but for data-parallel training).
    collective: Rc<dyn Collective>,
    /// The trainable variables, sorted by name: the gradients averaged across ranks.
    parameters: Vec<Var>,
    /// The batch-norm running statistics, sorted by name: rank 0's are evaluated and saved.
    buffers: Vec<Var>,
    /// The `num_batches_tracked` of the frozen batch norms, as loaded: saved unchanged.
    frozen_counts: HashMap<String, Tensor>,
    /// Rank 0's hold on `out` (`None` on the other ranks, and when the caller holds it).
    _lock: Option<RunLock>,
}

impl Trainer {
    /// Sets a run up in `out` as `config` says, from new weights, a checkpoint to fine-tune,
    /// or (resuming) exactly where `out/last.safetensors` stopped: pass
    /// [`saved_config`]`(out)`, changed as wanted; the changes are noted, and refused when the
    /// run stopped mid-epoch and they would change that epoch's batches (batch size, seed,
    /// data, input size, augmentation). Refuses a recipe or input size that cannot run, and
    /// data whose classes do not match the classifier. The checkpoints record the spec at the
    /// run's input size (`config.image_size`), and without built-in labels when their number
    /// is not the classifier's.
    pub fn new(
        config: &TrainConfig,
        out: &Path,
        start: &Start,
        device: &Device,
        observer: &mut dyn Observer,
    ) -> Result<Self> {
        Self::with_collective(config, out, start, device, Rc::new(SingleProcess), observer)
    }

    /// [`Trainer::new`] for one rank of a data-parallel run over `collective`, every rank
    /// calling it with the same arguments, as PyTorch's `DistributedDataParallel` trains: the
    /// ranks start from rank 0's weights; each takes its [`Shard`] of every batch
    /// (`recipe.batch_size` stays the whole batch), and the gradients of the batch's mean loss
    /// are averaged across ranks before each step, so that the ranks' weights stay identical;
    /// batch norm uses each rank's own batch statistics (with `config.sync_batch_norm`, those
    /// of the whole batch: [`Collective::batch_norm_group`]), and rank 0's running statistics
    /// for evaluation (sharded, its sums added across ranks) and checkpoints. Rank 0 alone writes
    /// to `out`. A run resumes with any number of ranks (noted when it changes).
    ///
    /// # Errors
    /// As [`Trainer::new`], and [`Error::Distributed`] when a collective operation fails;
    /// [`Error::Training`] for `sync_batch_norm` with several ranks on a device other than the
    /// CPU.
    pub fn with_collective(
        config: &TrainConfig,
        out: &Path,
        start: &Start,
        device: &Device,
        collective: Rc<dyn Collective>,
        observer: &mut dyn Observer,
    ) -> Result<Self> {
        let root = collective.rank() == 0;
        config.recipe.validate().map_err(Error::Training)?;
        let mut config = config.clone();
        config.spec.set_input_size(config.image_size);
        let labels = config.spec.pretrained_cfg.labels.as_deref();
        if labels.and_then(crate::labels::builtin).map(|l| l.len())
            != Some(config.spec.architecture.num_classes)
        {
            config.spec.pretrained_cfg.labels = None;
        }
        let config = &config;
        let spec = &config.spec;
        spec.architecture
            .check_input_size(config.image_size)
            .map_err(|message| Error::Spec {
                origin: spec.name.clone(),
                message,
            })?;
        let (world, side) = (collective.world_size(), last_map_side(config));
        let smallest_part = config.recipe.batch_size / world;
        // With synchronised batch norm a rank's part needs one image, the batch two values.
        let sync = world > 1 && config.sync_batch_norm;
        if sync && smallest_part == 0 {
            return Err(Error::Training(format!(
                "--batch-size {} over {world} processes leaves some with no image per batch: use \
                 a batch of at least {world}",
                config.recipe.batch_size
            )));
        }
        if world > 1 && !sync && smallest_part * side * side < 2 {
            return Err(Error::Training(format!(
                "--batch-size {} over {world} processes leaves some with {smallest_part} image(s) \
                 per batch, too few for batch norm on the last block's {side}×{side} maps: use a \
                 batch of at least {}",
                config.recipe.batch_size,
                world * 2usize.div_ceil(side * side)
            )));
        }
        if sync && !device.is_cpu() {
            return Err(Error::Training(format!(
                "synchronised batch norm (--sync-bn) trains on the CPU only for now, not on {:?}: \
                 leave it out for per-process batch norm",
                device.location()
            )));
        }
        if config.freeze.is_some() && !start.resume && start.weights.is_none() {
            return Err(Error::Training(format!(
                "freeze {}: freezing keeps loaded weights as they are, and this run starts from new \
                 ones: give it weights to start from",
                config.freeze.as_deref().unwrap_or_default()
            )));
        }
        if config.warmup_epochs >= config.recipe.epochs {
            return Err(Error::Training(format!(
                "warmup_epochs {} leaves no epoch of the {} at the full learning rate: warm up for \
                 fewer epochs than the run has",
                config.warmup_epochs, config.recipe.epochs
            )));
        }
        // Rank 0 alone writes `out`, and holds it for the run's whole life.
        let lock = match root {
            true => RunLock::acquire_unless_held(out)?,
            false => None,
        };
        if root {
            remove_temporary_files(out);
        }
        let train_set = Arc::new(data::open(&config.data, Split::Train)?);
        let test_set = Arc::new(data::open(&config.data, Split::Test)?);
        check_classes(&train_set, spec, &config.data)?;
        let classes = match &config.class_names {
            Some(names) if names.len() != train_set.classes.len() => {
                return Err(Error::Training(format!(
                    "class_names lists {} names, but {} has {} classes ({})",
                    names.len(),
                    config.data.display(),
                    train_set.classes.len(),
                    train_set.classes.join(", ")
                )))
            }
            Some(names) => names.clone(),
            None => train_set.classes.clone(),
        };

        // Every batch norm's `num_batches_tracked` as loaded: the frozen ones keep theirs.
        let mut loaded_counts = HashMap::new();
        let (varmap, optimizer_state, progress) = if start.resume {
            let ckpt = Checkpoint::read(&resumable_checkpoint(out)?, device)?;
            let record = TrainingRecord::read(&ckpt)?;
            check_resumed_config(&record, config, observer)?;
            let progress = record.progress;
            let state = ckpt.optimizer.clone();
            let varmap = VarMap::new();
            loaded_counts = batch_counts(&ckpt);
            ckpt.into_varmap(spec, &varmap, device)?;
            let at_batch = if progress.batch > 0 {
                format!(", batch {}", progress.batch)
            } else {
                String::new()
            };
            // A kill between the metrics line and the checkpoint of an epoch would leave a line
            // the checkpoint does not know: the checkpoint is the truth.
            if root {
                let lines: String = progress
                    .metrics
                    .iter()
                    .map(|m| serde_json::to_string(m).expect("metrics serialise") + "\n")
                    .collect();
                write_atomic(&out.join("metrics.jsonl"), lines.as_bytes())?;
            }
            if progress.world_size != collective.world_size() {
                // Per-rank batch norm's batches change size with the number of ranks.
                let batch_norm = match config.sync_batch_norm {
                    true => String::new(),
                    false => format!(
                        ": batch norm's statistics now come from parts of {} image(s) per batch \
                         instead of {}",
                        config.recipe.batch_size.div_ceil(collective.world_size()),
                        config.recipe.batch_size.div_ceil(progress.world_size.max(1)),
                    ),
                };
                observer.note(&format!(
                    "the run trained with {} process(es) until now and goes on with {}{batch_norm}",
                    progress.world_size,
                    collective.world_size(),
                ));
            }
            observer.note(&format!(
                "resuming from {} after epoch {}{at_batch}",
                last_checkpoint(out).display(),
                progress.epoch
            ));
            (varmap, state, progress)
        } else {
            let varmap = match &start.weights {
                Some(weights) => {
                    let mut ckpt = Checkpoint::open_with(weights, device, &start.state_dict)?;
                    loaded_counts = batch_counts(&ckpt);
                    for notice in ckpt.adapt(spec, true)? {
                        observer.note(&notice);
                    }
                    let varmap = VarMap::new();
                    ckpt.into_varmap(spec, &varmap, device)?;
                    varmap
                }
                None => seeded_varmap(spec, config.seed, device)?,
            };
            if last_checkpoint(out).exists() {
                observer.note(&format!(
                    "{} holds an earlier run: starting afresh replaces it (--resume continues it)",
                    out.display()
                ));
            }
            if root {
                let _ = std::fs::remove_file(out.join("metrics.jsonl"));
            }
            (varmap, Default::default(), Progress::default())
        };
        let model = DenseNet::new(
            spec,
            candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, device),
        )?
        .with_frozen(config.freeze.as_deref())?
        .with_memory_efficient(config.memory_efficient)
        .with_sync_batch_norm(match config.sync_batch_norm {
            true => collective.batch_norm_group(),
            false => None,
        });
        let (parameters, buffers) = sorted_variables(&varmap, &|name| model.is_frozen(name));
        let frozen_counts = frozen_batch_counts(spec, &model, loaded_counts)?;
        // Every rank trains rank 0's model, whatever each read or drew.
        broadcast_tensors(&*collective, &parameters, 0)?;
        broadcast_tensors(&*collective, &buffers, 0)?;
        let mut progress = progress;
        progress.world_size = collective.world_size();
        let r = &config.recipe;
        let mut optimizer = Optimizer::new(r.optimizer, &varmap, r.momentum, r.nesterov, r.weight_decay);
        optimizer.load_state(&optimizer_state, progress.steps);
        let optimizer = optimizer.excluding(|name| model.is_frozen(name));
        let schedule = Schedule {
            kind: r.schedule,
            base_lr: r.lr,
            epochs: r.epochs,
            warmup_epochs: config.warmup_epochs,
            milestones: r.milestones.clone(),
        };
        for note in schedule.notes() {
            observer.note(&note);
        }
        Ok(Self {
            config: config.clone(),
            out: out.to_path_buf(),
            device: device.clone(),
            train_set,
            test_set,
            classes,
            varmap,
            optimizer,
            model,
            schedule,
            wall_before: progress.wall_s,
            progress,
            started: Instant::now(),
            collective,
            parameters,
            buffers,
            frozen_counts,
            _lock: lock,
        })
    }

    /// Runs the epochs left ([`Trainer::run_epoch`]) to the end of the recipe, or until `stop`
    /// is set (then `Outcome::Interrupted`, the state saved mid-epoch for `--resume`).
    pub fn run(&mut self, stop: &AtomicBool, observer: &mut dyn Observer) -> Result<Outcome> {
        while !self.is_finished() {
            if self.run_epoch(stop, observer)?.is_none() {
                return Ok(Outcome::Interrupted);
            }
        }
        Ok(Outcome::Finished)
    }

    /// True once every epoch of the recipe has run.
    pub fn is_finished(&self) -> bool {
        self.progress.epoch >= self.config.recipe.epochs
    }

    /// Epochs completed so far.
    pub fn epochs_done(&self) -> usize {
        self.progress.epoch
    }

    /// The classes the classifier's outputs stand for, from the training data.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Trains the next epoch (or the rest of it, after a mid-epoch resume), evaluates, and
    /// writes the epoch's checkpoints and metrics: `Some(metrics)`. When `stop` is set (on any
    /// rank) between two batches, the state is saved in `last.safetensors` mid-epoch and `None`
    /// is returned: a resume goes on from that batch. A non-finite loss stops the run with an
    /// error, and the last good checkpoint stays as it was.
    pub fn run_epoch(
        &mut self,
        stop: &AtomicBool,
        observer: &mut dyn Observer,
    ) -> Result<Option<EpochMetrics>> {
        let config = &self.config;
        let (spec, r) = (&config.spec, &config.recipe);
        let device = &self.device;
        let out = &self.out;
        let collective = &*self.collective;
        let (rank, world) = (collective.rank(), collective.world_size());
        let batches_per_epoch = self.train_set.len().div_ceil(r.batch_size);
        let progress = &mut self.progress;
        let epoch = progress.epoch;
        let mut order: Vec<usize> = (0..self.train_set.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            config.seed ^ (epoch as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F),
        ));
        let epoch_seed = config
            .seed
            .wrapping_add(epoch as u64)
            .wrapping_mul(0xE703_7ED1_A0B4_28DB);
        observer.epoch_started(epoch + 1, r.epochs, batches_per_epoch, progress.batch);
        let (mut loss_sum, mut correct, mut seen, mut train_s) = progress.partial;
        let options = LoaderOptions {
            epoch_seed,
            first_batch: progress.batch,
            workers: match config.workers {
                0 => LoaderOptions::default().workers,
                n => n,
            },
            skip_bad_images: config.skip_bad_images,
            shard: Shard {
                rank,
                world_size: world,
            },
        };
        let loader = Loader::start(
            self.train_set.clone(),
            order,
            r.batch_size,
            train_transform(config),
            options,
        );
        let mut lr = self.schedule.lr(epoch as f64);
        let smallest_map = last_map_side(config);
        let sync = world > 1 && config.sync_batch_norm;
        for batch in loader {
            let batch = batch?;
            for (path, message) in &batch.skipped {
                observer.note(&format!("skipped {}: {message}", path.display()));
            }
            let step_start = Instant::now();
            let n = batch.labels.len();
            // Batch norm in training needs two values per channel: in each rank's part, or with
            // synchronised batch norm in the whole batch, of which each rank needs an image.
            let too_small = match sync {
                true => n == 0,
                false => n * smallest_map * smallest_map < 2,
            };
            let [total, parts_too_small, stopping] = sum_over_ranks(
                collective,
                [
                    n as f64,
                    f64::from(u8::from(too_small)),
                    f64::from(u8::from(stop.load(Ordering::SeqCst))),
                ],
            )?;
            if stopping > 0.0 {
                observer.epoch_abandoned();
                progress.partial = (loss_sum, correct, seen, train_s);
                progress.wall_s = self.wall_before + self.started.elapsed().as_secs_f64();
                broadcast_tensors(collective, &self.buffers, 0)?;
                if rank == 0 {
                    save_model(
                        &last_checkpoint(out),
                        config,
                        &self.classes,
                        &self.varmap,
                        progress,
                        Some(&self.optimizer),
                        &self.frozen_counts,
                    )?;
                }
                observer.stopped(&last_checkpoint(out), epoch + 1, progress.batch);
                // No rank leaves before rank 0 has saved: a launcher ends the whole job when the
                // first process exits with an error status.
                collective.barrier()?;
                return Ok(None);
            }
            let whole_too_small = (total as usize) * smallest_map * smallest_map < 2;
            if parts_too_small > 0.0 || (sync && whole_too_small) {
                // A last batch of one image at 1×1 maps is left out, as DataLoader's drop_last
                // would; with several ranks, a batch any part of which is that small (with
                // synchronised batch norm: empty).
                if total > 0.0 {
                    let holds = match (world > 1, sync) {
                        (false, _) => "holds one image".to_string(),
                        (true, true) if !whole_too_small => format!(
                            "holds {total} image(s), none for some of the {world} processes, \
                             which each need one"
                        ),
                        (true, true) => format!("holds {total} image(s)"),
                        (true, false) => format!(
                            "holds {total} image(s), {} for some of the {world} processes",
                            total as usize / world
                        ),
                    };
                    let why = match sync && !whole_too_small {
                        true => String::new(),
                        false => format!(
                            ", too few for batch norm on the last block's \
                             {smallest_map}×{smallest_map} maps"
                        ),
                    };
                    observer.note(&format!("batch {} {holds}{why}: left out", progress.batch + 1,));
                }
                progress.batch += 1;
                continue;
            }
            let s = config.image_size;
            let x = Tensor::from_vec(batch.images, (n, spec.architecture.in_channels, s, s), device)?;
            let y = Tensor::from_vec(batch.labels.clone(), n, device)?;
            lr = self
                .schedule
                .lr(epoch as f64 + progress.batch as f64 / batches_per_epoch as f64);
            let logits = self.model.forward_t(&x, true)?;
            let loss = cross_entropy(&logits, &y, r.label_smoothing)?;
            let hits = top_k_hits(&logits.detach(), &batch.labels)?.0;
            let local_loss = loss.to_scalar::<f32>()? as f64 * n as f64;
            let [batch_loss, batch_hits] = sum_over_ranks(collective, [local_loss, hits as f64])?;
            if !batch_loss.is_finite() {
                observer.epoch_abandoned();
                return Err(Error::Training(format!(
                    "the loss is {} at epoch {}, batch {}: stopped; the last good checkpoint is {} \
                     (try a lower --lr)",
                    batch_loss / total,
                    epoch + 1,
                    progress.batch + 1,
                    last_checkpoint(out).display()
                )));
            }
            // Each rank's mean weighted by its share of the batch: the average of the ranks'
            // gradients is then the gradient of the whole batch's mean loss.
            let loss = if world > 1 {
                loss.affine((n * world) as f64 / total, 0.0)?
            } else {
                loss
            };
            let mut grads = loss.backward()?;
            average_gradients(collective, &self.parameters, &mut grads)?;
            self.optimizer.step(&grads, lr)?;
            progress.steps += 1;
            loss_sum += batch_loss;
            correct += batch_hits as usize;
            seen += total as usize;
            train_s += step_start.elapsed().as_secs_f64();
            progress.batch += 1;
            observer.batch_done(loss_sum / seen as f64, seen as f64 / train_s);
        }
        // Every rank evaluates and saves rank 0's running statistics.
        broadcast_tensors(collective, &self.buffers, 0)?;
        check_same_weights(collective, &self.parameters, epoch + 1)?;
        let test = evaluate(
            &self.model,
            self.test_set.clone(),
            &eval_transform(config),
            r.batch_size,
            device,
            config.skip_bad_images,
            &mut |path, message| observer.note(&format!("skipped {}: {message}", path.display())),
            Shard {
                rank,
                world_size: world,
            },
        )?;
        let [_, test_hits, test_samples] = sum_over_ranks(
            collective,
            [
                test.loss * test.samples as f64,
                test.top1 * test.samples as f64,
                test.samples as f64,
            ],
        )?;
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_acc: test_hits.round() / test_samples.max(1.0),
            examples_per_s: seen as f64 / train_s.max(1e-9),
            wall_s: self.wall_before + self.started.elapsed().as_secs_f64(),
            lr,
        };
        if rank == 0 {
            append_line(
                &out.join("metrics.jsonl"),
                &serde_json::to_string(&metrics).expect("metrics serialise"),
            )?;
        }
        progress.epoch += 1;
        progress.batch = 0;
        progress.partial = Default::default();
        progress.wall_s = metrics.wall_s;
        progress.metrics.push(metrics.clone());
        let best = metrics.test_acc > progress.best_test_acc || progress.epoch == 1;
        progress.best_test_acc = progress.best_test_acc.max(metrics.test_acc);
        if rank == 0 {
            if best {
                save_model(
                    &out.join("best.safetensors"),
                    config,
                    &self.classes,
                    &self.varmap,
                    progress,
                    None,
                    &self.frozen_counts,
                )?;
            }
            save_model(
                &last_checkpoint(out),
                config,
                &self.classes,
                &self.varmap,
                progress,
                Some(&self.optimizer),
                &self.frozen_counts,
            )?;
            write_atomic(&out.join("curves.svg"), curves_svg(&progress.metrics).as_bytes())?;
        }
        observer.epoch_done(&metrics);
        Ok(Some(metrics))
    }
}

/// The side of the last dense block's maps at the run's input size (1 when it cannot be
/// computed, which the spec check refuses first).
fn last_map_side(config: &TrainConfig) -> usize {
    config
        .spec
        .architecture
        .stage_sizes(config.image_size)
        .ok()
        .and_then(|s| s.last().copied())
        .unwrap_or(1)
}

/// `values` summed over the ranks, in one all-reduce.
fn sum_over_ranks<const N: usize>(collective: &dyn Collective, mut values: [f64; N]) -> Result<[f64; N]> {
    collective.all_reduce_sum(Buffer::F64(&mut values))?;
    Ok(values)
}

/// The variables of `varmap` sorted by name, as every rank orders them: the trainable ones
/// (not `frozen`) and the batch-norm buffers.
fn sorted_variables(varmap: &VarMap, frozen: &dyn Fn(&str) -> bool) -> (Vec<Var>, Vec<Var>) {
    let data = varmap.data().lock().expect("varmap lock");
    let mut named: Vec<(&String, &Var)> = data
        .iter()
        .filter(|(name, _)| is_buffer(name) || !frozen(name))
        .collect();
    named.sort_by_key(|(name, _)| *name);
    let (buffers, parameters): (Vec<_>, Vec<_>) = named.into_iter().partition(|(name, _)| is_buffer(name));
    let vars = |list: Vec<(&String, &Var)>| list.into_iter().map(|(_, v)| v.clone()).collect();
    (vars(parameters), vars(buffers))
}

/// Refuses to go on when this rank's weights differ, by a hash of their bits, from rank 0's
/// after `epoch`: the ranks would no longer train one model (different builds, or data).
fn check_same_weights(collective: &dyn Collective, parameters: &[Var], epoch: usize) -> Result<()> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for p in parameters {
        for v in p
            .as_detached_tensor()
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?
        {
            hash = (hash ^ u64::from(v.to_bits())).wrapping_mul(0x0100_0000_01b3);
        }
    }
    // 32 bits, exact in an f64.
    let own = f64::from((hash ^ (hash >> 32)) as u32);
    let mut root = [own];
    collective.broadcast(Buffer::F64(&mut root), 0)?;
    if root[0] != own {
        return Err(Error::Distributed(format!(
            "after epoch {epoch}, rank {}'s weights differ from rank 0's: the ranks no longer train one \
             model (are they running the same build on the same data?)",
            collective.rank()
        )));
    }
    Ok(())
}

/// The images as training sees them: the recipe's augmentation at the run's input size, with
/// the spec's normalisation; without a resizing crop, image files are resized to the input size
/// (their shorter side) and centre-cropped first.
fn train_transform(config: &TrainConfig) -> Transform {
    Transform {
        resize: config.image_size,
        augment: config.recipe.augment,
        ..eval_transform(config)
    }
}

/// The images as evaluation sees them: the spec's preprocessing scaled to the run's input size
/// (Resize(256) and CenterCrop(224) for ImageNet's nets at 224).
fn eval_transform(config: &TrainConfig) -> Transform {
    let mut spec = config.spec.clone();
    spec.set_input_size(config.image_size);
    crate::data::eval_transform(&spec)
}

/// Trains as `config` says to the end of the recipe ([`Trainer`]), or until `stop` is set
/// (then `Outcome::Interrupted`, the state saved mid-epoch for `--resume`); on several
/// processes, [`Trainer::with_collective`] and [`Trainer::run`].
pub fn train(
    config: &TrainConfig,
    out: &Path,
    start: &Start,
    device: &Device,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<Outcome> {
    Trainer::new(config, out, start, device, observer)?.run(stop, observer)
}

/// Removes the temporary files of checkpoint writes that a killed run left in `out`.
fn remove_temporary_files(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(is_temporary) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
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

/// The data must have exactly one class per classifier output: fewer would train outputs that
/// no image teaches and label them with names the data does not have.
fn check_classes(dataset: &Dataset, spec: &VariantSpec, dir: &Path) -> Result<()> {
    let max_label = dataset.labels.iter().copied().max().unwrap_or(0) as usize;
    if dataset.classes.len() != spec.architecture.num_classes || max_label >= spec.architecture.num_classes {
        return Err(Error::Training(format!(
            "{} has {} classes but {} has {} outputs: set the spec's num_classes to {} (--num-classes)",
            dir.display(),
            dataset.classes.len(),
            spec.name,
            spec.architecture.num_classes,
            dataset.classes.len()
        )));
    }
    Ok(())
}

/// The `num_batches_tracked` tensors a checkpoint holds, by canonical name.
fn batch_counts(ckpt: &Checkpoint) -> HashMap<String, Tensor> {
    ckpt.tensors
        .iter()
        .filter(|(name, _)| name.ends_with("num_batches_tracked"))
        .map(|(name, t)| (name.clone(), t.clone()))
        .collect()
}

/// The `num_batches_tracked` of each of `model`'s frozen batch norms, as `loaded` has it (0
/// where the file had none, as torchvision's oldest files): frozen, they count no batch.
fn frozen_batch_counts(
    spec: &VariantSpec,
    model: &DenseNet,
    loaded: HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    let mut counts = HashMap::new();
    for t in crate::checkpoint::expected_tensors(spec)? {
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

/// Writes the model (and the optimiser's state, for `last`) with metadata that makes the file
/// usable alone: spec, classes, preprocessing, and the training facts.
fn save_model(
    path: &Path,
    config: &TrainConfig,
    classes: &[String],
    varmap: &VarMap,
    p: &Progress,
    optimizer: Option<&Optimizer>,
    frozen_counts: &HashMap<String, Tensor>,
) -> Result<()> {
    let spec = &config.spec;
    let mut tensors = state_dict(spec, &varmap_tensors(varmap))?;
    for (name, t) in tensors.iter_mut() {
        if name.ends_with("num_batches_tracked") {
            *t = match frozen_counts.get(name) {
                Some(kept) => kept.clone(),
                None => Tensor::new(p.steps as i64, &Device::Cpu)?,
            };
        }
    }
    if let Some(o) = optimizer {
        tensors.extend(o.state());
    }
    let mut metadata = Metadata::for_spec(spec);
    metadata.classes = classes.to_vec();
    let last = p.metrics.last();
    let record = TrainingRecord {
        epoch: p.epoch,
        test_acc: last.map(|m| m.test_acc),
        best_test_acc: p.best_test_acc,
        data: config.data.clone(),
        config: config.clone(),
        progress: p.clone(),
    };
    metadata.training = Some(serde_json::to_value(record).expect("the training record serialises"));
    write_safetensors(path, &tensors, Some(&metadata))
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    writeln!(f, "{line}").map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::error::Result;

    /// Rank `rank` of two: its broadcasts record what it held and bring `root`'s value (rank
    /// 0's own when `None`).
    struct FakeRank {
        rank: usize,
        root: Option<f64>,
        held: Cell<Option<f64>>,
    }

    impl Collective for FakeRank {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&self, _: Buffer) -> Result<()> {
            Ok(())
        }
        fn broadcast(&self, values: Buffer, _: usize) -> Result<()> {
            if let Buffer::F64(v) = values {
                self.held.set(Some(v[0]));
                if let Some(root) = self.root {
                    v.fill(root);
                }
            }
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
    }

    fn rank(rank: usize, root: Option<f64>) -> FakeRank {
        FakeRank {
            rank,
            root,
            held: Cell::new(None),
        }
    }

    #[test]
    fn weights_that_differ_from_rank_0s_stop_the_run() {
        let dev = Device::Cpu;
        let weights = Var::new(&[1f32, 2., 3.], &dev).unwrap();
        let rank_0 = rank(0, None);
        check_same_weights(&rank_0, std::slice::from_ref(&weights), 1).unwrap();
        let sent = rank_0.held.get();
        check_same_weights(&rank(1, sent), &[weights], 1).unwrap();
        // One bit of one weight apart.
        let changed = Var::new(&[1f32, 2., f32::from_bits(3f32.to_bits() + 1)], &dev).unwrap();
        let err = check_same_weights(&rank(1, sent), &[changed], 3).unwrap_err();
        assert!(
            err.to_string()
                .contains("after epoch 3, rank 1's weights differ from rank 0's"),
            "{err}"
        );
    }
}
