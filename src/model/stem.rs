//! The stem: the layers before the first dense block.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::ops::{self, BatchNorm2d, Conv2d, Mode};
use crate::spec::StemKind;

/// The layers before the first dense block, named `conv0`, `norm0` as in torchvision.
///
/// - ImageNet: `conv0` 7×7/2, `norm0`, ReLU, 3×3/2 max pool with padding 1: (N, C, H, W) → (N, F, H/4, W/4).
/// - CIFAR: `conv0` 3×3/1 with padding 1 only: (N, C, H, W) → (N, F, H, W).
#[derive(Debug, Clone)]
pub struct Stem {
    conv0: Conv2d,
    norm0: Option<BatchNorm2d>,
}

impl Stem {
    /// Builds the stem of `kind` from `in_channels` to `features` channels.
    pub fn new(
        vb: VarBuilder,
        kind: StemKind,
        in_channels: usize,
        features: usize,
        conv_bias: bool,
    ) -> Result<Self> {
        Ok(match kind {
            StemKind::Imagenet => Self {
                conv0: Conv2d::new(vb.pp("conv0"), in_channels, features, 7, 2, 3, conv_bias)?,
                norm0: Some(BatchNorm2d::new(vb.pp("norm0"), features)?),
            },
            StemKind::Cifar => Self {
                conv0: Conv2d::new(vb.pp("conv0"), in_channels, features, 3, 1, 1, conv_bias)?,
                norm0: None,
            },
        })
    }

    /// The stem before its pool (N, F, H/2, W/2 for ImageNet): timm's first feature level.
    pub fn forward_unpooled(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = self.conv0.forward(x)?;
        match &self.norm0 {
            Some(norm) => norm.forward_relu(&x, mode),
            None => Ok(x),
        }
    }

    /// The stem's pool, applied to the output of [`Stem::forward_unpooled`] (identity for CIFAR).
    pub fn pool(&self, x: &Tensor) -> Result<Tensor> {
        match self.norm0 {
            Some(_) => ops::max_pool2d(x, 3, 2, 1),
            None => Ok(x.clone()),
        }
    }

    /// The whole stem, in `mode`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.pool(&self.forward_unpooled(x, mode)?)
    }

    /// Calls `f` on each of its batch norms, in checkpoint order.
    pub fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        if let Some(norm) = &mut self.norm0 {
            f(norm);
        }
    }

    /// The same stem on detached weights, for inference.
    pub fn detached(&self) -> Self {
        Self {
            conv0: self.conv0.detached(),
            norm0: self.norm0.as_ref().map(BatchNorm2d::detached),
        }
    }

    /// Reduction of the unpooled output relative to the input: 2 for ImageNet, 1 for CIFAR.
    pub fn unpooled_reduction(&self) -> usize {
        if self.norm0.is_some() {
            2
        } else {
            1
        }
    }

    /// Multiply-adds for one image of side `side`.
    pub fn macs(&self, side: usize) -> u64 {
        self.conv0.macs(side)
    }
}
