//! What a run is configured by, where its weights start from, and the checks that refuse a
//! configuration that cannot run, each once.

use std::path::PathBuf;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::Observer;
use crate::checkpoint::StateDictKey;
use crate::data::{Dataset, Shard, Transform};
use crate::error::{Error, Result};
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
    /// storing them ([`DenseNet::with_memory_efficient`](crate::DenseNet::with_memory_efficient)):
    /// less memory, same numbers.
    #[serde(default)]
    pub memory_efficient: bool,
    /// Data-parallel runs: every batch norm takes the statistics of the whole batch across
    /// the ranks ([`DenseNet::with_sync_batch_norm`](crate::DenseNet::with_sync_batch_norm)),
    /// as PyTorch's `SyncBatchNorm`, instead of each rank's part. Nothing changes with one
    /// process. CPU only.
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
    /// rest ([`DenseNet::with_frozen`](crate::DenseNet::with_frozen)); needs starting weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze: Option<String>,
    /// The names of the data's classes, in the data's order, recorded in the checkpoints
    /// instead of the data's own (an ImageFolder's folder names, WordNet ids say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
    /// The classifier's outputs, when the caller insists on a number: a new run's data must
    /// then have that many classes. `None`: one output per class of the training data, the
    /// spec's own number giving way to it (noted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
}

impl TrainConfig {
    /// A run of `spec` on the data set folder `data`, with the variant's own recipe and input
    /// size, seed 0, no warmup, not memory-efficient, one output per class of the data; change
    /// the fields as needed.
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
            num_classes: None,
            spec,
        }
    }

    /// This run's configuration with `spec`'s net in place of its own, keeping what the run
    /// fixed: its number of classes, input size and class-name list. For a resume given a
    /// variant: a different net is then refused by [`Trainer::new`](super::Trainer::new), naming
    /// what differs.
    pub fn with_variant(mut self, mut spec: VariantSpec) -> Self {
        spec.architecture.num_classes = self.spec.architecture.num_classes;
        spec.pretrained_cfg.labels = self.spec.pretrained_cfg.labels.clone();
        spec.set_input_size(self.image_size);
        self.spec = spec;
        self
    }

    /// The configuration a run trains with: checked, every rule once, and with the spec at the
    /// run's input size (its built-in class-name list dropped when it does not fit the
    /// classifier). `world_size` processes train it on `device`; `resume` or `weights` say
    /// whether it starts from loaded weights.
    ///
    /// # Errors
    /// [`Error::Training`] for a recipe that cannot run; [`Error::Spec`] for an input size the
    /// net cannot take; [`Error::Setting`] naming the field: a batch too small to share between
    /// the processes, synchronised batch norm off the CPU, freezing new weights, a warmup as
    /// long as the run.
    pub fn checked(&self, start_loads_weights: bool, world_size: usize, device: &Device) -> Result<Self> {
        self.recipe.validate().map_err(|e| Error::Training(e.message))?;
        let mut config = self.clone();
        config.spec.set_input_size(config.image_size);
        let labels = config.spec.pretrained_cfg.labels.as_deref();
        if labels.and_then(crate::spec::labels::builtin).map(|l| l.len())
            != Some(config.spec.architecture.num_classes)
        {
            config.spec.pretrained_cfg.labels = None;
        }
        let spec = &config.spec;
        spec.architecture
            .check_input_size(config.image_size)
            .map_err(|e| Error::Spec {
                origin: spec.name.clone(),
                message: e.message,
            })?;
        config.check_world(world_size, device)?;
        if let (Some(level), false) = (&config.freeze, start_loads_weights) {
            return Err(setting(
                "freeze",
                level,
                "keeps what was loaded as it is, and this run starts from new weights: give it \
                 weights to start from",
            ));
        }
        if config.warmup_epochs >= config.recipe.epochs {
            return Err(setting(
                "warmup_epochs",
                config.warmup_epochs,
                format!(
                    "leaves no epoch of the {} at the full learning rate: warm up for fewer epochs \
                     than the run has",
                    config.recipe.epochs
                ),
            ));
        }
        Ok(config)
    }

    /// The batch's rules for `world_size` processes: each part holds two values per channel of
    /// the last block's maps for batch norm, or with synchronised batch norm, an image each and
    /// two values in the whole batch; synchronised batch norm runs on the CPU.
    fn check_world(&self, world_size: usize, device: &Device) -> Result<()> {
        let (side, batch) = (self.last_map_side(), self.recipe.batch_size);
        let (smallest_part, _) = Shard::part_sizes(batch, world_size);
        let sync = world_size > 1 && self.sync_batch_norm;
        if sync && smallest_part == 0 {
            return Err(setting(
                "batch_size",
                batch,
                format!(
                    "over {world_size} processes leaves some with no image per batch: use a batch \
                     of at least {world_size}"
                ),
            ));
        }
        if world_size > 1 && !sync && smallest_part * side * side < 2 {
            return Err(setting(
                "batch_size",
                batch,
                format!(
                    "over {world_size} processes leaves some with {smallest_part} image(s) per batch, \
                     too few for batch norm on the last block's {side}×{side} maps: use a batch of at \
                     least {}",
                    world_size * 2usize.div_ceil(side * side)
                ),
            ));
        }
        if sync && !device.is_cpu() {
            return Err(setting(
                "sync_batch_norm",
                "",
                format!(
                    "trains on the CPU only for now, not on {:?}: leave it out for per-process batch \
                     norm",
                    device.location()
                ),
            ));
        }
        Ok(())
    }

    /// A new run's classifier gets one output per class of `data` (the training split), whose
    /// names the checkpoints carry ([`TrainConfig::class_names`] where given): the spec's own
    /// number gives way to the data's, noted, unless [`TrainConfig::num_classes`] insists on
    /// one, which must then agree. A resumed run's classifier is fixed: its classes must be the
    /// data's. Returns the names of the classes.
    ///
    /// # Errors
    /// [`Error::Setting`] naming `num_classes` or `class_names` when they disagree with the
    /// data; [`Error::Training`] when a resumed run's classifier does not fit the data.
    pub(super) fn fit_classes(
        &mut self,
        data: &Dataset,
        resume: bool,
        observer: &mut dyn Observer,
    ) -> Result<Vec<String>> {
        let found = &data.classes;
        let spec = &mut self.spec;
        if !resume {
            let builtin = spec
                .pretrained_cfg
                .labels
                .as_deref()
                .and_then(crate::spec::labels::builtin);
            if let (Some(list), Some(names), None) =
                (spec.pretrained_cfg.labels.as_deref(), builtin, &self.class_names)
            {
                if names.len() == found.len() && names != *found {
                    observer.note(&format!(
                        "the checkpoint names {}'s classes ({}), not {list}'s ({}); IDX files are read \
                         as Fashion-MNIST only when their folder's path says \"fashion\"",
                        self.data.display(),
                        shown(found),
                        shown(&names)
                    ));
                }
            }
            match self.num_classes {
                Some(n) if n != found.len() => {
                    return Err(setting(
                        "num_classes",
                        n,
                        format!(
                            "disagrees with the data: {} has {} classes ({})",
                            self.data.display(),
                            found.len(),
                            shown(found)
                        ),
                    ))
                }
                _ if found.len() != spec.architecture.num_classes => {
                    observer.note(&format!(
                        "{} classes from {} ({}); {} has {} outputs, its classifier gets {}",
                        found.len(),
                        self.data.display(),
                        shown(found),
                        spec.name,
                        spec.architecture.num_classes,
                        found.len()
                    ));
                    spec.architecture.num_classes = found.len();
                    spec.pretrained_cfg.labels = None;
                }
                _ => {}
            }
        }
        // The data must have exactly one class per classifier output: fewer would train
        // outputs that no image teaches and label them with names the data does not have.
        let max_label = data.labels.iter().copied().max().unwrap_or(0) as usize;
        if found.len() != spec.architecture.num_classes || max_label >= spec.architecture.num_classes {
            return Err(Error::Training(format!(
                "{} has {} classes but {} has {} outputs: the classifier of a resumed run cannot change",
                self.data.display(),
                found.len(),
                spec.name,
                spec.architecture.num_classes,
            )));
        }
        match &self.class_names {
            Some(names) if names.len() != found.len() => Err(setting(
                "class_names",
                "",
                format!(
                    "lists {} names, but {} has {} classes ({})",
                    names.len(),
                    self.data.display(),
                    found.len(),
                    shown(found)
                ),
            )),
            Some(names) => Ok(names.clone()),
            None => Ok(found.clone()),
        }
    }

    /// The side of the last dense block's maps at the run's input size (1 when it cannot be
    /// computed, which [`TrainConfig::checked`] refuses first).
    pub(super) fn last_map_side(&self) -> usize {
        self.spec
            .architecture
            .stage_sizes(self.image_size)
            .ok()
            .and_then(|s| s.last().copied())
            .unwrap_or(1)
    }

    /// The images as training sees them: the recipe's augmentation at the run's input size,
    /// with the spec's normalisation; without a resizing crop, image files are resized to the
    /// input size (their shorter side) and centre-cropped first.
    pub(super) fn train_transform(&self) -> Transform {
        Transform {
            resize: self.image_size,
            augment: self.recipe.augment,
            ..self.eval_transform()
        }
    }

    /// The images as evaluation sees them: the spec's preprocessing scaled to the run's input
    /// size (Resize(256) and CenterCrop(224) for ImageNet's nets at 224).
    pub(super) fn eval_transform(&self) -> Transform {
        let mut spec = self.spec.clone();
        spec.set_input_size(self.image_size);
        crate::data::eval_transform(&spec)
    }
}

/// An [`Error::Setting`] of `field` with `value`.
fn setting(field: &str, value: impl ToString, message: impl Into<String>) -> Error {
    Error::Setting {
        field: field.to_string(),
        value: value.to_string(),
        message: message.into(),
    }
}

/// At most the first eight names, then how many more.
fn shown(names: &[String]) -> String {
    let mut out = names.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 8 {
        out.push_str(&format!(", ... {} more", names.len() - 8));
    }
    out
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
