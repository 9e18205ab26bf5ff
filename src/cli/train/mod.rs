//! `densenet-zoo train`: train a variant on a data set, timm-style, with the book's plot.

use std::path::PathBuf;
use std::rc::Rc;

use densenet_zoo::data::{Augment, DEFAULT_DATA};
use densenet_zoo::spec::TransitionPool;
use densenet_zoo::tools::device::parse_device;
use densenet_zoo::train::distributed::{launched_world_size, Collective, SingleProcess};
use densenet_zoo::train::{self, saved_config, Observer, OptimizerKind, Outcome, ScheduleKind, TrainConfig};
use densenet_zoo::Variant;

mod ranks;
mod show;
mod tabular;

use show::{RankSkips, Shown};
use tabular::{refuse_tabular_input, tabular_request, tabular_spec};

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
    ranks::train_on_ranks(args, processes)
}

/// Trains an image variant with `collective`'s processes ([`SingleProcess`] for one).
fn train_images(
    args: Args,
    device: candle_core::Device,
    collective: Rc<dyn Collective>,
) -> anyhow::Result<()> {
    refuse_tabular_input(&args)?;
    anyhow::ensure!(
        !(args.resume && args.weights.is_some()),
        "--resume continues from OUT/last.safetensors; --weights starts a new run: pass one of them"
    );
    anyhow::ensure!(
        args.weights.is_some() || (!args.state_dict.use_ema && args.state_dict.weights_key.is_none()),
        "--use-ema and --weights-key choose what --weights reads: pass --weights"
    );
    // Rank 0 writes --out: held from here, before any input is read (resuming, a folder that
    // exists: a missing one has nothing to resume, and is not made).
    let rank = collective.rank();
    let _lock = match rank == 0 && (!args.resume || args.out.is_dir()) {
        true => Some(train::RunLock::acquire(&args.out)?),
        false => None,
    };
    let config = image_config(&args)?;
    let start = train::Start {
        resume: args.resume,
        weights: args.weights.clone(),
        state_dict: args.state_dict.key(),
    };
    let stop = super::stop_flag();
    let mut shown = Shown::default();
    // Rank 0 alone shows the run; the others only the images their shards left out.
    let mut skips = RankSkips(rank);
    let observer: &mut dyn Observer = match rank {
        0 => &mut shown,
        _ => &mut skips,
    };
    let world = collective.world_size();
    let mut trainer =
        match train::Trainer::with_collective(&config, &args.out, &start, &device, collective, observer) {
            // The names came from the file of --labels: it is named.
            Err(densenet_zoo::Error::Setting { field, message, .. }) if field == "class_names" => {
                let file = args.labels.as_deref().unwrap_or(std::path::Path::new("?"));
                anyhow::bail!("--labels {}: {message}", file.display())
            }
            trainer => trainer?,
        };
    if rank == 0 {
        show::announce(trainer.config(), &device, world);
    }
    let outcome = trainer.run(stop, observer)?;
    // The folder is let go before the process ends, whichever way.
    drop(trainer);
    drop(_lock);
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

/// The run `args` ask for: a new one of `--variant`, or (`--resume`) the run in `--out` as it
/// was saved; the flags given override either.
fn image_config(args: &Args) -> anyhow::Result<TrainConfig> {
    let mut config = match args.resume {
        true => {
            let config = saved_config(&args.out)?;
            match &args.variant {
                // Another net than the run's is refused by the library, naming what differs.
                Some(v) => config.with_variant(Variant::resolve_image(v)?),
                None => config,
            }
        }
        false => {
            let spec = Variant::resolve_image(args.variant.as_deref().unwrap_or("d2l"))?;
            let mut config = TrainConfig::new(spec, DEFAULT_DATA);
            config.num_classes = args.num_classes;
            config
        }
    };
    if let Some(pool) = args.transition_pool {
        let own = config.spec.architecture.transition_pool;
        if !args.resume && pool != own && !own.is_avg() {
            say!(
                "note: --transition-pool {} replaces {}'s own {} pooling",
                pool.name(),
                config.spec.name,
                own.name()
            );
        }
        config.spec.architecture.transition_pool = pool;
    }
    override_with(&mut config, args);
    if let Some(file) = &args.labels {
        config.class_names = Some(densenet_zoo::spec::labels::read_file(file)?);
    }
    Ok(config)
}

/// Applies the recipe flags that image and tabular runs share, where given.
pub(super) fn override_recipe(recipe: &mut densenet_zoo::spec::Recipe, args: &Args) {
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
