//! The frozen first levels of a DenseNet being fine-tuned: everything up to and including one
//! `feature_info` level kept exactly as loaded, as timm's `freeze` with `FrozenBatchNorm2d`
//! keeps it. Their weights are detached (no gradient, so no update and no weight decay) and
//! their batch norms use the running statistics, never updating them, in training too; the
//! backward pass stops where they end.

use candle_core::Tensor;

use super::{Stage, Stem};
use crate::error::Result;
use crate::ops::{BatchNorm2d, Mode};

/// The stem, the stages and (when the last level is frozen) `norm5` of a model, detached, and
/// run in [`Mode::Inference`] whatever the model's mode.
#[derive(Debug, Clone)]
pub(super) struct FrozenPrefix {
    /// The last frozen `feature_info` level.
    pub level: usize,
    stem: Stem,
    /// The first `level` stages (none when only the stem is frozen).
    stages: Vec<Stage>,
    /// `norm5` and its ReLU, when every block is frozen.
    norm5: Option<BatchNorm2d>,
}

impl FrozenPrefix {
    /// The levels 0..=`level` of a model of `stages` (level `k` ≥ 1 takes the first `k`
    /// stages; the last level takes `norm5` too).
    pub fn new(level: usize, stem: &Stem, stages: &[Stage], norm5: &BatchNorm2d) -> Self {
        Self {
            level,
            stem: stem.detached(),
            stages: stages[..level].iter().map(Stage::detached).collect(),
            norm5: (level == stages.len()).then(|| norm5.detached()),
        }
    }

    /// How many of the model's stages this holds: the trainable ones start after them.
    pub fn stages(&self) -> usize {
        self.stages.len()
    }

    /// True when `norm5` is frozen, and [`FrozenPrefix::forward`]'s output is the final map.
    pub fn ends_with_norm5(&self) -> bool {
        self.norm5.is_some()
    }

    /// (N, C, H, W) images to the frozen part's output, with no autograd graph.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.stem.forward(&x.detach(), Mode::Inference)?;
        for stage in &self.stages {
            x = stage.forward(&x, Mode::Inference)?;
        }
        if let Some(norm5) = &self.norm5 {
            x = norm5.forward_relu(&x, Mode::Inference)?;
        }
        Ok(x)
    }

    /// True for a tensor of the frozen part, by its checkpoint name: `features.conv0`,
    /// `features.norm0`, the first `level` dense blocks and the transitions between them, and
    /// `features.norm5` when it is frozen.
    pub fn holds(&self, name: &str) -> bool {
        let Some(rest) = name.strip_prefix("features.") else {
            return false;
        };
        let numbered = |prefix: &str| {
            rest.strip_prefix(prefix)
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse::<usize>().ok())
        };
        let blocks = self.stages.len();
        rest.starts_with("conv0.")
            || rest.starts_with("norm0.")
            || (self.norm5.is_some() && rest.starts_with("norm5."))
            || numbered("denseblock").is_some_and(|b| b <= blocks)
            || numbered("transition").is_some_and(|t| t < blocks)
    }
}
