//! How a dense block holds its growing concatenation of feature maps.

use candle_core::{Result, Tensor};

use super::cpu::{FeatureBuffer, SharedFeatures};
use super::mode::{KernelPath, Mode};
use super::{norm_relu_conv, BatchNorm2d, Conv2d};

/// A dense block's feature maps, from the block input (N, C0, H, W) to the block output
/// (N, C0 + L·k, H, W), k channels pushed per layer. Each layer reads every channel so far
/// through [`FeatureStore::norm_relu_conv`], its first unit.
///
/// How the maps are stored is chosen here, from the mode:
/// - [`Mode::Inference`]: one buffer of the final width, written in place; a layer reads a view
///   of the channels so far, so no layer copies the earlier maps. Tensors that record an
///   autograd graph are refused.
/// - [`Mode::Train`] with `memory_efficient`, on the CPU kernels: one buffer, with each first
///   unit's norm and ReLU recomputed in the backward pass (Pleiss et al., 2017, as torchvision's
///   `memory_efficient=True`); bit-identical to the concatenation.
/// - Otherwise: a concatenation after every layer, which autograd follows as it is.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use densenet_zoo::ops::{FeatureStore, Mode};
///
/// let x = Tensor::ones((2, 3, 4, 4), DType::F32, &Device::Cpu)?;
/// let mut store = FeatureStore::new(&x, 5, Mode::Inference, false)?;
/// store.push(&Tensor::zeros((2, 2, 4, 4), DType::F32, &Device::Cpu)?)?;
/// assert_eq!(store.finish()?.dims(), &[2, 5, 4, 4]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub struct FeatureStore {
    storage: Storage,
    mode: Mode,
}

enum Storage {
    Concat { features: Tensor, total: usize },
    Buffer(FeatureBuffer),
    Shared(SharedFeatures),
}

impl FeatureStore {
    /// A store for `total_channels` channels that starts with `x` (N, C0, H, W), C0 ≤ the total.
    pub fn new(x: &Tensor, total_channels: usize, mode: Mode, memory_efficient: bool) -> Result<Self> {
        let c0 = x.dim(1)?;
        if c0 > total_channels {
            candle_core::bail!("feature store: the input has {c0} channels, the block {total_channels}");
        }
        let storage = match mode {
            Mode::Inference => Storage::Buffer(FeatureBuffer::new(x, total_channels)?),
            Mode::Train if memory_efficient && KernelPath::of(x, mode).is_cpu() => {
                Storage::Shared(SharedFeatures::new(x, total_channels)?)
            }
            _ => Storage::Concat {
                features: x.clone(),
                total: total_channels,
            },
        };
        Ok(Self { storage, mode })
    }

    /// conv(max(0, norm(every channel so far))): (N, C, H, W) → (N, out, H, W), in the store's
    /// mode (see [`norm_relu_conv`]).
    pub fn norm_relu_conv(&self, norm: &BatchNorm2d, conv: &Conv2d) -> Result<Tensor> {
        match &self.storage {
            Storage::Concat { features, .. } => norm_relu_conv(norm, conv, features, self.mode),
            Storage::Buffer(buffer) => norm_relu_conv(norm, conv, &buffer.features()?, self.mode),
            Storage::Shared(shared) => shared.norm_relu_conv(norm, conv),
        }
    }

    /// Appends `x` (N, k, H, W) after the channels so far.
    pub fn push(&mut self, x: &Tensor) -> Result<()> {
        match &mut self.storage {
            Storage::Concat { features, total } => {
                let (have, add) = (features.dim(1)?, x.dim(1)?);
                if have + add > *total {
                    candle_core::bail!("feature store: {have} + {add} channels do not fit in {total}");
                }
                *features = Tensor::cat(&[&*features, x], 1)?;
                Ok(())
            }
            Storage::Buffer(buffer) => buffer.push(x),
            Storage::Shared(shared) => shared.push(x),
        }
    }

    /// The block's output, (N, C_total, H, W); refused until every channel is pushed.
    pub fn finish(self) -> Result<Tensor> {
        match self.storage {
            Storage::Concat { features, total } => {
                let have = features.dim(1)?;
                if have != total {
                    candle_core::bail!("feature store: {have} of {total} channels pushed");
                }
                Ok(features)
            }
            Storage::Buffer(buffer) => buffer.finish(),
            Storage::Shared(shared) => shared.finish(),
        }
    }
}
