//! The CPU convolution: GEMMs in NCHW, forward and backward, with no batch-sized
//! intermediate. For each image n, with K = Cin·k·k and L = H'·W':
//! - forward: y[n] (Cout×L) = W (Cout×K) · cols[n] (K×L);
//! - input gradient: for a stride-1 k×k conv, the convolution of dy[n] by the flipped,
//!   transposed weight; else dx[n] = col2im(Wᵀ (K×Cout) · dy[n] (Cout×L)) (Wᵀ·dy[n] for 1×1);
//! - weight gradient: dW (Cout×K) = Σₙ dy[n] (Cout×L) · cols[n]ᵀ (L×K).
//!
//! cols[n] is the image itself for a 1×1 conv, else its `im2col` columns. A stride-1 k×k conv
//! with fewer output than input channels (a dense layer's 3×3) avoids unfolding x, the larger
//! side: its forward pass multiplies x by each tap's weights and sums the shifted products,
//! and its weight gradient unfolds dy instead, once for both gradients (the input gradient
//! reads the same columns of dy). Images with few
//! output pixels are put side by side, several to a GEMM, so that each GEMM has at least
//! [`MIN_COLUMNS`] columns. Groups are spread over threads; too few groups let each GEMM use
//! them instead.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::bn_relu::{image_stride, BnReluEval};
use super::conv_backward::backward;
use super::im2col::{sum_taps, Unfold, Window};
use super::{float_kernel, unwritten_vec, Float};

/// (N, Cin, H, W) ∗ (Cout, Cin, k, k) → (N, Cout, H', W').
pub(crate) struct ConvOp(pub Window);

pub(crate) struct Dims {
    pub(super) n: usize,
    pub(super) cin: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) cout: usize,
    /// Cin·k·k.
    pub(super) kk: usize,
    /// H'·W'.
    pub(super) l: usize,
}

impl ConvOp {
    pub(crate) fn dims(&self, x: &Layout, weight: &Layout) -> Result<Dims> {
        let (n, cin, h, w) = x.shape().dims4()?;
        let (cout, wcin, k1, k2) = weight.shape().dims4()?;
        if wcin != cin || k1 != self.0.kernel || k2 != self.0.kernel {
            candle_core::bail!(
                "conv2d: input {:?} does not fit weight {:?}",
                x.dims(),
                weight.dims()
            );
        }
        Ok(Dims {
            n,
            cin,
            h,
            w,
            cout,
            kk: cin * k1 * k2,
            l: self.0.out(h) * self.0.out(w),
        })
    }
}

/// A GEMM with fewer columns than this runs far from speed: images with fewer output pixels
/// are grouped, side by side, into one GEMM.
const MIN_COLUMNS: usize = 256;

/// How `n` images of `l` output pixels are processed: `per_gemm` images per GEMM, groups in
/// parallel when there are enough of them, else each GEMM on every thread.
pub(super) struct Plan {
    pub(super) per_gemm: usize,
    pub(super) parallel: bool,
    pub(super) par: Parallelism,
}

pub(super) fn plan(n: usize, l: usize) -> Plan {
    let threads = rayon::current_num_threads();
    let per_gemm = MIN_COLUMNS.div_ceil(l.max(1)).min(n.div_ceil(threads)).max(1);
    let parallel = n.div_ceil(per_gemm) >= threads && threads > 1;
    Plan {
        per_gemm,
        parallel,
        par: if parallel {
            Parallelism::None
        } else {
            Parallelism::Rayon(threads)
        },
    }
}

/// What a convolution reads: images of (rows, l), each contiguous, `stride` elements apart
/// (a channel range of a dense block's buffer at inference), read through `norm_relu` when
/// there is one: the eval-mode batch norm and ReLU before the convolution, applied as the
/// input is read instead of in a pass of its own.
pub(crate) struct Images<'a, T> {
    pub data: &'a [T],
    pub stride: usize,
    pub norm_relu: Option<&'a BnReluEval>,
}

impl<'a, T: Float> Images<'a, T> {
    /// Contiguous images of `len` elements each, read as they are.
    pub(crate) fn contiguous(data: &'a [T], len: usize) -> Self {
        Self {
            data,
            stride: len,
            norm_relu: None,
        }
    }

    /// Image `i`, its first `len` elements.
    fn image(&self, i: usize, len: usize) -> &'a [T] {
        &self.data[i * self.stride..i * self.stride + len]
    }

    /// Writes row `r` (of length `l`) of image `i` into `dst`, through `norm_relu` if there is
    /// one: one pass over the row either way.
    fn copy_row(&self, i: usize, r: usize, l: usize, dst: &mut [T]) {
        let row = &self.data[i * self.stride + r * l..i * self.stride + (r + 1) * l];
        match self.norm_relu {
            Some(map) => map.apply(r, row, dst),
            None => dst.copy_from_slice(row),
        }
    }

    /// Row `r` (of length `l`) of image `i`, through `norm_relu` into `scratch` if needed.
    fn row<'s>(&self, i: usize, r: usize, l: usize, scratch: &'s mut Vec<T>) -> &'s [T]
    where
        'a: 's,
    {
        let row = &self.data[i * self.stride + r * l..i * self.stride + (r + 1) * l];
        match self.norm_relu {
            Some(map) => {
                scratch.resize(l, T::zero());
                map.apply(r, row, scratch);
                scratch
            }
            None => row,
        }
    }
}

/// A GEMM spread over threads by `gemm` packs its pixel side on one thread first when the
/// pixels are not a multiple of this (`gemm-common`'s `do_prepack_lhs`), the other threads
/// waiting: at batch 1, DenseNet-121's 14×14 and 7×7 maps. Padding them with zero columns
/// instead was faster by about 6 % (inference at batch 1, 8 interleaved runs each).
const COLUMN_ALIGN: usize = 16;

/// The row length of a GEMM operand holding `columns` columns under `plan`: rounded up to
/// [`COLUMN_ALIGN`] (the extra columns zero) when the GEMM itself runs on several threads;
/// GEMMs run side by side each pack on their own thread anyway.
pub(super) fn aligned_width(columns: usize, plan: &Plan) -> usize {
    match plan.par {
        Parallelism::Rayon(threads) if threads > 1 => columns.next_multiple_of(COLUMN_ALIGN),
        _ => columns,
    }
}

/// Images first..first + count's (rows × l) blocks, side by side, in rows of `width` ≥
/// count·l, zero beyond count·l: (rows × width). One image read as it is, unpadded, is
/// borrowed.
pub(super) fn side_by_side<'a, T: Float>(
    x: &Images<'a, T>,
    rows: usize,
    l: usize,
    (first, count): (usize, usize),
    width: usize,
) -> Cow<'a, [T]> {
    if count == 1 && x.norm_relu.is_none() && width == l {
        return Cow::Borrowed(x.image(first, rows * l));
    }
    // SAFETY: each of the rows gets `count` segments of l and zeros to its whole width below.
    let mut out = unsafe { unwritten_vec(rows * width) };
    out.par_chunks_mut(width).enumerate().for_each(|(r, dst)| {
        let (images, pad) = dst.split_at_mut(count * l);
        for (i, dst) in images.chunks_exact_mut(l).enumerate() {
            x.copy_row(first + i, r, l, dst);
        }
        pad.fill(T::zero());
    });
    Cow::Owned(out)
}

/// The inverse of [`side_by_side`]: (rows × width) into `count` images' (rows × l) blocks.
pub(super) fn split_images<T: Float>(
    grouped: &[T],
    (rows, width): (usize, usize),
    l: usize,
    count: usize,
    images: &mut [T],
) {
    for i in 0..count {
        for r in 0..rows {
            images[(i * rows + r) * l..(i * rows + r + 1) * l]
                .copy_from_slice(&grouped[r * width + i * l..r * width + (i + 1) * l]);
        }
    }
}

/// dst (m×n) = a (m×k) · b (k×n), all row-major, optionally accumulating; `b_transposed`
/// reads b as the transpose of a row-major (n×k) matrix.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul<T: Float>(
    dst: &mut [T],
    a: &[T],
    b: &[T],
    (m, k, n): (usize, usize, usize),
    a_transposed: bool,
    b_transposed: bool,
    accumulate: bool,
    par: Parallelism,
) {
    let (a_cs, a_rs) = if a_transposed {
        (m as isize, 1)
    } else {
        (1, k as isize)
    };
    let (b_cs, b_rs) = if b_transposed {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    if k == 0 && !accumulate {
        // An empty product is zero; gemm says nothing of it, and callers rely on `dst` written.
        dst.fill(T::zero());
        return;
    }
    // SAFETY: the slices hold m·k, k·n and m·n elements, and the strides address within them.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// out, `count` images' (m × l) blocks, = a (m×k, or its transpose) · b (k × width), the
/// images side by side in b's first count·l columns ([`side_by_side`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_into_images<T: Float>(
    out: &mut [T],
    a: &[T],
    b: &[T],
    (m, k, l): (usize, usize, usize),
    a_transposed: bool,
    count: usize,
    width: usize,
    par: Parallelism,
) {
    let dims = (m, k, width);
    if width == l {
        matmul(out, a, b, dims, a_transposed, false, false, par);
    } else {
        // SAFETY: `matmul` without accumulation overwrites every element of its output.
        let mut grouped = unsafe { unwritten_vec(m * width) };
        matmul(&mut grouped, a, b, dims, a_transposed, false, false, par);
        split_images(&grouped, (m, width), l, count, out);
    }
}

/// Runs `f(first image, images, output chunk)` over groups of `per_image`-long outputs.
pub(super) fn for_each_group<T: Send>(
    out: &mut [T],
    per_image: usize,
    plan: &Plan,
    f: impl Fn(usize, usize, &mut [T]) + Sync + Send,
) {
    let chunk = plan.per_gemm * per_image;
    let run = |(g, o): (usize, &mut [T])| {
        let count = o.len() / per_image;
        f(g * plan.per_gemm, count, o)
    };
    if plan.parallel {
        out.par_chunks_mut(chunk).enumerate().for_each(run);
    } else {
        out.chunks_mut(chunk).enumerate().for_each(run);
    }
}

impl ConvOp {
    /// The columns (K × width) of images first..first + count, side by side, zero beyond
    /// count·L, in parallel over channels.
    pub(super) fn columns<'a, T: Float>(
        &self,
        x: &Images<'a, T>,
        d: &Dims,
        group: (usize, usize),
        width: usize,
    ) -> Cow<'a, [T]> {
        if self.0.is_pointwise() {
            return side_by_side(x, d.cin, d.l, group, width);
        }
        let ((first, count), hw) = (group, d.h * d.w);
        let unfold = Unfold::new(self.0, d.h, d.w);
        // SAFETY: each channel's k·k rows get every image's l columns from `Unfold::plane`,
        // which writes each (zero for padding), then zeros to their whole width.
        let mut cols = unsafe { unwritten_vec(d.kk * width) };
        let rows_per_channel = d.kk / d.cin;
        cols.par_chunks_mut(rows_per_channel * width)
            .enumerate()
            .for_each_init(Vec::new, |scratch, (ch, rows)| {
                for i in 0..count {
                    unfold.plane(x.row(first + i, ch, hw, scratch), rows, width, i * d.l);
                }
                for row in rows.chunks_exact_mut(width) {
                    row[count * d.l..].fill(T::zero());
                }
            });
        Cow::Owned(cols)
    }

    /// The adjoint window when the conv is cheaper as products of the input with each tap's
    /// weights than on im2col columns: a k×k conv with stride 1 and fewer output than input
    /// channels, whose k·k·Cout × H·W products are smaller than the Cin·k·k × H'·W' columns (a
    /// dense layer's 3×3 conv: 128 channels in, 32 out, in the bottleneck nets).
    pub(super) fn by_taps(&self, d: &Dims) -> Option<Window> {
        self.adjoint().filter(|_| self.runs_by_taps(d.cout, d.cin))
    }

    /// Whether a forward pass of `cin` channels into `cout` runs by taps ([`ConvOp::by_taps`]):
    /// then [`stack_by_tap`] prepares its weights.
    pub(crate) fn runs_by_taps(&self, cout: usize, cin: usize) -> bool {
        self.adjoint().is_some() && cout < cin
    }

    /// y[n] = Σ over taps t of shift_t(W_t · x[n]): one GEMM of the weights stacked by tap
    /// (k·k·Cout × Cin) with the images side by side (Cin × count·H·W), then [`sum_taps`]
    /// for each output plane.
    fn forward_by_taps<T: Float>(&self, x: &Images<T>, weight: Weights<T>, d: &Dims) -> Vec<T> {
        let (k2, hw) = (d.kk / d.cin, d.h * d.w);
        let stacked = match weight {
            Weights::ByTap(stacked) => Cow::Borrowed(stacked),
            Weights::Torch(weight) => Cow::Owned(stack_by_tap(weight, k2, d.cout, d.cin)),
        };
        let plan = plan(d.n, hw);
        // SAFETY: `for_each_group` hands every image's outputs to the closure, where
        // `sum_taps` zeroes then sums each plane.
        let mut y = unsafe { unwritten_vec(d.n * d.cout * d.l) };
        for_each_group(&mut y, d.cout * d.l, &plan, |first, count, out| {
            let width = aligned_width(count * hw, &plan);
            let xs = side_by_side(x, d.cin, hw, (first, count), width);
            // SAFETY: `matmul` without accumulation overwrites every element of its output.
            let mut z = unsafe { unwritten_vec(k2 * d.cout * width) };
            let dims = (k2 * d.cout, d.cin, width);
            matmul(&mut z, &stacked, &xs, dims, false, false, false, plan.par);
            out.par_chunks_mut(d.l).enumerate().for_each(|(plane, dst)| {
                let (i, co) = (plane / d.cout, plane % d.cout);
                sum_taps(self.0, (d.h, d.w), &z, d.cout * width, co * width + i * hw, dst);
            });
        });
        y
    }

    pub(crate) fn forward<T: Float>(&self, x: &Images<T>, weight: Weights<T>, d: &Dims) -> Vec<T> {
        let weight = match weight {
            _ if self.by_taps(d).is_some() => return self.forward_by_taps(x, weight, d),
            Weights::Torch(weight) => weight,
            Weights::ByTap(_) => unreachable!("weights are stacked by tap only for a conv that runs by taps"),
        };
        let plan = plan(d.n, d.l);
        // SAFETY: `for_each_group` hands every image's outputs to `matmul_into_images`, which
        // overwrites them all.
        let mut y = unsafe { unwritten_vec(d.n * d.cout * d.l) };
        for_each_group(&mut y, d.cout * d.l, &plan, |first, count, out| {
            let width = aligned_width(count * d.l, &plan);
            let cols = self.columns(x, d, (first, count), width);
            let dims = (d.cout, d.kk, d.l);
            matmul_into_images(out, weight, &cols, dims, false, count, width, plan.par);
        });
        y
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "conv2d-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.dims(l1, l2)?;
        let plane = d.cin * d.h * d.w;
        let out = float_kernel!(self.name(), [x: s1, l1; w: s2, l2], {
            self.forward(&Images::contiguous(x, plane), Weights::Torch(w), &d)
        });
        Ok((out, Shape::from((d.n, d.cout, self.0.out(d.h), self.0.out(d.w)))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = backward(x, w, dy, self.0)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// A convolution's weights as the forward pass reads them.
#[derive(Clone, Copy)]
pub(crate) enum Weights<'a, T> {
    /// PyTorch's layout, (Cout, Cin, k, k).
    Torch(&'a [T]),
    /// Stacked by tap, (k·k·Cout, Cin) ([`stack_by_tap`]), for a conv that runs by taps.
    ByTap(&'a [T]),
}

/// Weights (Cout, Cin, k, k) stacked by tap: (k·k, Cout, Cin), tap t's block every k·k-th
/// weight from the t-th, as [`ConvOp::forward_by_taps`] multiplies them.
pub(crate) fn stack_by_tap<T: Float>(weight: &[T], k2: usize, cout: usize, cin: usize) -> Vec<T> {
    // SAFETY: each tap's block of Cout·Cin is filled from the weights just below.
    let mut stacked = unsafe { unwritten_vec(k2 * cout * cin) };
    for (tap, block) in stacked.chunks_exact_mut(cout * cin).enumerate() {
        block
            .iter_mut()
            .zip(weight[tap..].iter().step_by(k2))
            .for_each(|(o, w)| *o = *w);
    }
    stacked
}

/// Inference: (x, W) → conv(max(0, x·scale + shift)), the eval-mode batch norm and ReLU
/// applied as the convolution reads x, whose images may lie apart (a channel range of a dense
/// block's buffer). No backward.
pub(crate) struct NormReluConvOp {
    pub window: Window,
    pub norm_relu: Arc<BnReluEval>,
    /// The weights stacked by tap ([`stack_by_tap`]) when the conv runs by taps and they were
    /// prepared once (an inference copy's [`Conv2d`](crate::ops::Conv2d)); else stacked per call.
    pub by_tap: Option<Tensor>,
}

impl CustomOp2 for NormReluConvOp {
    fn name(&self) -> &'static str {
        "batch-norm-relu-conv2d-eval"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let conv = ConvOp(self.window);
        let d = conv.dims(l1, l2)?;
        if self.norm_relu.scale.len() != d.cin {
            candle_core::bail!(
                "{}: {} channels, {} scales",
                self.name(),
                d.cin,
                self.norm_relu.scale.len()
            );
        }
        let Some(stride) = image_stride(l1) else {
            candle_core::bail!("{}: each image must be contiguous", self.name());
        };
        let span = d.n.saturating_sub(1) * stride + d.cin * d.h * d.w;
        let part = l1.start_offset()..l1.start_offset() + span;
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                CpuStorage::F32(self.forward(&x[part], stride, w, l2, &d)?)
            }
            (CpuStorage::F64(x), CpuStorage::F64(w)) => {
                CpuStorage::F64(self.forward(&x[part], stride, w, l2, &d)?)
            }
            _ => candle_core::bail!("{}: inputs must both be f32 or both f64", self.name()),
        };
        Ok((
            out,
            Shape::from((d.n, d.cout, self.window.out(d.h), self.window.out(d.w))),
        ))
    }
}

impl NormReluConvOp {
    fn forward<T: Float>(&self, x: &[T], stride: usize, w: &[T], wl: &Layout, d: &Dims) -> Result<Vec<T>> {
        let x = Images {
            data: x,
            stride,
            norm_relu: Some(&self.norm_relu),
        };
        let conv = ConvOp(self.window);
        if let Some(by_tap) = self.by_tap.as_ref().filter(|_| conv.by_taps(d).is_some()) {
            let (storage, layout) = by_tap.storage_and_layout();
            if let Storage::Cpu(storage) = &*storage {
                let stacked = super::contiguous(storage.as_slice::<T>()?, layout, self.name())?;
                if stacked.len() == d.kk * d.cout {
                    return Ok(conv.forward(&x, Weights::ByTap(stacked), d));
                }
            }
        }
        let w = super::contiguous(w, wl, self.name())?;
        Ok(conv.forward(&x, Weights::Torch(w), d))
    }
}
