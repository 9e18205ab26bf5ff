//! The transition between dense blocks: compress channels, halve the resolution.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::NormReluConv;
use crate::ops::{self, BatchNorm2d, Mode};
use crate::spec::TransitionPool;

/// `norm`-ReLU-`conv` (1×1) then a 2×2/2 pool, average (as published) or max: (N, C, H, W) →
/// (N, C', H/2, W/2), where C' = floor(θ·C) for compression θ.
#[derive(Debug, Clone)]
pub struct Transition {
    unit: NormReluConv,
    pool: TransitionPool,
}

impl Transition {
    /// Builds `norm` and `conv` under `vb`, pooling by `pool`.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        conv_bias: bool,
        pool: TransitionPool,
    ) -> Result<Self> {
        Ok(Self {
            unit: NormReluConv::new(&vb, ("norm", "conv"), in_channels, out_channels, 1, conv_bias)?,
            pool,
        })
    }

    /// Compresses and downsamples `x` in `mode`.
    ///
    /// The 2×2 average is taken before the 1×1 conv, not after as in torchvision: both are
    /// linear and the conv acts on each pixel alone, so the two orders are the same function
    /// (up to rounding), and this one convolves a quarter of the pixels. A max pool does not
    /// commute with the conv, and follows it as `MaxPool2d(2, 2)` would.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match self.pool {
            TransitionPool::Avg => {
                let pooled = ops::avg_pool2x2(&self.unit.norm_relu(x, mode)?)?;
                self.unit.conv().forward(&pooled)
            }
            TransitionPool::Max => ops::max_pool2d(&self.unit.forward(x, mode)?, 2, 2, 0),
        }
    }

    /// Calls `f` on each of its batch norms, in checkpoint order.
    pub fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        self.unit.for_each_batch_norm(f);
    }

    /// The same transition on detached weights, for inference.
    pub fn detached(&self) -> Self {
        Self {
            unit: self.unit.detached(),
            pool: self.pool,
        }
    }

    /// Multiply-adds for one image whose input maps are `side`×`side`.
    pub fn macs(&self, side: usize) -> u64 {
        self.unit.conv().macs(side)
    }
}
