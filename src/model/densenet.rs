//! The DenseNet: one generic model for every variant spec.

use std::sync::Arc;

use candle_core::{Module, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

use super::freeze::FrozenPrefix;
use super::{DenseBlock, Stem, Transition};
use crate::error::{Error, Result};
use crate::ops::{self, BatchNorm2d, BatchNormGroup, Mode};
use crate::spec::VariantSpec;

/// One level of [`DenseNet::features_only`], as timm's `feature_info` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FeatureInfo {
    /// The level's name: `stem`, `block1`, `block2`, ...
    pub name: String,
    /// Channels of the level's feature map.
    pub channels: usize,
    /// How many input pixels one feature-map pixel spans, per side.
    pub reduction: usize,
    /// The checkpoint module the level is taken after, as timm names it.
    pub module: String,
}

/// One stage of the model, as the [`StagePlan`](crate::plan::StagePlan) says: the transition before a dense block
/// (none before the first), then the block.
#[derive(Debug, Clone)]
pub struct Stage {
    /// The transition, `features.transition{n}`.
    pub transition: Option<Transition>,
    /// The dense block, `features.denseblock{n}`.
    pub block: DenseBlock,
}

impl Stage {
    /// (N, C, H, W) → (N, C', H', W'): the transition (if any), then the block, in `mode`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = match &self.transition {
            Some(t) => t.forward(x, mode)?,
            None => x.clone(),
        };
        Ok(self.block.forward(&x, mode)?)
    }

    /// Calls `f` on each of its batch norms, in checkpoint order.
    pub fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        if let Some(transition) = &mut self.transition {
            transition.for_each_batch_norm(f);
        }
        self.block.for_each_batch_norm(f);
    }

    /// The same stage on detached weights, for inference.
    pub fn detached(&self) -> Self {
        Self {
            transition: self.transition.as_ref().map(Transition::detached),
            block: self.block.detached(),
        }
    }
}

/// A DenseNet built from a [`VariantSpec`], with torchvision's tensor names:
/// `features.conv0`, `features.norm0`, `features.denseblock{b}.denselayer{l}.{norm1,conv1,norm2,conv2}`,
/// `features.transition{t}.{norm,conv}`, `features.norm5` and `classifier`.
///
/// Input (N, C, H, W) with C = `spec.in_channels`; output (N, `spec.num_classes`) logits.
///
/// A model built on a `VarMap` trains, and evaluates in [`Mode::Eval`] (gradients still
/// flow); [`DenseNet::for_inference`] gives the copy that evaluates in [`Mode::Inference`], on
/// the fused kernels with no autograd graph, as models loaded from a checkpoint do.
#[derive(Debug, Clone)]
pub struct DenseNet {
    spec: VariantSpec,
    stem: Stem,
    stages: Vec<Stage>,
    norm5: BatchNorm2d,
    classifier: Option<Linear>,
    feature_info: Vec<FeatureInfo>,
    /// Evaluation runs in [`Mode::Inference`] (else [`Mode::Eval`]).
    inference: bool,
    /// The first levels, kept as loaded ([`DenseNet::with_frozen`]).
    frozen: Option<FrozenPrefix>,
}

impl DenseNet {
    /// Builds any variant from its spec. Tensors come from `vb`: a checkpoint to load, or a
    /// `VarMap` to train, where new tensors get torchvision's initialisation.
    pub fn new(spec: &VariantSpec, vb: VarBuilder) -> Result<Self> {
        spec.validate().map_err(|message| Error::Spec {
            origin: spec.name.clone(),
            message: message.to_string(),
        })?;
        let features = vb.pp("features");
        let stem = Stem::new(
            features.clone(),
            spec.architecture.stem,
            spec.architecture.in_channels,
            spec.architecture.stem_features,
            spec.architecture.conv_bias,
        )?;
        let stem_reduction = stem.unpooled_reduction();
        let mut feature_info = vec![FeatureInfo {
            name: "stem".into(),
            channels: spec.architecture.stem_features,
            reduction: stem_reduction,
            module: if stem_reduction == 2 {
                "features.norm0"
            } else {
                "features.conv0"
            }
            .into(),
        }];
        let plan = spec.architecture.stages();
        let mut stages = Vec::with_capacity(plan.len());
        for p in &plan {
            let transition = match p.transition {
                Some(t) => Some(Transition::new(
                    features.pp(format!("transition{}", t.number)),
                    t.in_channels,
                    t.out_channels,
                    spec.architecture.conv_bias,
                    spec.architecture.transition_pool,
                )?),
                None => None,
            };
            let block = DenseBlock::new(
                features.pp(format!("denseblock{}", p.block)),
                spec.architecture.layer,
                p.layers,
                p.in_channels,
                spec.architecture.growth_rate,
                spec.architecture.conv_bias,
                spec.architecture.drop_rate,
            )?;
            feature_info.push(FeatureInfo {
                name: p.level_name(),
                channels: p.out_channels,
                reduction: p.reduction,
                module: if p.block == plan.len() {
                    "features.norm5".into()
                } else {
                    format!("features.denseblock{}", p.block)
                },
            });
            stages.push(Stage { transition, block });
        }
        let channels = spec.architecture.num_features();
        let norm5 = BatchNorm2d::new(features.pp("norm5"), channels)?;
        let classifier = linear(vb.pp("classifier"), channels, spec.architecture.num_classes)?;
        Ok(Self {
            spec: spec.clone(),
            stem,
            stages,
            norm5,
            classifier: Some(classifier),
            feature_info,
            inference: false,
            frozen: None,
        })
    }

    /// The model for inference: every weight detached once, evaluation in [`Mode::Inference`],
    /// and inputs detached, so no forward pass records an autograd graph and no gradient comes
    /// back. `forward_t(x, true)` still uses batch statistics and updates the running ones.
    ///
    /// What the inference kernels read is prepared here, once: each batch norm's scale and
    /// shift from its running statistics, and the 3×3 weights of the dense layers stacked by
    /// tap (about 8 MiB more for DenseNet-121). The copy is a snapshot: weights trained after this
    /// call reach it only through a new call, as the trainer's evaluation makes one per
    /// evaluation. Fine-tuning and Grad-CAM read the plain weights, which the copy keeps.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use densenet_zoo::{ops::Mode, DenseNet, VariantSpec};
    ///
    /// let varmap = VarMap::new();
    /// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    /// let model = DenseNet::new(&VariantSpec::resolve("d2l")?, vb)?;
    /// assert_eq!(model.eval_mode(), Mode::Eval);
    /// let inference = model.for_inference();
    /// assert_eq!(inference.eval_mode(), Mode::Inference);
    /// let x = Tensor::ones((1, 1, 96, 96), DType::F32, &Device::Cpu)?;
    /// assert!(!inference.forward_t(&x, false)?.track_op());
    /// # Ok::<(), densenet_zoo::Error>(())
    /// ```
    pub fn for_inference(&self) -> Self {
        Self {
            spec: self.spec.clone(),
            stem: self.stem.detached(),
            stages: self.stages.iter().map(Stage::detached).collect(),
            norm5: self.norm5.detached(),
            classifier: self
                .classifier
                .as_ref()
                .map(|c| Linear::new(c.weight().detach(), c.bias().map(Tensor::detach))),
            feature_info: self.feature_info.clone(),
            inference: true,
            frozen: None,
        }
    }

    /// Freezes everything up to and including the [`DenseNet::feature_info`] level `level`
    /// (`stem`, `block1` ... `blockN`, or `features` for the whole backbone, the last level),
    /// for fine-tuning, as timm's `freeze` with `FrozenBatchNorm2d`: those weights get no
    /// gradient (so an optimiser leaves them, weight decay included) and their batch norms
    /// use the running statistics in training too, never updating them; the backward pass
    /// stops where they end, which saves its time and memory. `None` unfreezes. Only what
    /// the forward pass trains changes: [`DenseNet::for_inference`] is as before.
    ///
    /// # Errors
    /// [`Error::Freeze`] for a level the model does not have.
    pub fn with_frozen(mut self, level: Option<&str>) -> Result<Self> {
        self.frozen = match level {
            None => None,
            Some(name) => {
                let index = self.freeze_index(name)?;
                Some(FrozenPrefix::new(index, &self.stem, &self.stages, &self.norm5))
            }
        };
        Ok(self)
    }

    /// The [`DenseNet::feature_info`] index that freezing up to `name` ends at: a level's
    /// name, or `features` for the last.
    ///
    /// # Errors
    /// [`Error::Freeze`] for a level the model does not have, listing those it has.
    pub(crate) fn freeze_index(&self, name: &str) -> Result<usize> {
        if name == "features" {
            return Ok(self.feature_info.len() - 1);
        }
        self.feature_info
            .iter()
            .position(|l| l.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.feature_info.iter().map(|l| l.name.as_str()).collect();
                Error::Freeze {
                    variant: self.spec.name.clone(),
                    message: format!(
                        "no level `{name}`: the levels are {}, and features (the whole backbone)",
                        names.join(", ")
                    ),
                }
            })
    }

    /// The last frozen [`DenseNet::feature_info`] level, if any ([`DenseNet::with_frozen`]).
    pub fn frozen_level(&self) -> Option<usize> {
        self.frozen.as_ref().map(|f| f.level)
    }

    /// True for a tensor that [`DenseNet::with_frozen`] keeps as loaded, by its checkpoint
    /// name (`features.denseblock1.denselayer1.conv1.weight`, ...).
    pub fn is_frozen(&self, name: &str) -> bool {
        self.frozen.as_ref().is_some_and(|f| f.holds(name))
    }

    /// The mode `forward_t(x, false)` runs in: [`Mode::Inference`] after
    /// [`DenseNet::for_inference`], else [`Mode::Eval`].
    pub fn eval_mode(&self) -> Mode {
        if self.inference {
            Mode::Inference
        } else {
            Mode::Eval
        }
    }

    /// [`Mode::Train`] for `train`, else [`DenseNet::eval_mode`].
    fn mode(&self, train: bool) -> Mode {
        if train {
            Mode::Train
        } else {
            self.eval_mode()
        }
    }

    /// Memory-efficient training, as torchvision's `memory_efficient=True`: each dense block
    /// stores its feature maps once and recomputes every layer's first batch norm and ReLU in
    /// the backward pass, so training memory grows linearly with depth instead of
    /// quadratically. Outputs, running statistics and gradients are bit-identical to the
    /// default. CPU only (f32, f64); on other devices it changes nothing.
    pub fn with_memory_efficient(mut self, on: bool) -> Self {
        for stage in &mut self.stages {
            stage.block.set_memory_efficient(on);
        }
        self
    }

    /// Synchronised batch norm, as PyTorch's `SyncBatchNorm.convert_sync_batchnorm`: in
    /// training every batch norm takes the statistics of the whole batch that the processes of
    /// `group` hold parts of (see [`BatchNorm2d::set_group`]); `None` restores each process's
    /// own. Training with a group runs on the CPU kernels only (f32, f64 on the CPU).
    pub fn with_sync_batch_norm(mut self, group: Option<Arc<dyn BatchNormGroup>>) -> Self {
        let mut set = |norm: &mut BatchNorm2d| norm.set_group(group.clone());
        self.stem.for_each_batch_norm(&mut set);
        for stage in &mut self.stages {
            stage.for_each_batch_norm(&mut set);
        }
        set(&mut self.norm5);
        self
    }

    /// Runs `f`, a pass through the model (forward, backward, an optimiser step), where its
    /// ops run best: on rayon's workers ([`ops::on_workers`]), or on this thread when its
    /// batch norms are synchronised in training ([`DenseNet::with_sync_batch_norm`]), since
    /// MPI communicates only from the thread that started it. Inference normalises with the
    /// running statistics and communicates nothing.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self.norm5.group().is_some() && !self.inference {
            true => f(),
            false => ops::on_workers(f),
        }
    }

    /// The spec the model was built from.
    pub fn spec(&self) -> &VariantSpec {
        &self.spec
    }

    /// Logits (N, classes) for images (N, C, H, W); `train` uses batch statistics in every
    /// batch norm and updates their running estimates, as PyTorch's `model.train()` does.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.forward_features(x, train)?;
        self.forward_head(&features, false)
    }

    /// The final feature map (N, F, H/32, W/32 for ImageNet nets), taken **after** `norm5` and
    /// its ReLU, as timm's `forward_features` returns it (torchvision's `.features` stops
    /// before that ReLU).
    /// With frozen levels ([`DenseNet::with_frozen`]), those run on their running statistics
    /// in training too.
    pub fn forward_features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.run(|| self.forward_features_here(x, train))
    }

    fn forward_features_here(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mode = self.mode(train);
        let x = self.checked_input(x)?;
        let (mut x, first) = match &self.frozen {
            Some(frozen) if frozen.ends_with_norm5() => return frozen.forward(&x),
            Some(frozen) => (frozen.forward(&x)?, frozen.stages()),
            None => (self.stem.forward(&x, mode)?, 0),
        };
        for stage in &self.stages[first..] {
            x = stage.forward(&x, mode)?;
        }
        Ok(self.norm5.forward_relu(&x, mode)?)
    }

    /// From a final feature map (N, F, h, w): the pooled embedding (N, F) when `pre_logits`,
    /// else the logits (N, classes). Pooling is global, so any spatial size works.
    pub fn forward_head(&self, features: &Tensor, pre_logits: bool) -> Result<Tensor> {
        let pooled = ops::global_avg_pool(features)?;
        match &self.classifier {
            Some(classifier) if !pre_logits => Ok(classifier.forward(&pooled)?),
            _ => Ok(pooled),
        }
    }

    /// Replaces the classifier with a new one of `num_classes` outputs, taken or created under
    /// `vb.pp("classifier")`, as timm's `reset_classifier`; 0 removes it, and the head then
    /// returns the pooled embedding (N, F).
    pub fn reset_classifier(&mut self, num_classes: usize, vb: VarBuilder) -> Result<()> {
        self.classifier = if num_classes == 0 {
            None
        } else {
            Some(linear(
                vb.pp("classifier"),
                self.spec.architecture.num_features(),
                num_classes,
            )?)
        };
        self.spec.architecture.num_classes = num_classes;
        Ok(())
    }

    /// Multi-scale feature maps, one per entry of [`DenseNet::feature_info`]: the stem before
    /// its pool, then every dense block's output (the last one after `norm5` and ReLU).
    pub fn features_only(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        self.run(|| {
            let mut levels = Vec::with_capacity(self.feature_info.len());
            self.walk_levels(x, self.mode(train), self.stages.len(), |level| levels.push(level))?;
            Ok(levels)
        })
    }

    /// Level `level`'s map of [`DenseNet::features_only`] for images `x`, without computing
    /// the later levels.
    pub(crate) fn forward_to_level(&self, x: &Tensor, level: usize, train: bool) -> Result<Tensor> {
        let mut last = None;
        self.walk_levels(x, self.mode(train), level, |map| last = Some(map))?;
        Ok(last.expect("the stem level is always reached"))
    }

    /// The `features_only` levels 0..=`last` of `x`, each handed to `each` as it is made.
    fn walk_levels(&self, x: &Tensor, mode: Mode, last: usize, mut each: impl FnMut(Tensor)) -> Result<()> {
        let stem = self.stem.forward_unpooled(&self.checked_input(x)?, mode)?;
        let mut x = self.stem.pool(&stem)?;
        each(stem);
        for (i, stage) in self.stages.iter().enumerate().take(last) {
            x = stage.forward(&x, mode)?;
            if i + 1 == self.stages.len() {
                each(self.norm5.forward_relu(&x, mode)?);
            } else {
                each(x.clone());
            }
        }
        Ok(())
    }

    /// Logits (N, classes) from level `level`'s map (as [`DenseNet::features_only`] gives
    /// it): the rest of the net and the head, in `mode`.
    pub(crate) fn forward_from_level(&self, map: &Tensor, level: usize, mode: Mode) -> Result<Tensor> {
        let features = if level == self.stages.len() {
            map.clone()
        } else {
            let mut x = if level == 0 {
                self.stem.pool(map)?
            } else {
                map.clone()
            };
            for stage in &self.stages[level..] {
                x = stage.forward(&x, mode)?;
            }
            self.norm5.forward_relu(&x, mode)?
        };
        self.forward_head(&features, false)
    }

    /// Channels and reduction of each [`DenseNet::features_only`] level, built with the layers;
    /// for DenseNet-121: 64@2, 256@4, 512@8, 1024@16, 1024@32.
    pub fn feature_info(&self) -> &[FeatureInfo] {
        &self.feature_info
    }

    /// `x`, detached for inference; refused when it is not (N, in_channels, H, W) with H and W
    /// large enough.
    fn checked_input(&self, x: &Tensor) -> Result<Tensor> {
        let bad = |message: String| Error::BadInput {
            variant: self.spec.name.clone(),
            found: x.dims().to_vec(),
            message,
        };
        let (n, c, h, w) = x
            .dims4()
            .map_err(|_| bad("expected (batch, channels, height, width)".into()))?;
        if n == 0 {
            return Err(bad("the batch holds no image".into()));
        }
        if c != self.spec.architecture.in_channels {
            return Err(bad(format!(
                "expected {} input channels, found {c}",
                self.spec.architecture.in_channels
            )));
        }
        self.spec
            .architecture
            .check_input_size(h.min(w))
            .map_err(|e| bad(e.message))?;
        Ok(if self.inference { x.detach() } else { x.clone() })
    }

    /// The stem, `features.conv0` (and `norm0`, its ReLU and pool for the ImageNet stem).
    pub fn stem(&self) -> &Stem {
        &self.stem
    }

    /// `features.norm5`, the batch norm after the last block; [`DenseNet::forward_features`]
    /// applies it with its ReLU ([`BatchNorm2d::forward_relu`]).
    pub fn norm5(&self) -> &BatchNorm2d {
        &self.norm5
    }

    /// The classifier, `classifier` (weight (classes, F), bias (classes,)); `None` after
    /// [`DenseNet::reset_classifier`] to 0 classes. timm's `get_classifier`.
    pub fn classifier(&self) -> Option<&Linear> {
        self.classifier.as_ref()
    }

    /// The stages in order, as [`Architecture::stages`](crate::spec::Architecture::stages) plans them.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }
}

/// The classifier, with torchvision's initialisation: uniform ±1/√in weights, zero bias.
fn linear(vb: VarBuilder, in_features: usize, out_features: usize) -> candle_core::Result<Linear> {
    let bound = 1.0 / (in_features as f64).sqrt();
    let weight = vb.get_with_hints(
        (out_features, in_features),
        "weight",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    let bias = vb.get_with_hints(out_features, "bias", Init::Const(0.0))?;
    Ok(Linear::new(weight, Some(bias)))
}
