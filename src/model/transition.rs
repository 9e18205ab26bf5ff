//! The transition between dense blocks: compress channels, halve the resolution.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::NormReluConv;
use crate::ops::{self, Mode};

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

    /// Compresses and downsamples `x` in `mode`.
    ///
    /// The 2×2 average is taken before the 1×1 conv, not after as in torchvision: both are
    /// linear and the conv acts on each pixel alone, so the two orders are the same function
    /// (up to rounding), and this one convolves a quarter of the pixels.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let pooled = ops::avg_pool2x2(&self.unit.norm_relu(x, mode)?)?;
        self.unit.conv().forward(&pooled)
    }

    /// The same transition on detached weights, for inference.
    pub fn detached(&self) -> Self {
        Self {
            unit: self.unit.detached(),
        }
    }

    /// Multiply-adds for one image whose input maps are `side`×`side`.
    pub fn macs(&self, side: usize) -> u64 {
        self.unit.conv().macs(side)
    }
}
