//! The kernels the model calls, and the only place they live: convolution (with bias),
//! batch norm fused with its ReLU, pooling and concatenation. The model code in `crate::model`
//! calls nothing else, so faster kernels can replace these without touching it.
//!
//! On the CPU in f32 and f64 they are our own kernels with their own backward (`conv_op`,
//! `bn_relu_op`, `channel_ops`, `pool`); on other devices, compositions of candle's ops.
//! `shared_features` stores a dense block's feature maps once for memory-efficient training,
//! `feature_buffer` at inference.

mod batch_norm;
mod bn_relu_op;
mod channel_ops;
mod conv;
mod conv_op;
mod cpu;
mod feature_buffer;
mod im2col;
mod pool;
mod shared_features;

pub use batch_norm::BatchNorm2d;
pub use conv::{conv2d, norm_relu_conv, Conv2d};
pub use feature_buffer::FeatureBuffer;
pub use pool::{avg_pool2x2, global_avg_pool, max_pool2d};
pub use shared_features::SharedFeatures;

use candle_core::{Result, Tensor};

/// Concatenates feature maps along the channel axis: [(N, C_i, H, W)] → (N, ΣC_i, H, W).
pub fn concat_channels(xs: &[Tensor]) -> Result<Tensor> {
    Tensor::cat(xs, 1)
}
