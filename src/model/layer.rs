//! The dense layer: what each layer of a dense block adds to the running concatenation.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::NormReluConv;
use crate::ops::{BatchNorm2d, FeatureStore, Mode};
use crate::spec::LayerKind;

/// One dense layer: (N, C, H, W), the concatenation of every earlier feature map in the block,
/// → (N, k, H, W), the k new feature maps (k = growth rate).
///
/// - Bottleneck (DenseNet-B): `norm1`-ReLU-`conv1` (1×1, to bn_size·k), `norm2`-ReLU-`conv2` (3×3, to k).
/// - Plain (the book's conv block): `norm1`-ReLU-`conv1` (3×3, to k).
///
/// In training, dropout with the spec's `drop_rate` follows, as in torchvision.
#[derive(Debug, Clone)]
pub struct DenseLayer {
    units: Vec<NormReluConv>,
    drop_rate: f64,
}

impl DenseLayer {
    /// Builds a layer that reads `in_channels` and adds `growth_rate` channels.
    pub fn new(
        vb: VarBuilder,
        kind: LayerKind,
        in_channels: usize,
        growth_rate: usize,
        conv_bias: bool,
        drop_rate: f64,
    ) -> Result<Self> {
        let units = match kind {
            LayerKind::Bottleneck { bn_size } => {
                let width = bn_size * growth_rate;
                vec![
                    NormReluConv::new(&vb, ("norm1", "conv1"), in_channels, width, 1, conv_bias)?,
                    NormReluConv::new(&vb, ("norm2", "conv2"), width, growth_rate, 3, conv_bias)?,
                ]
            }
            LayerKind::Plain => vec![NormReluConv::new(
                &vb,
                ("norm1", "conv1"),
                in_channels,
                growth_rate,
                3,
                conv_bias,
            )?],
        };
        Ok(Self { units, drop_rate })
    }

    /// The new feature maps (N, k, H, W) for the concatenated input `x` (N, C, H, W).
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = self.units[0].forward(x, mode)?;
        self.forward_rest(y, mode)
    }

    /// The new feature maps for every channel held by `features`, in the store's `mode`.
    pub fn forward_store(&self, features: &FeatureStore, mode: Mode) -> Result<Tensor> {
        let y = self.units[0].forward_store(features)?;
        self.forward_rest(y, mode)
    }

    /// The units after the first, then dropout in training.
    fn forward_rest(&self, mut y: Tensor, mode: Mode) -> Result<Tensor> {
        for unit in &self.units[1..] {
            y = unit.forward(&y, mode)?;
        }
        if mode.is_train() && self.drop_rate > 0.0 {
            y = candle_nn::ops::dropout(&y, self.drop_rate as f32)?;
        }
        Ok(y)
    }

    /// Calls `f` on each of its batch norms, in checkpoint order.
    pub fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        for unit in &mut self.units {
            unit.for_each_batch_norm(f);
        }
    }

    /// The same layer on detached weights, for inference.
    pub fn detached(&self) -> Self {
        Self {
            units: self.units.iter().map(NormReluConv::detached).collect(),
            drop_rate: self.drop_rate,
        }
    }

    /// Multiply-adds for one image whose feature maps are `side`×`side`.
    pub fn macs(&self, side: usize) -> u64 {
        self.units.iter().map(|u| u.conv().macs(side)).sum()
    }
}
