//! The dense block: layers that each see every earlier feature map.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::DenseLayer;
use crate::ops::{self, FeatureBuffer, SharedFeatures};
use crate::spec::LayerKind;

/// A dense block of L layers: (N, C, H, W) → (N, C + L·k, H, W).
///
/// Layer l receives the block input and the outputs of layers 1..l−1 concatenated on the
/// channel axis; the block returns the input and every layer's output, concatenated.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::VarBuilder;
/// use densenet_zoo::{spec::LayerKind, DenseBlock, Transition};
///
/// // The book's example: a block of 2 conv blocks with growth 10 on 3 input channels ...
/// let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let block = DenseBlock::new(vb.pp("block"), LayerKind::Plain, 2, 3, 10, true, 0.0)?;
/// let x = Tensor::randn(0f32, 1.0, (4, 3, 8, 8), &Device::Cpu)?;
/// let y = block.forward_t(&x, false)?;
/// assert_eq!(y.dims(), &[4, 23, 8, 8]);
/// assert_eq!(block.out_channels(), 23);
///
/// // ... and a transition from 23 to 10 channels halves the height and width.
/// let transition = Transition::new(vb.pp("transition"), 23, 10, true)?;
/// assert_eq!(transition.forward_t(&y, false)?.dims(), &[4, 10, 4, 4]);
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

    /// Runs every layer, growing the concatenation; `train` selects batch statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train && self.memory_efficient && SharedFeatures::supports(x) {
            let mut features = SharedFeatures::new(x, self.out_channels)?;
            for layer in &self.layers {
                let new = layer.forward_shared(&features)?;
                features.push(&new)?;
            }
            return features.finish();
        }
        if !train && !x.track_op() && !self.is_trainable() {
            // Inference: the layers read and extend one buffer, with no copy per layer.
            let mut features = FeatureBuffer::new(x, self.out_channels)?;
            for layer in &self.layers {
                let new = layer.forward_t(&features.features()?, false)?;
                features.push(&new)?;
            }
            return features.finish();
        }
        let mut features = x.clone();
        for layer in &self.layers {
            let new = layer.forward_t(&features, train)?;
            features = ops::concat_channels(&[features, new])?;
        }
        Ok(features)
    }

    /// True when the weights are variables, whose outputs record an autograd graph.
    fn is_trainable(&self) -> bool {
        self.layers.iter().any(DenseLayer::is_trainable)
    }

    /// Multiply-adds for one image whose feature maps are `side`×`side`.
    pub fn macs(&self, side: usize) -> u64 {
        self.layers.iter().map(|l| l.macs(side)).sum()
    }
}
