//! The kernels the model calls, and the only place they live: convolution (with bias),
//! batch norm fused with its ReLU, pooling, concatenation, and the ReLU with torch's gradient.
//! The model calls nothing else, so faster kernels can replace these without touching it.
//!
//! On the CPU in f32 and f64 they are our own kernels with their own backward, in `cpu/`
//! (convolution forward and backward, batch norm + ReLU, channel ops, the max pool,
//! `im2col`, the memory-efficient and inference buffers); on other devices, compositions of
//! candle's ops; [`KernelPath`] is the one decision between them. [`FeatureStore`] chooses how a
//! dense block holds its feature maps: shared storage for memory-efficient training, one
//! buffer at inference, a concatenation otherwise. [`Mode`] says which mode a forward pass
//! runs in, and [`on_workers`] where.

mod batch_norm;
mod batch_norm_group;
mod conv;
mod cpu;
mod feature_store;
mod mode;
mod pool;
mod relu;
mod workers;

pub use batch_norm::BatchNorm2d;
pub use batch_norm_group::BatchNormGroup;
pub use conv::{conv2d, norm_relu_conv, Conv2d};
pub use feature_store::FeatureStore;
pub use mode::{cpu_kernels, fused_inference, KernelPath, Mode};
pub use pool::{avg_pool2x2, global_avg_pool, max_pool2d};
pub use relu::relu;
pub use workers::on_workers;
