//! The transition between dense blocks: compress channels, halve the resolution.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::NormReluConv;
use crate::ops;

/// `norm`-ReLU-`conv` (1×1) then 2×2/2 average pool: (N, C, H, W) → (N, C', H/2, W/2),
/// where C' = floor(θ·C) for compression θ.
#[derive(Debug, Clone)]
pub struct Transition {
    unit: NormReluConv,
}

impl Transition {
    /// Builds `norm` and `conv` under `vb`.
    pub fn new(vb: VarBuilder, in_channels: usize, out_channels: usize, conv_bias: bool) -> Result<Self> {
        Ok(Self {
            unit: NormReluConv::new(&vb, ("norm", "conv"), in_channels, out_channels, 1, conv_bias)?,
        })
    }

    /// Compresses and downsamples `x`; `train` selects batch statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        ops::avg_pool2x2(&self.unit.forward_t(x, train)?)
    }

    /// Multiply-adds for one image whose input maps are `side`×`side`.
    pub fn macs(&self, side: usize) -> u64 {
        self.unit.conv().macs(side)
    }
}
