//! The training loop: epochs of SGD over a data set, a metrics line and two checkpoints per
//! epoch, exact resume, and a clean stop on request or a non-finite loss. What a run is
//! configured by is in [`config`](super::TrainConfig), its folder's records in `run_dir`,
//! what it reports in [`Observer`].

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::run_dir::{batch_counts, frozen_batch_counts, last_checkpoint, Progress, RunDir, Weights};
use super::{
    cross_entropy, evaluate, seeded_varmap, top_k_hits, EpochMetrics, Observer, Optimizer, Outcome, Schedule,
    Start, TrainConfig,
};
use crate::checkpoint::Checkpoint;
use crate::data::{self, Batch, Dataset, Loader, LoaderOptions, Shard, Split};
use crate::error::{Error, Result};
use crate::model::DenseNet;
use crate::train::distributed::{
    average_gradients, broadcast_tensors, check_same_weights, sorted_variables, sum_over_ranks, Collective,
    SingleProcess,
};

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
    run_dir: RunDir,
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
}

/// The sums of an epoch's batches so far: loss × samples, correct, samples, seconds.
type Partial = (f64, usize, usize, f64);

/// What became of one batch.
enum Step {
    /// Trained on.
    Trained,
    /// Too small for batch norm: left out, as `DataLoader(drop_last=True)` would.
    LeftOut,
    /// A stop was asked for (on any rank) before it.
    Stop,
}

/// The weights a run starts from, with what loading them decided.
struct Initial {
    varmap: VarMap,
    optimizer_state: HashMap<String, Tensor>,
    progress: Progress,
    /// Every batch norm's `num_batches_tracked` as loaded: the frozen ones keep theirs.
    counts: HashMap<String, Tensor>,
}

impl Trainer {
    /// Sets a run up in `out` as `config` says, from new weights, a checkpoint to fine-tune,
    /// or (resuming) exactly where `out/last.safetensors` stopped: pass
    /// [`saved_config`](super::saved_config)`(out)`, changed as wanted; the changes are noted,
    /// and refused when they change the net, or when the run stopped mid-epoch and they would
    /// change that epoch's batches (batch size, seed, data, input size, augmentation). A new
    /// run's classifier gets one output per class of the data ([`TrainConfig::num_classes`]).
    /// Refuses a configuration that cannot run ([`TrainConfig::checked`]). The checkpoints
    /// record the spec at the run's input size (`config.image_size`), and without built-in
    /// labels when their number is not the classifier's.
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
    /// for evaluation (sharded, its sums added across ranks) and checkpoints. Rank 0 alone
    /// holds and writes `out`. A run resumes with any number of ranks (noted when it changes).
    ///
    /// # Errors
    /// As [`Trainer::new`], and [`Error::Distributed`] when a collective operation fails.
    pub fn with_collective(
        config: &TrainConfig,
        out: &Path,
        start: &Start,
        device: &Device,
        collective: Rc<dyn Collective>,
        observer: &mut dyn Observer,
    ) -> Result<Self> {
        let loads_weights = start.resume || start.weights.is_some();
        let mut config = config.checked(loads_weights, collective.world_size(), device)?;
        let run_dir = RunDir::open(out, collective.rank() == 0)?;
        let train_set = Arc::new(data::open(&config.data, Split::Train)?);
        let test_set = Arc::new(data::open(&config.data, Split::Test)?);
        let classes = config.fit_classes(&train_set, start.resume, observer)?;
        let initial = match start.resume {
            true => resume(&run_dir, &config, collective.world_size(), device, observer)?,
            false => start_weights(&run_dir, &config, start, &classes, device, observer)?,
        };
        let spec = &config.spec;
        let model = DenseNet::new(
            spec,
            candle_nn::VarBuilder::from_varmap(&initial.varmap, candle_core::DType::F32, device),
        )?
        .with_frozen(config.freeze.as_deref())?
        .with_memory_efficient(config.memory_efficient)
        .with_sync_batch_norm(match config.sync_batch_norm {
            true => collective.batch_norm_group(),
            false => None,
        });
        let (parameters, buffers) = sorted_variables(&initial.varmap, &|name| model.is_frozen(name));
        if let Some(level) = model.frozen_level() {
            observer.note(&frozen_note(&model, level, &initial.varmap));
        }
        let frozen_counts = frozen_batch_counts(spec, &model, initial.counts)?;
        // Every rank trains rank 0's model, whatever each read or drew.
        broadcast_tensors(&*collective, &parameters, 0)?;
        broadcast_tensors(&*collective, &buffers, 0)?;
        let mut progress = initial.progress;
        progress.world_size = collective.world_size();
        let r = &config.recipe;
        let mut optimizer = Optimizer::new(
            r.optimizer,
            &initial.varmap,
            r.momentum,
            r.nesterov,
            r.weight_decay,
        );
        optimizer.load_state(&initial.optimizer_state, progress.steps);
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
        // What the caller insisted on is now the spec's: a resume needs it no more.
        config.num_classes = None;
        Ok(Self {
            config,
            run_dir,
            device: device.clone(),
            train_set,
            test_set,
            classes,
            varmap: initial.varmap,
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

    /// The configuration the run trains with, as checked and fitted to the data (the
    /// classifier's outputs, the spec at the run's input size).
    pub fn config(&self) -> &TrainConfig {
        &self.config
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
        let loader = self.start_epoch(observer);
        let mut partial = self.progress.partial;
        let mut lr = self.schedule.lr(self.progress.epoch as f64);
        for batch in loader {
            match self.train_batch(batch?, stop, &mut partial, &mut lr, observer)? {
                Step::Trained | Step::LeftOut => {}
                Step::Stop => {
                    self.save_stopped(partial, observer)?;
                    return Ok(None);
                }
            }
        }
        let test_acc = self.evaluate(observer)?;
        let metrics = self.finish_epoch(partial, test_acc, lr)?;
        observer.epoch_done(&metrics);
        Ok(Some(metrics))
    }

    /// The loader of this epoch's batches from where the epoch stands: its own shuffle of the
    /// training set, its augmentation seed, this rank's shard of each batch.
    fn start_epoch(&self, observer: &mut dyn Observer) -> Loader {
        let (config, epoch) = (&self.config, self.progress.epoch);
        let mut order: Vec<usize> = (0..self.train_set.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            config.seed ^ (epoch as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F),
        ));
        let epoch_seed = config
            .seed
            .wrapping_add(epoch as u64)
            .wrapping_mul(0xE703_7ED1_A0B4_28DB);
        observer.epoch_started(
            epoch + 1,
            config.recipe.epochs,
            self.batches_per_epoch(),
            self.progress.batch,
        );
        let options = LoaderOptions {
            epoch_seed,
            first_batch: self.progress.batch,
            workers: match config.workers {
                0 => LoaderOptions::default().workers,
                n => n,
            },
            skip_bad_images: config.skip_bad_images,
            shard: self.shard(),
        };
        Loader::start(
            self.train_set.clone(),
            order,
            config.recipe.batch_size,
            config.train_transform(),
            options,
        )
    }

    fn batches_per_epoch(&self) -> usize {
        self.train_set.len().div_ceil(self.config.recipe.batch_size)
    }

    fn shard(&self) -> Shard {
        Shard {
            rank: self.collective.rank(),
            world_size: self.collective.world_size(),
        }
    }

    /// One step on `batch` (this rank's part of it) at the schedule's rate, unless a stop was
    /// asked for, or the batch is too small for batch norm. The ranks agree on both first.
    fn train_batch(
        &mut self,
        batch: Batch,
        stop: &AtomicBool,
        partial: &mut Partial,
        lr: &mut f64,
        observer: &mut dyn Observer,
    ) -> Result<Step> {
        for (path, message) in &batch.skipped {
            observer.note(&format!("skipped {}: {message}", path.display()));
        }
        let step_start = Instant::now();
        let collective = &*self.collective;
        let world = collective.world_size();
        let side = self.config.last_map_side();
        let sync = world > 1 && self.config.sync_batch_norm;
        let n = batch.labels.len();
        // Batch norm in training needs two values per channel: in each rank's part, or with
        // synchronised batch norm in the whole batch, of which each rank needs an image.
        let too_small = match sync {
            true => n == 0,
            false => n * side * side < 2,
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
            return Ok(Step::Stop);
        }
        let whole_too_small = (total as usize) * side * side < 2;
        if parts_too_small > 0.0 || (sync && whole_too_small) {
            if total > 0.0 {
                observer.note(&left_out(
                    self.progress.batch + 1,
                    total,
                    world,
                    sync,
                    whole_too_small,
                    side,
                ));
            }
            self.progress.batch += 1;
            return Ok(Step::LeftOut);
        }
        let (config, device) = (&self.config, &self.device);
        let s = config.image_size;
        let x = Tensor::from_vec(
            batch.images,
            (n, config.spec.architecture.in_channels, s, s),
            device,
        )?;
        let y = Tensor::from_vec(batch.labels.clone(), n, device)?;
        let (epoch, number) = (self.progress.epoch, self.progress.batch);
        *lr = self
            .schedule
            .lr(epoch as f64 + number as f64 / self.batches_per_epoch() as f64);
        let logits = self.model.forward_t(&x, true)?;
        let loss = cross_entropy(&logits, &y, config.recipe.label_smoothing)?;
        let hits = top_k_hits(&logits.detach(), &batch.labels)?.0;
        let local_loss = loss.to_scalar::<f32>()? as f64 * n as f64;
        let [batch_loss, batch_hits] = sum_over_ranks(collective, [local_loss, hits as f64])?;
        if !batch_loss.is_finite() {
            observer.epoch_abandoned();
            return Err(Error::Training(format!(
                "the loss is {} at epoch {}, batch {}: stopped, and {} (a lower learning rate may do)",
                batch_loss / total,
                epoch + 1,
                number + 1,
                self.last_good()
            )));
        }
        // Each rank's mean weighted by its share of the batch: the average of the ranks'
        // gradients is then the gradient of the whole batch's mean loss.
        let loss = match world {
            1 => loss,
            _ => loss.affine((n * world) as f64 / total, 0.0)?,
        };
        let mut grads = self.model.run(|| loss.backward())?;
        average_gradients(collective, &self.parameters, &mut grads)?;
        let (model, optimizer) = (&self.model, &mut self.optimizer);
        model.run(|| optimizer.step(&grads, *lr))?;
        self.progress.steps += 1;
        let (loss_sum, correct, seen, train_s) = partial;
        *loss_sum += batch_loss;
        *correct += batch_hits as usize;
        *seen += total as usize;
        *train_s += step_start.elapsed().as_secs_f64();
        self.progress.batch += 1;
        observer.batch_done(*loss_sum / *seen as f64, *seen as f64 / *train_s);
        Ok(Step::Trained)
    }

    /// Saves the state mid-epoch in `last.safetensors` for a resume from the next batch, once
    /// every rank has stopped; rank 0 writes it, and no rank leaves before it has (a launcher
    /// ends the whole job when the first process exits with an error status).
    fn save_stopped(&mut self, partial: Partial, observer: &mut dyn Observer) -> Result<()> {
        observer.epoch_abandoned();
        self.progress.partial = partial;
        self.progress.wall_s = self.wall_before + self.started.elapsed().as_secs_f64();
        broadcast_tensors(&*self.collective, &self.buffers, 0)?;
        let saved = self
            .run_dir
            .save(&self.weights(), &self.progress, Some(&self.optimizer))?;
        observer.stopped(&saved, self.progress.epoch + 1, self.progress.batch);
        self.collective.barrier()
    }

    /// The test split's top-1 accuracy, every rank evaluating its shard with rank 0's running
    /// statistics, once the ranks' weights are checked to be one model.
    fn evaluate(&self, observer: &mut dyn Observer) -> Result<f64> {
        let collective = &*self.collective;
        broadcast_tensors(collective, &self.buffers, 0)?;
        check_same_weights(collective, &self.parameters, self.progress.epoch + 1)?;
        let test = evaluate(
            &self.model,
            self.test_set.clone(),
            &self.config.eval_transform(),
            self.config.recipe.batch_size,
            &self.device,
            self.config.skip_bad_images,
            &mut |path, message| observer.note(&format!("skipped {}: {message}", path.display())),
            self.shard(),
        )?;
        let [hits, samples, non_finite] = sum_over_ranks(
            collective,
            [
                test.top1 * test.samples as f64,
                test.samples as f64,
                test.non_finite as f64,
            ],
        )?;
        if non_finite > 0.0 {
            observer.epoch_abandoned();
            return Err(Error::Training(format!(
                "after epoch {}, the model's outputs are not finite (NaN or infinite) for {non_finite} \
                 of the {samples} test images: training diverged; stopped, and {} (a lower learning \
                 rate may do)",
                self.progress.epoch + 1,
                self.last_good()
            )));
        }
        Ok(hits.round() / samples.max(1.0))
    }

    /// The epoch's metrics, appended to `metrics.jsonl`; its checkpoints (`best` when the test
    /// accuracy is the best so far) and the curves written.
    fn finish_epoch(&mut self, partial: Partial, test_acc: f64, lr: f64) -> Result<EpochMetrics> {
        let (loss_sum, correct, seen, train_s) = partial;
        let metrics = EpochMetrics {
            epoch: self.progress.epoch + 1,
            loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_acc,
            examples_per_s: seen as f64 / train_s.max(1e-9),
            wall_s: self.wall_before + self.started.elapsed().as_secs_f64(),
            lr,
        };
        self.run_dir.append_metrics(&metrics)?;
        let progress = &mut self.progress;
        progress.epoch += 1;
        progress.batch = 0;
        progress.partial = Default::default();
        progress.wall_s = metrics.wall_s;
        progress.metrics.push(metrics.clone());
        let best = metrics.test_acc > progress.best_test_acc || progress.epoch == 1;
        progress.best_test_acc = progress.best_test_acc.max(metrics.test_acc);
        let weights = self.weights();
        if best {
            self.run_dir.save(&weights, &self.progress, None)?;
        }
        self.run_dir
            .save(&weights, &self.progress, Some(&self.optimizer))?;
        self.run_dir.write_curves(&self.progress.metrics)?;
        Ok(metrics)
    }

    /// Where the last good state is, for a run stopped by a non-finite loss or output.
    fn last_good(&self) -> String {
        let last = last_checkpoint(self.run_dir.path());
        match last.exists() {
            true => format!("the last good checkpoint is {}", last.display()),
            false => "no checkpoint was written".into(),
        }
    }

    fn weights(&self) -> Weights<'_> {
        Weights {
            config: &self.config,
            classes: &self.classes,
            varmap: &self.varmap,
            frozen_counts: &self.frozen_counts,
        }
    }
}

/// The weights, optimiser state and progress of the run in `run_dir`, for a resume.
fn resume(
    run_dir: &RunDir,
    config: &TrainConfig,
    world_size: usize,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<Initial> {
    let (ckpt, progress) = run_dir.resume(config, world_size, device, observer)?;
    let optimizer_state = ckpt.optimizer.clone();
    let counts = batch_counts(&ckpt);
    let varmap = VarMap::new();
    ckpt.into_varmap(&config.spec, &varmap, device)?;
    Ok(Initial {
        varmap,
        optimizer_state,
        progress,
        counts,
    })
}

/// A new run's weights: a checkpoint to fine-tune, adapted to the spec (said), or new ones
/// from the seed.
fn start_weights(
    run_dir: &RunDir,
    config: &TrainConfig,
    start: &Start,
    classes: &[String],
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<Initial> {
    let (varmap, counts) = match &start.weights {
        Some(weights) => {
            let mut ckpt = Checkpoint::open_with(weights, device, &start.state_dict)?;
            let counts = batch_counts(&ckpt);
            let own = ckpt
                .metadata
                .as_ref()
                .map(|m| m.classes.clone())
                .unwrap_or_default();
            if own.len() == classes.len() && own != classes {
                // The classifier is kept: its outputs now stand for the run's classes.
                let first = |names: &[String]| names.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
                observer.note(&format!(
                    "the classifier of {weights} is kept, its outputs named anew: {} (the checkpoint \
                     named them {})",
                    first(classes),
                    first(&own)
                ));
            }
            for notice in ckpt.adapt(&config.spec, true)? {
                observer.note(&notice);
            }
            let varmap = VarMap::new();
            ckpt.into_varmap(&config.spec, &varmap, device)?;
            (varmap, counts)
        }
        None => (seeded_varmap(&config.spec, config.seed, device)?, HashMap::new()),
    };
    run_dir.start_afresh(observer);
    Ok(Initial {
        varmap,
        optimizer_state: HashMap::new(),
        progress: Progress::default(),
        counts,
    })
}

/// What freezing up to `level` keeps: "frozen up to block2 (stem, block1, block2 and the
/// transitions between them): 1,234,567 of 7,978,856 weights stay as loaded, ...".
fn frozen_note(model: &DenseNet, level: usize, varmap: &VarMap) -> String {
    let (mut frozen, mut all) = (0usize, 0usize);
    for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
        if crate::checkpoint::is_buffer(name) {
            continue;
        }
        all += var.elem_count();
        if model.is_frozen(name) {
            frozen += var.elem_count();
        }
    }
    let levels: Vec<&str> = model.feature_info()[..=level]
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    format!(
        "frozen up to {} ({}{}{}): {frozen} of {all} weights stay as loaded, and their batch norms \
         normalise with the running statistics; the rest trains",
        levels.last().expect("a level"),
        levels.join(", "),
        if level > 1 {
            " and the transitions between them"
        } else {
            ""
        },
        if level + 1 == model.feature_info().len() {
            ", and norm5"
        } else {
            ""
        }
    )
}

/// Why batch `number` of `total` images over `world` processes is left out: a last batch of
/// one image at 1×1 maps, as `DataLoader(drop_last=True)` would; with several ranks, a batch
/// any part of which is that small (with synchronised batch norm: empty).
fn left_out(
    number: usize,
    total: f64,
    world: usize,
    sync: bool,
    whole_too_small: bool,
    side: usize,
) -> String {
    let holds = match (world > 1, sync) {
        (false, _) => "holds one image".to_string(),
        (true, true) if !whole_too_small => {
            format!("holds {total} image(s), none for some of the {world} processes, which each need one")
        }
        (true, true) => format!("holds {total} image(s)"),
        (true, false) => format!(
            "holds {total} image(s), {} for some of the {world} processes",
            total as usize / world
        ),
    };
    let why = match sync && !whole_too_small {
        true => String::new(),
        false => format!(", too few for batch norm on the last block's {side}×{side} maps"),
    };
    format!("batch {number} {holds}{why}: left out")
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
