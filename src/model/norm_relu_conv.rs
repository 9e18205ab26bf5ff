//! The pre-activation unit every DenseNet is made of: batch norm, ReLU, then a convolution.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::ops::{self, BatchNorm2d, Conv2d, FeatureStore, Mode};

/// BN-ReLU-Conv: (N, in, H, W) → (N, out, H', W'), with stride 1 and "same" padding.
///
/// The norm and the conv are named by the caller (`norm1`/`conv1`, `norm`/`conv`, ...), so the
/// checkpoint names match torchvision's.
#[derive(Debug, Clone)]
pub struct NormReluConv {
    norm: BatchNorm2d,
    conv: Conv2d,
}

impl NormReluConv {
    /// Builds the unit from `vb.pp(norm)` and `vb.pp(conv)`; a k×k conv gets padding k/2.
    pub fn new(
        vb: &VarBuilder,
        names: (&str, &str),
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        bias: bool,
    ) -> Result<Self> {
        Ok(Self {
            norm: BatchNorm2d::new(vb.pp(names.0), in_channels)?,
            conv: Conv2d::new(
                vb.pp(names.1),
                in_channels,
                out_channels,
                kernel,
                1,
                kernel / 2,
                bias,
            )?,
        })
    }

    /// Applies the unit in `mode` (see [`ops::norm_relu_conv`]).
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        ops::norm_relu_conv(&self.norm, &self.conv, x, mode)
    }

    /// The unit's first half, max(0, norm(x)): (N, in, H, W) → (N, in, H, W).
    pub fn norm_relu(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.norm.forward_relu(x, mode)
    }

    /// Applies the unit to every channel held by `features`, in the store's mode.
    pub fn forward_store(&self, features: &FeatureStore) -> Result<Tensor> {
        features.norm_relu_conv(&self.norm, &self.conv)
    }

    /// Calls `f` on each of its batch norms, in checkpoint order.
    pub fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        f(&mut self.norm);
    }

    /// The same unit on detached weights, for inference.
    pub fn detached(&self) -> Self {
        Self {
            norm: self.norm.detached(),
            conv: self.conv.detached(),
        }
    }

    /// The convolution.
    pub fn conv(&self) -> &Conv2d {
        &self.conv
    }
}
