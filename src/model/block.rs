//! The dense block: layers that each see every earlier feature map.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::DenseLayer;
use crate::ops::{BatchNorm2d, FeatureStore, Mode};
use crate::spec::LayerKind;

/// A dense block of L layers: (N, C, H, W) → (N, C + L·k, H, W).
///
/// Layer l receives the block input and the outputs of layers 1..l−1 concatenated on the
/// channel axis; the block returns the input and every layer's output, concatenated.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::VarBuilder;
/// use densenet_zoo::{ops::Mode, spec::{LayerKind, TransitionPool}, DenseBlock, Transition};
///
/// // The book's example: a block of 2 conv blocks with growth 10 on 3 input channels ...
/// let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let block = DenseBlock::new(vb.pp("block"), LayerKind::Plain, 2, 3, 10, true, 0.0)?;
/// let x = Tensor::randn(0f32, 1.0, (4, 3, 8, 8), &Device::Cpu)?;
/// let y = block.forward(&x, Mode::Eval)?;
/// assert_eq!(y.dims(), &[4, 23, 8, 8]);
/// assert_eq!(block.out_channels(), 23);
///
/// // ... and a transition from 23 to 10 channels halves the height and width.
/// let transition = Transition::new(vb.pp("transition"), 23, 10, true, TransitionPool::Avg)?;
/// assert_eq!(transition.forward(&y, Mode::Eval)?.dims(), &[4, 10, 4, 4]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DenseBlock {
    layers: Vec<DenseLayer>,
    out_channels: usize,
    memory_efficient: bool,
}

impl DenseBlock {
    /// Builds `num_layers` layers named `denselayer1`, `denselayer2`, ... under `vb`.
    pub fn new(
        vb: VarBuilder,
        kind: LayerKind,
        num_layers: usize,
        in_channels: usize,
        growth_rate: usize,
        conv_bias: bool,
        drop_rate: f64,
    ) -> Result<Self> {
        let layers = (0..num_layers)
            .map(|i| {
                DenseLayer::new(
                    vb.pp(format!("denselayer{}", i + 1)),
                    kind,
                    in_channels + i * growth_rate,
                    growth_rate,
                    conv_bias,
                    drop_rate,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            out_channels: in_channels + num_layers * growth_rate,
            memory_efficient: false,
        })
    }

    /// Channels out of the block: input channels + L·k.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// In training, store the concatenation once and recompute each layer's first batch norm
    /// and ReLU in the backward pass, like torchvision's `memory_efficient=True` (on the CPU in
    /// f32 and f64; elsewhere the plain way). Same results, bit for bit.
    pub fn set_memory_efficient(&mut self, on: bool) {
        self.memory_efficient = on;
    }

    /// Runs every layer in `mode`, growing the feature maps in a [`FeatureStore`]:
    /// (N, C, H, W) → (N, C + L·k, H, W).
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut features = FeatureStore::new(x, self.out_channels, mode, self.memory_efficient)?;
        for layer in &self.layers {
            let new = layer.forward_store(&features, mode)?;
            features.push(&new)?;
        }
        features.finish()
    }

    /// Calls `f` on each of its batch norms, in checkpoint order.
    pub fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        for layer in &mut self.layers {
            layer.for_each_batch_norm(f);
        }
    }

    /// The same block on detached weights, for inference.
    pub fn detached(&self) -> Self {
        Self {
            layers: self.layers.iter().map(DenseLayer::detached).collect(),
            ..*self
        }
    }

    /// Multiply-adds for one image whose feature maps are `side`×`side`.
    pub fn macs(&self, side: usize) -> u64 {
        self.layers.iter().map(|l| l.macs(side)).sum()
    }
}
