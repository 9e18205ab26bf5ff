//! Our CPU kernels, f32 and f64, each with its own backward where training needs one: the
//! convolution by GEMMs (forward, backward), batch norm + ReLU, per-channel ops, the max
//! pool, `im2col`, and the dense block's buffers (memory-efficient training, inference).
//! The public ops in [`crate::ops`] call them on [`KernelPath::Cpu`](super::KernelPath) and
//! `CpuFused`. Here too is what every kernel shares: contiguous input slices, and running a
//! generic kernel on f32 or f64 storage.

mod bn_relu;
mod channel_ops;
mod conv;
mod conv_backward;
mod feature_buffer;
mod im2col;
mod pool;
mod shared_features;

pub(super) use bn_relu::{image_stride, BatchStats, BnReluEval, BnReluTrain};
pub(super) use channel_ops::{AvgPool2x2, BiasAdd};
pub(super) use conv::{ConvOp, NormReluConvOp};
pub(super) use feature_buffer::FeatureBuffer;
pub(super) use im2col::Window;
pub(super) use pool::MaxPool2d;
pub(super) use shared_features::SharedFeatures;

use candle_core::{Layout, Result, WithDType};

/// The contiguous elements of a storage `data` under `layout`; `op` names the kernel in errors.
pub(crate) fn contiguous<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: inputs must be contiguous"),
    }
}

/// Runs `$body` with each `$x` bound to the contiguous f32 (or f64) slice of storage `$s` under
/// layout `$l`, and wraps the `Vec` it returns in a `CpuStorage` of the same type:
/// `float_kernel!(name, [x: s1, l1; w: s2, l2], forward(x, w))`.
macro_rules! float_kernel {
    ($op:expr, [$($x:ident: $s:expr, $l:expr);+], $body:expr) => {
        match ($($s,)+) {
            ($(candle_core::CpuStorage::F32($x),)+) => {
                $(let $x = $crate::ops::cpu::contiguous($x, $l, $op)?;)+
                candle_core::CpuStorage::F32($body)
            }
            ($(candle_core::CpuStorage::F64($x),)+) => {
                $(let $x = $crate::ops::cpu::contiguous($x, $l, $op)?;)+
                candle_core::CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{}: inputs must all be f32 or all f64", $op),
        }
    };
}
pub(super) use float_kernel;

/// The element types our CPU kernels run on: f32 and f64, for which every bit pattern is a
/// value. Private to `ops`, so no other type can implement it.
pub(super) trait Float: WithDType {}

impl Float for f32 {}
impl Float for f64 {}

/// A vector of `len` elements left unwritten, for a kernel that writes every one of them
/// before anything reads it (a GEMM that overwrites its output, a copy, an elementwise map):
/// it saves the pass that zeroing would cost, which the allocator cannot skip once it
/// recycles freed memory (the allocator setting of training programs).
///
/// # Safety
/// The caller writes every element before it reads any or lets the vector leave the kernel.
pub(super) unsafe fn unwritten_vec<T: Float>(len: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`; the elements are f32 or f64 (`Float`), and the caller
    // writes each before it is read (this function's contract).
    #[allow(clippy::uninit_vec)]
    unsafe {
        v.set_len(len)
    };
    v
}
