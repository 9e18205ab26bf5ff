//! A dense block's growing concatenation at inference, without a copy per layer.

use candle_core::{Result, Tensor};

/// The feature maps of a dense block at inference, in one buffer of the block's final width:
/// each layer reads a view of the channels so far, and its new maps are written after them, so
/// no layer copies the earlier maps as a concatenation would.
///
/// The buffer is written in place, which autograd cannot follow: for tensors that record no
/// graph only (plain tensors, as loaded for inference); [`FeatureBuffer::new`] and
/// [`FeatureBuffer::push`] refuse the others.
pub(crate) struct FeatureBuffer {
    buffer: Tensor,
    channels: usize,
}

impl FeatureBuffer {
    /// A buffer (N, `total_channels`, H, W) that starts with `x` (N, C0, H, W).
    pub(crate) fn new(x: &Tensor, total_channels: usize) -> Result<Self> {
        let (n, _, h, w) = x.dims4()?;
        let buffer = Tensor::zeros((n, total_channels, h, w), x.dtype(), x.device())?;
        let mut features = Self { buffer, channels: 0 };
        features.push(x)?;
        Ok(features)
    }

    /// The channels so far, (N, C, H, W): a view into the buffer, not a copy.
    pub(crate) fn features(&self) -> Result<Tensor> {
        self.buffer.narrow(1, 0, self.channels)
    }

    /// Appends `x` (N, k, H, W) after the channels so far.
    pub(crate) fn push(&mut self, x: &Tensor) -> Result<()> {
        if x.track_op() {
            candle_core::bail!("feature buffer: the input records an autograd graph; concatenate it");
        }
        let c = x.dim(1)?;
        if self.channels + c > self.buffer.dim(1)? {
            candle_core::bail!(
                "feature buffer: {} + {c} channels do not fit in {}",
                self.channels,
                self.buffer.dim(1)?
            );
        }
        self.buffer.slice_set(&x.contiguous()?, 1, self.channels)?;
        self.channels += c;
        Ok(())
    }

    /// The whole buffer, (N, C_total, H, W), once every channel is pushed.
    pub(crate) fn finish(self) -> Result<Tensor> {
        let total = self.buffer.dim(1)?;
        if self.channels != total {
            candle_core::bail!("feature buffer: {} of {total} channels pushed", self.channels);
        }
        Ok(self.buffer)
    }
}
