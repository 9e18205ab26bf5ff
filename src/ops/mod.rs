//! The kernels the model calls, and the only place they live: convolution (with bias),
//! batch norm fused with its ReLU, pooling, concatenation, and the ReLU with torch's gradient. The model code in `crate::model`
//! calls nothing else, so faster kernels can replace these without touching it.
//!
//! On the CPU in f32 and f64 they are our own kernels with their own backward (`conv_op`,
//! `bn_relu_op`, `channel_ops`, `pool`); on other devices, compositions of candle's ops.
//! [`FeatureStore`] chooses how a dense block holds its feature maps: `shared_features` for
//! memory-efficient training, `feature_buffer` at inference, a concatenation otherwise.
//! [`Mode`] says which mode a forward pass runs in; [`fused_inference`] whether the fused
//! inference kernels apply.

mod batch_norm;
mod batch_norm_group;
mod bn_relu_op;
mod channel_ops;
mod conv;
mod conv_op;
mod cpu;
mod feature_buffer;
mod feature_store;
mod im2col;
mod mode;
mod pool;
mod relu;
mod shared_features;

pub use batch_norm::BatchNorm2d;
pub use batch_norm_group::BatchNormGroup;
pub use conv::{conv2d, norm_relu_conv, Conv2d};
pub use feature_store::FeatureStore;
pub use mode::{cpu_kernels, fused_inference, Mode};
pub use pool::{avg_pool2x2, global_avg_pool, max_pool2d};
pub use relu::relu;
