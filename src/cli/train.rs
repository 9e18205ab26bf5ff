//! `densenet-zoo train`: train a variant on a data set, timm-style, with the book's plot.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use densenet_zoo::data::{self, Augment, Split, DEFAULT_DATA};
use densenet_zoo::device::parse_device;
use densenet_zoo::distributed::{launched_world_size, Collective, SingleProcess};
use densenet_zoo::spec::TransitionPool;
use densenet_zoo::tabular::{ColumnOptions, MlpSpec};
use densenet_zoo::train::{
    self, saved_config, EpochMetrics, Observer, OptimizerKind, Outcome, ScheduleKind, TrainConfig,
};
use densenet_zoo::Variant;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Variant name (d2l, 121, bc-100-12, ...) or a JSON spec [default: d2l].
    #[arg(long)]
    variant: Option<String>,
    /// Data set folder: IDX files, CIFAR binary batches, or train/ and val/ class folders; for
    /// a tabular variant, a CSV file (`,` `;` or tab separated, `.gz` too).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Epochs [default: the variant's recipe].
    #[arg(long, value_parser = super::at_least_one, allow_negative_numbers = true)]
    epochs: Option<usize>,
    /// Images per step [default: the recipe's].
    #[arg(long, value_parser = super::at_least_one, allow_negative_numbers = true)]
    batch_size: Option<usize>,
    /// Peak learning rate [default: the recipe's].
    #[arg(long, value_parser = super::finite, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// SGD momentum [default: the recipe's].
    #[arg(long, value_parser = super::finite, allow_negative_numbers = true)]
    momentum: Option<f64>,
    /// Nesterov momentum: `--nesterov` or `--nesterov false` [default: the recipe's].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    nesterov: Option<bool>,
    /// Weight decay on parameters, never on batch-norm statistics [default: the recipe's].
    #[arg(long, value_parser = super::finite, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// Learning-rate schedule: constant, step (÷10 at the recipe's milestones) or cosine.
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// Epochs of linear warmup [default: 0].
    #[arg(long, value_parser = super::zero_or_more, allow_negative_numbers = true)]
    warmup_epochs: Option<usize>,
    /// Update rule: sgd or adamw [default: the recipe's].
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerKind>,
    /// Square input side images are resized to [default: the variant's input size].
    #[arg(long, value_parser = super::at_least_one, allow_negative_numbers = true)]
    image_size: Option<usize>,
    /// Training augmentation: none; crop-flip (CIFAR: pad 4, random crop, flip; `--augment`
    /// alone); imagenet (torchvision's RandomResizedCrop and flip); fb (imagenet plus
    /// fb.resnet.torch's colour jitter and lighting) [default: the recipe's].
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "crop-flip")]
    augment: Option<Augment>,
    /// Label smoothing ε, as torch's CrossEntropyLoss(label_smoothing=ε) [default: the recipe's, 0].
    #[arg(long, value_parser = super::finite, allow_negative_numbers = true)]
    label_smoothing: Option<f64>,
    /// How transitions downsample: avg (2×2 average, every published DenseNet) or max (2×2
    /// max after the 1×1 conv; the book's exercise 1); recorded in the checkpoint [default: the
    /// variant's, avg].
    #[arg(long, value_enum)]
    transition_pool: Option<TransitionPool>,
    /// Threads that decode and augment images; 0 or no flag: one per core.
    #[arg(long, value_parser = super::zero_or_more, allow_negative_numbers = true)]
    workers: Option<usize>,
    /// Skip an image that cannot be decoded, with a note, instead of stopping the run.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    skip_bad_images: Option<bool>,
    /// Seed for weights, shuffling and augmentation [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    seed: Option<u64>,
    /// Recompute each dense layer's first batch norm and ReLU in the backward pass instead of
    /// storing them: far less memory, bit-identical results (`--memory-efficient false` to undo).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    memory_efficient: Option<bool>,
    /// Under mpirun/srun: every batch norm takes the statistics of the whole batch across the
    /// processes (PyTorch's SyncBatchNorm) instead of each process's part; CPU only.
    #[arg(long = "sync-bn", num_args = 0..=1, default_missing_value = "true")]
    sync_batch_norm: Option<bool>,
    /// Output folder: metrics.jsonl, last/best.safetensors, curves.svg; for a tabular variant,
    /// model.safetensors and (with --folds) cross_validation.json.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Continue from OUT/last.safetensors with its saved settings (flags given here override them).
    #[arg(long)]
    resume: bool,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Classifier outputs; must equal the number of classes in the data [default: the data's].
    #[arg(long, value_parser = super::at_least_one, allow_negative_numbers = true)]
    num_classes: Option<usize>,
    /// Start from these weights (path or hf:OWNER/REPO[:FILE]) to fine-tune; with
    /// --num-classes, a classifier of another size is skipped and initialised fresh.
    #[arg(long)]
    weights: Option<String>,
    #[command(flatten)]
    state_dict: super::weights::StateDictArgs,
    /// Keep everything up to and including LEVEL exactly as --weights has it (weights and
    /// batch-norm statistics) and train the rest: stem, block1 ... blockN, or features (the
    /// whole backbone: only the classifier trains).
    #[arg(long, value_name = "LEVEL")]
    freeze: Option<String>,
    /// Class names for the data's classes, one per line in their order (or JSON), recorded in
    /// the checkpoints instead of the data's own (folder names such as WordNet ids).
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Tabular variants (dense-mlp, plain-mlp, linear-regression): the CSV column to predict,
    /// fitted as its logarithm.
    #[arg(long, value_name = "COLUMN")]
    target: Option<String>,
    /// Tabular variants: k-fold cross-validation first, reporting each fold's and the mean log-RMSE.
    #[arg(long, value_name = "K")]
    folds: Option<usize>,
    /// Tabular variants: a column of numbers to one-hot encode as categories (repeatable).
    #[arg(long, value_name = "COLUMN")]
    categorical: Vec<String>,
    /// Tabular variants: the column naming rows, not a feature [default: a column called id, any case].
    #[arg(long, value_name = "COLUMN")]
    id_column: Option<String>,
    /// Tabular variants: the report as one JSON object (log_rmse_mean, log_rmse_std, folds, ...).
    #[arg(long)]
    json: bool,
}

/// The tabular spec `--variant` names, if it names one.
fn tabular_spec(args: &Args) -> anyhow::Result<Option<MlpSpec>> {
    let Some(variant) = &args.variant else {
        return Ok(None);
    };
    // A spec file meant for tabular data (--target given) is read as one, so that its own
    // mistakes are the ones reported.
    let spec = match MlpSpec::resolve(variant)? {
        None if args.target.is_some() && std::path::Path::new(variant).is_file() => {
            let text = std::fs::read_to_string(variant)?;
            Some(MlpSpec::from_json(&text, variant)?)
        }
        spec => spec,
    };
    if spec.is_some() && args.resume {
        anyhow::bail!("--resume: tabular runs take seconds and are not resumed; run the command again");
    }
    Ok(spec)
}

/// The tabular run `args` ask for; the image-only flags are refused by name.
fn tabular_request(spec: MlpSpec, args: &Args) -> anyhow::Result<super::tabular::TrainRequest> {
    let image_only = [
        ("--image-size", args.image_size.is_some()),
        ("--augment", args.augment.is_some()),
        ("--label-smoothing", args.label_smoothing.is_some()),
        ("--transition-pool", args.transition_pool.is_some()),
        ("--warmup-epochs", args.warmup_epochs.is_some()),
        ("--workers", args.workers.is_some()),
        ("--skip-bad-images", args.skip_bad_images.is_some()),
        ("--memory-efficient", args.memory_efficient.is_some()),
        ("--sync-bn", args.sync_batch_norm.is_some()),
        ("--num-classes", args.num_classes.is_some()),
        ("--weights", args.weights.is_some()),
        (
            "--use-ema/--weights-key",
            args.state_dict.use_ema || args.state_dict.weights_key.is_some(),
        ),
        ("--freeze", args.freeze.is_some()),
        ("--labels", args.labels.is_some()),
    ];
    let given: Vec<&str> = image_only.iter().filter(|(_, g)| *g).map(|(f, _)| *f).collect();
    anyhow::ensure!(
        given.is_empty(),
        "{} {} for image variants, not {} (a tabular variant)",
        given.join(", "),
        if given.len() == 1 { "is" } else { "are" },
        spec.name
    );
    let data = args.data.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "{} trains on a CSV file: pass --data FILE.csv --target COLUMN",
            spec.name
        )
    })?;
    let target = args
        .target
        .clone()
        .ok_or_else(|| anyhow::anyhow!("{} needs the column to predict: pass --target COLUMN", spec.name))?;
    let mut recipe = spec.recipe.clone();
    override_recipe(&mut recipe, args);
    Ok(super::tabular::TrainRequest {
        spec,
        data,
        columns: ColumnOptions {
            target,
            id_column: args.id_column.clone(),
            categorical: args.categorical.clone(),
        },
        folds: args.folds,
        recipe,
        seed: args.seed.unwrap_or(0),
        out: args.out.clone(),
        json: args.json,
        device: parse_device(&args.device)?,
    })
}

/// Refuses the tabular flags, and CSV data, for an image variant.
fn refuse_tabular_input(args: &Args) -> anyhow::Result<()> {
    let tabular_only = [
        ("--target", args.target.is_some()),
        ("--folds", args.folds.is_some()),
        ("--categorical", !args.categorical.is_empty()),
        ("--id-column", args.id_column.is_some()),
        ("--json", args.json),
    ];
    let given: Vec<&str> = tabular_only.iter().filter(|(_, g)| *g).map(|(f, _)| *f).collect();
    let variant = args.variant.as_deref().unwrap_or("d2l");
    // A misspelt name or a broken spec file says so before anything else.
    Variant::resolve_image(variant)?;
    anyhow::ensure!(
        given.is_empty(),
        "{} {} for tabular variants (dense-mlp, plain-mlp, linear-regression), not {variant}",
        given.join(", "),
        if given.len() == 1 { "is" } else { "are" },
    );
    if let Some(data) = args.data.as_deref().filter(|d| super::tabular::is_csv(d)) {
        anyhow::bail!(
            "--data {} is a CSV file, and {variant} an image variant: train a tabular variant on it \
             (--variant dense-mlp --target COLUMN)",
            data.display()
        );
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Some(processes) = launched_world_size().filter(|&n| n > 1) else {
        if let Some(spec) = tabular_spec(&args)? {
            return super::tabular::train(tabular_request(spec, &args)?);
        }
        let device = parse_device(&args.device)?;
        return train_images(args, device, Rc::new(SingleProcess));
    };
    anyhow::ensure!(
        tabular_spec(&args)?.is_none(),
        "started as one of {processes} processes (mpirun or srun): tabular variants train on one \
         process; run one"
    );
    train_on_ranks(args, processes)
}

/// One rank of a data-parallel run under `mpirun`/`srun`: rank 0 shows the run and writes
/// `--out`; an error on any rank ends every rank (`MPI_Abort`), since the others would wait for
/// it.
#[cfg(feature = "mpi")]
fn train_on_ranks(args: Args, processes: usize) -> anyhow::Result<()> {
    share_cores_between_local_ranks();
    let mpi = Rc::new(densenet_zoo::distributed::Mpi::init()?);
    let (rank, world) = (mpi.rank(), mpi.world_size());
    anyhow::ensure!(
        world == processes,
        "the launcher started {processes} processes, but MPI counts {world}: is the binary linked \
         with the MPI library that mpirun belongs to?"
    );
    if rank > 0 {
        super::quiet();
    }
    let result = rank_device(&args.device, rank).and_then(|device| train_images(args, device, mpi.clone()));
    if let Err(e) = result {
        // One write: the abort of another rank may end this one mid-line.
        let line = format!("error (rank {rank} of {world}): {}\n", crate::message_of(&e));
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
        mpi.abort(1);
    }
    Ok(())
}

#[cfg(not(feature = "mpi"))]
fn train_on_ranks(_args: Args, processes: usize) -> anyhow::Result<()> {
    anyhow::bail!(
        "started as one of {processes} processes (mpirun or srun), but this build has no MPI: \
         build with `--features mpi` to train across processes (each would otherwise train alone \
         into the same --out), or run one process"
    )
}

/// Gives this rank's kernels its share of the machine's cores, unless `RAYON_NUM_THREADS` says
/// otherwise: N ranks on one machine, each with a thread per core, contend for them (the book's
/// net at 32×32 on 2 cores: 2 ranks of 1 thread trained 1.2–1.6× as fast as 2 ranks of 2).
/// Through the variable, which our kernels' thread pool and candle's both read when they start:
/// called before any other thread exists.
#[cfg(feature = "mpi")]
fn share_cores_between_local_ranks() {
    let Some(local) = densenet_zoo::distributed::local_world_size().filter(|&n| n > 1) else {
        return;
    };
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", (cores / local).max(1).to_string());
    }
}

/// The device of rank `rank`: with `auto` or `cuda` on a GPU machine, the GPU of its local
/// rank (one process per GPU); else as `--device` says.
#[cfg(feature = "mpi")]
fn rank_device(name: &str, rank: usize) -> anyhow::Result<candle_core::Device> {
    if matches!(name, "auto" | "cuda") && candle_core::utils::cuda_is_available() {
        let gpu = densenet_zoo::distributed::local_rank().unwrap_or(rank);
        return Ok(parse_device(&format!("cuda:{gpu}"))?);
    }
    Ok(parse_device(name)?)
}

/// Trains an image variant with `collective`'s processes ([`SingleProcess`] for one).
fn train_images(
    args: Args,
    device: candle_core::Device,
    collective: Rc<dyn Collective>,
) -> anyhow::Result<()> {
    refuse_tabular_input(&args)?;
    // Rank 0 writes --out: held from here, before any input is read (resuming, a folder that
    // exists: a missing one has nothing to resume, and is not made).
    let _lock = match collective.rank() == 0 && (!args.resume || args.out.is_dir()) {
        true => Some(train::RunLock::acquire(&args.out)?),
        false => None,
    };
    let config = if args.resume {
        let mut config = saved_config(&args.out)?;
        if let Some(v) = &args.variant {
            anyhow::ensure!(
                Variant::resolve_image(v)?.name == config.spec.name,
                "--resume: {} was trained as {}, not {v}",
                args.out.display(),
                config.spec.name
            );
        }
        if let Some(pool) = args.transition_pool {
            let trained = config.spec.architecture.transition_pool;
            anyhow::ensure!(
                pool == trained,
                "--resume: {} was trained with {} pooling in its transitions; --transition-pool {} \
                 would change the net",
                args.out.display(),
                trained.name(),
                pool.name()
            );
        }
        override_with(&mut config, &args);
        config
    } else {
        let mut spec = Variant::resolve_image(args.variant.as_deref().unwrap_or("d2l"))?;
        if let Some(pool) = args.transition_pool {
            let own = spec.architecture.transition_pool;
            if pool != own && !own.is_avg() {
                say!(
                    "note: --transition-pool {} replaces {}'s own {} pooling",
                    pool.name(),
                    spec.name,
                    own.name()
                );
            }
            spec.architecture.transition_pool = pool;
        }
        let mut config = TrainConfig::new(spec, DEFAULT_DATA);
        override_with(&mut config, &args);
        fit_classes_to_data(&mut config, args.num_classes)?;
        config
    };
    let mut config = config;
    if let Some(file) = &args.labels {
        config.class_names = Some(densenet_zoo::labels::read_file(file)?);
    }
    config
        .recipe
        .validate()
        .map_err(|m| anyhow::anyhow!("the training recipe: {m}"))?;
    let r = &config.recipe;
    say!(
        "training {} on {} at {}×{} for {} epoch{}: {:?} lr {} (schedule {:?}), batch {}, momentum {}{}, \
         weight decay {}, augment {}{}, seed {}, device {:?}{}",
        config.spec.name,
        config.data.display(),
        config.image_size,
        config.image_size,
        r.epochs,
        if r.epochs == 1 { "" } else { "s" },
        r.optimizer,
        r.lr,
        r.schedule,
        r.batch_size,
        r.momentum,
        if r.nesterov { " (Nesterov)" } else { "" },
        r.weight_decay,
        serde_json::to_value(r.augment)?.as_str().unwrap_or("?"),
        if r.label_smoothing > 0.0 {
            format!(", label smoothing {}", r.label_smoothing)
        } else {
            String::new()
        },
        config.seed,
        device,
        if config.memory_efficient {
            ", memory-efficient"
        } else {
            ""
        }
    );
    let world = collective.world_size();
    if world > 1 {
        say!(
            "data-parallel over {world} processes (MPI): each takes {} image(s) of every batch of {}, \
             gradients averaged before each step; {}",
            match (r.batch_size / world, r.batch_size.div_ceil(world)) {
                (lo, hi) if lo == hi => lo.to_string(),
                (lo, hi) => format!("{lo} or {hi}"),
            },
            r.batch_size,
            if config.sync_batch_norm {
                "batch norm over the whole batch (--sync-bn)"
            } else {
                "batch norm per process"
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
    anyhow::ensure!(
        !(args.resume && args.weights.is_some()),
        "--resume continues from OUT/last.safetensors; --weights starts a new run: pass one of them"
    );
    let start = train::Start {
        resume: args.resume,
        weights: args.weights.clone(),
        state_dict: args.state_dict.key(),
    };
    let stop = super::stop_flag();
    let mut shown = Shown::default();
    // Rank 0 alone shows the run; the others only the images their shards left out.
    let mut skips = RankSkips(collective.rank());
    let observer: &mut dyn Observer = if collective.rank() == 0 {
        &mut shown
    } else {
        &mut skips
    };
    let outcome = train::Trainer::with_collective(&config, &args.out, &start, &device, collective, observer)?
        .run(stop, observer)?;
    if let Some(e) = shown.write_error {
        return Err(e);
    }
    match outcome {
        Outcome::Finished => say!(
            "done: {} (metrics.jsonl, last.safetensors, best.safetensors, curves.svg)",
            args.out.display()
        ),
        Outcome::Interrupted => std::process::exit(130),
    }
    Ok(())
}

/// What a rank other than 0 shows of a data-parallel run: the files its shards left out
/// (`--skip-bad-images`), which no other rank sees; rank 0 shows the rest.
struct RankSkips(usize);

impl Observer for RankSkips {
    fn note(&mut self, message: &str) {
        if message.starts_with("skipped ") {
            let _ = super::write_line(
                &mut std::io::stderr().lock(),
                format_args!("note (rank {}): {message}", self.0),
            );
        }
    }
}

/// How a run is shown: notes and a progress bar per epoch on stderr, the book's line per epoch
/// on stdout.
#[derive(Default)]
struct Shown {
    bar: Option<ProgressBar>,
    /// The first failed write to stdout, reported when the run ends (the checkpoints matter
    /// more than the lines).
    write_error: Option<anyhow::Error>,
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

/// Checks that both splits of the data open, and gives a new run's classifier one output per
/// class of the training data, whose class names the checkpoints then carry: `--num-classes` must agree with the data, and without it the
/// variant's number of classes gives way to the data's, with a notice.
fn fit_classes_to_data(config: &mut TrainConfig, num_classes: Option<usize>) -> anyhow::Result<()> {
    let classes = data::open(&config.data, Split::Train)?.classes;
    // The test split too, so that a data set that cannot be used is refused before the run
    // is announced.
    data::open(&config.data, Split::Test)?;
    let spec = &mut config.spec;
    let builtin = spec
        .pretrained_cfg
        .labels
        .as_deref()
        .and_then(densenet_zoo::labels::builtin);
    if let (Some(list), Some(names)) = (spec.pretrained_cfg.labels.as_deref(), builtin) {
        if names.len() == classes.len() && names != classes {
            say!(
                "note: the checkpoint names {}'s classes ({}), not {list}'s ({}); IDX files are read \
                 as Fashion-MNIST only when their folder's path says \"fashion\"",
                config.data.display(),
                shown(&classes),
                shown(&names)
            );
        }
    }
    match num_classes {
        Some(n) if n != classes.len() => anyhow::bail!(
            "--num-classes {n} disagrees with the data: {} has {} classes ({})",
            config.data.display(),
            classes.len(),
            shown(&classes)
        ),
        _ if classes.len() != spec.architecture.num_classes => {
            say!(
                "note: {} classes from {} ({}); {} has {} outputs, its classifier gets {}",
                classes.len(),
                config.data.display(),
                shown(&classes),
                spec.name,
                spec.architecture.num_classes,
                classes.len()
            );
            spec.architecture.num_classes = classes.len();
            spec.pretrained_cfg.labels = None;
        }
        _ => {}
    }
    Ok(())
}

/// At most the first eight names, then how many more.
fn shown(names: &[String]) -> String {
    let mut out = names.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 8 {
        out.push_str(&format!(", ... {} more", names.len() - 8));
    }
    out
}

/// Applies the recipe flags that image and tabular runs share, where given.
fn override_recipe(recipe: &mut densenet_zoo::spec::Recipe, args: &Args) {
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = args.$field.clone() { recipe.$field = v; } )* };
    }
    set!(
        epochs,
        batch_size,
        lr,
        momentum,
        nesterov,
        weight_decay,
        schedule,
        optimizer
    );
}

/// Applies the flags that were given; a new image size also becomes the saved spec's input
/// size and preprocessing, so that inference with the checkpoint needs no flag.
fn override_with(config: &mut TrainConfig, args: &Args) {
    macro_rules! set {
        ($target:expr, $($field:ident),*) => { $( if let Some(v) = args.$field.clone() { $target.$field = v; } )* };
    }
    set!(
        config,
        data,
        warmup_epochs,
        seed,
        image_size,
        memory_efficient,
        sync_batch_norm,
        workers,
        skip_bad_images
    );
    set!(config.recipe, augment, label_smoothing);
    override_recipe(&mut config.recipe, args);
    if let Some(level) = &args.freeze {
        config.freeze = Some(level.clone());
    }
    config.spec.set_input_size(config.image_size);
    // Recorded absolute, so that --resume works from another folder.
    if let Ok(data) = std::path::absolute(&config.data) {
        config.data = data;
    }
}
