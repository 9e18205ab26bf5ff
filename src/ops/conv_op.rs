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

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::bn_relu_op::{image_stride, BnReluEval};
use super::cpu::{float_kernel, unwritten_vec, Float};
use super::im2col::{fold, sum_taps, Unfold, Window};

/// (N, Cin, H, W) ∗ (Cout, Cin, k, k) → (N, Cout, H', W').
pub(super) struct ConvOp(pub Window);

pub(super) struct Dims {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    /// Cin·k·k.
    kk: usize,
    /// H'·W'.
    l: usize,
}

impl ConvOp {
    pub(super) fn dims(&self, x: &Layout, weight: &Layout) -> Result<Dims> {
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
struct Plan {
    per_gemm: usize,
    parallel: bool,
    par: Parallelism,
}

fn plan(n: usize, l: usize) -> Plan {
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
pub(super) struct Images<'a, T> {
    pub data: &'a [T],
    pub stride: usize,
    pub norm_relu: Option<&'a BnReluEval>,
}

impl<'a, T: Float> Images<'a, T> {
    /// Contiguous images of `len` elements each, read as they are.
    pub(super) fn contiguous(data: &'a [T], len: usize) -> Self {
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
fn aligned_width(columns: usize, plan: &Plan) -> usize {
    match plan.par {
        Parallelism::Rayon(threads) if threads > 1 => columns.next_multiple_of(COLUMN_ALIGN),
        _ => columns,
    }
}

/// Images first..first + count's (rows × l) blocks, side by side, in rows of `width` ≥
/// count·l, zero beyond count·l: (rows × width). One image read as it is, unpadded, is
/// borrowed.
fn side_by_side<'a, T: Float>(
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
fn split_images<T: Float>(
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
fn matmul<T: Float>(
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
fn matmul_into_images<T: Float>(
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
fn for_each_group<T: Send>(
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
    fn columns<'a, T: Float>(
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
    fn by_taps(&self, d: &Dims) -> Option<Window> {
        self.adjoint().filter(|_| d.cout < d.cin)
    }

    /// y[n] = Σ over taps t of shift_t(W_t · x[n]): one GEMM of the weights stacked by tap
    /// (k·k·Cout × Cin) with the images side by side (Cin × count·H·W), then [`sum_taps`]
    /// for each output plane.
    fn forward_by_taps<T: Float>(&self, x: &Images<T>, weight: &[T], d: &Dims) -> Vec<T> {
        let (k2, hw) = (d.kk / d.cin, d.h * d.w);
        // Tap t's block (Cout × Cin) is every k·k-th weight from the t-th.
        // SAFETY: each tap's block of Cout·Cin is filled from the weights just below.
        let mut stacked = unsafe { unwritten_vec(k2 * d.cout * d.cin) };
        for (tap, block) in stacked.chunks_exact_mut(d.cout * d.cin).enumerate() {
            block
                .iter_mut()
                .zip(weight[tap..].iter().step_by(k2))
                .for_each(|(o, w)| *o = *w);
        }
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

    pub(super) fn forward<T: Float>(&self, x: &Images<T>, weight: &[T], d: &Dims) -> Vec<T> {
        if self.by_taps(d).is_some() {
            return self.forward_by_taps(x, weight, d);
        }
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

    fn input_grad<T: Float>(&self, dy: &[T], weight: &[T], d: &Dims) -> Vec<T> {
        if let Some(adjoint) = self.adjoint() {
            return self.input_grad_as_conv(adjoint, dy, weight, d);
        }
        let plane = d.cin * d.h * d.w;
        let mut dx = vec![T::zero(); d.n * plane];
        if self.0.is_pointwise() {
            // dx = Wᵀ·dy, images side by side.
            let plan = plan(d.n, d.l);
            for_each_group(&mut dx, plane, &plan, |first, count, out| {
                let dy = Images::contiguous(dy, d.cout * d.l);
                let width = aligned_width(count * d.l, &plan);
                let g = side_by_side(&dy, d.cout, d.l, (first, count), width);
                let dims = (d.kk, d.cout, d.l);
                matmul_into_images(out, weight, &g, dims, true, count, width, plan.par);
            });
            return dx;
        }
        // Strided k×k (the stem): col2im(Wᵀ·dy), one image at a time; its maps are large.
        let plan = Plan {
            per_gemm: 1,
            ..plan(d.n, usize::MAX)
        };
        for_each_group(&mut dx, plane, &plan, |i, _, out| {
            let g = &dy[i * d.cout * d.l..(i + 1) * d.cout * d.l];
            let mut cols = vec![T::zero(); d.kk * d.l];
            matmul(
                &mut cols,
                weight,
                g,
                (d.kk, d.cout, d.l),
                true,
                false,
                false,
                plan.par,
            );
            fold(&cols, d.cin, d.h, d.w, self.0, out);
        });
        dx
    }

    /// For a k×k conv with stride 1 (not 1×1), the window of its adjoint: the input gradient
    /// is then the convolution of dy with the weight flipped and transposed, padded by
    /// k − 1 − p, which reads the k·k·Cout columns of dy instead of writing and folding the
    /// k·k·Cin columns of the input.
    fn adjoint(&self) -> Option<Window> {
        let w = self.0;
        (w.stride == 1 && !w.is_pointwise() && w.padding < w.kernel).then_some(Window {
            kernel: w.kernel,
            stride: 1,
            padding: w.kernel - 1 - w.padding,
        })
    }

    /// dx (N, Cin, H, W) = dy (N, Cout, H', W') ∗ W' with the `adjoint` window, where
    /// W'[ci, co, a, b] = W[co, ci, k−1−a, k−1−b].
    fn input_grad_as_conv<T: Float>(&self, adjoint: Window, dy: &[T], weight: &[T], d: &Dims) -> Vec<T> {
        let flipped = self.flipped_transposed(weight, d);
        let of_dy = self.adjoint_dims(d);
        ConvOp(adjoint).forward(&Images::contiguous(dy, d.cout * d.l), &flipped, &of_dy)
    }

    /// W' (Cin, Cout, k, k) with W'[ci, co, a, b] = W[co, ci, k−1−a, k−1−b]: the weight of
    /// the adjoint convolution.
    fn flipped_transposed<T: Float>(&self, weight: &[T], d: &Dims) -> Vec<T> {
        let k2 = self.0.kernel * self.0.kernel;
        let row = d.cout * k2;
        // SAFETY: each (input, output) channel pair's k·k taps are written below.
        let mut flipped = unsafe { unwritten_vec(d.cin * row) };
        for (co, filters) in weight.chunks_exact(d.cin * k2).enumerate() {
            for (ci, taps) in filters.chunks_exact(k2).enumerate() {
                let dst = &mut flipped[ci * row + co * k2..ci * row + (co + 1) * k2];
                dst.iter_mut().zip(taps.iter().rev()).for_each(|(o, w)| *o = *w);
            }
        }
        flipped
    }

    /// The dims of the adjoint convolution, of dy (N, Cout, H', W') into (N, Cin, H, W).
    fn adjoint_dims(&self, d: &Dims) -> Dims {
        Dims {
            n: d.n,
            cin: d.cout,
            h: self.0.out(d.h),
            w: self.0.out(d.w),
            cout: d.cin,
            kk: d.cout * (d.kk / d.cin),
            l: d.h * d.w,
        }
    }

    fn weight_grad<T: Float>(&self, x: &[T], dy: &[T], d: &Dims) -> Vec<T> {
        // dW += dy (Cout × count·L) · colsᵀ (count·L × K) for each group of images.
        let (x, dy) = (
            Images::contiguous(x, d.cin * d.h * d.w),
            Images::contiguous(dy, d.cout * d.l),
        );
        sum_over_groups(d.n, &plan(d.n, d.l), d.cout * d.kk, |first, count, acc, par| {
            let width = count * d.l;
            let cols = self.columns(&x, d, (first, count), width);
            let g = side_by_side(&dy, d.cout, d.l, (first, count), width);
            let dims = (d.cout, count * d.l, d.kk);
            matmul(acc, &g, &cols, dims, false, true, true, par);
        })
    }

    /// dx and dW of a conv whose forward pass goes by taps ([`ConvOp::by_taps`]), packed: dx
    /// (N·Cin·H·W), then dW (Cout·Cin·k·k). Both GEMMs read dy unfolded under the adjoint
    /// window, so each group of images unfolds it once for both:
    ///
    /// - dx, as [`ConvOp::input_grad`]: the adjoint convolution, W' (Cin × Cout·k·k) times the
    ///   columns of dy;
    /// - dW from R (Cout·k·k × Cin) = Σ over groups of the columns of dy times xᵀ: R's row
    ///   co·k·k + t is tap k·k − 1 − t of dW. Unfolds Cout channels where the plain weight
    ///   gradient unfolds Cin.
    fn grads_by_taps<T: Float>(&self, adjoint: Window, x: &[T], weight: &[T], dy: &[T], d: &Dims) -> Vec<T> {
        let (k2, hw) = (d.kk / d.cin, d.h * d.w);
        let (of_dy, flipped) = (self.adjoint_dims(d), self.flipped_transposed(weight, d));
        let (x, dy) = (
            Images::contiguous(x, d.cin * hw),
            Images::contiguous(dy, d.cout * d.l),
        );
        let (plan, plane, rows) = (plan(d.n, hw), d.cin * hw, d.cout * k2);
        // The groups in spans, one per thread when they run in parallel (as `sum_over_groups`):
        // a span writes its images' dx and sums its part of R.
        let groups = d.n.div_ceil(plan.per_gemm);
        let spans = if plan.parallel {
            rayon::current_num_threads()
        } else {
            1
        };
        let per_span = groups.div_ceil(spans).max(1) * plan.per_gemm * plane;
        let span = |(s, dx): (usize, &mut [T])| -> Vec<T> {
            let mut r = vec![T::zero(); rows * d.cin];
            for (g, out) in dx.chunks_mut(plan.per_gemm * plane).enumerate() {
                let (first, count) = (s * per_span / plane + g * plan.per_gemm, out.len() / plane);
                let width = aligned_width(count * hw, &plan);
                let cols = ConvOp(adjoint).columns(&dy, &of_dy, (first, count), width);
                let dims = (d.cin, of_dy.kk, hw);
                matmul_into_images(out, &flipped, &cols, dims, false, count, width, plan.par);
                let xs = side_by_side(&x, d.cin, hw, (first, count), width);
                matmul(
                    &mut r,
                    &cols,
                    &xs,
                    (rows, width, d.cin),
                    false,
                    true,
                    true,
                    plan.par,
                );
            }
            r
        };
        // SAFETY: dx (the first N·Cin·H·W) is overwritten group by group by
        // `matmul_into_images`, and dW after it filter position by filter position below.
        let mut out = unsafe { unwritten_vec(d.n * plane + d.cout * d.kk) };
        let (dx, dw) = out.split_at_mut(d.n * plane);
        let r = if plan.parallel {
            let zero = || vec![T::zero(); rows * d.cin];
            dx.par_chunks_mut(per_span)
                .enumerate()
                .map(span)
                .reduce(zero, |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                })
        } else {
            span((0, dx))
        };
        // For each output channel, tap t's row fills filter positions k2−1−t, k2−1−t + k2, ...:
        // every position of its Cin·k·k once.
        for (filters, taps) in dw.chunks_exact_mut(d.kk).zip(r.chunks_exact(d.kk)) {
            // One output channel's k·k rows of R, each scattered into its filters, flipped.
            for (tap, row) in taps.chunks_exact(d.cin).enumerate() {
                let flipped = k2 - 1 - tap;
                filters[flipped..]
                    .iter_mut()
                    .step_by(k2)
                    .zip(row)
                    .for_each(|(o, v)| *o = *v);
            }
        }
        out
    }
}

/// Σ over groups of images of what `group(first, count, acc, parallelism)` accumulates into
/// `acc` (`len` elements, zeroed first): one accumulator per thread when the groups run in
/// parallel, summed at the end.
fn sum_over_groups<T: Float>(
    n: usize,
    plan: &Plan,
    len: usize,
    group: impl Fn(usize, usize, &mut Vec<T>, Parallelism) + Sync,
) -> Vec<T> {
    let firsts: Vec<usize> = (0..n).step_by(plan.per_gemm).collect();
    let run = |first: usize, acc: &mut Vec<T>| group(first, plan.per_gemm.min(n - first), acc, plan.par);
    let zero = || vec![T::zero(); len];
    if plan.parallel {
        let per = firsts.len().div_ceil(rayon::current_num_threads());
        firsts
            .par_chunks(per)
            .map(|chunk| {
                let mut acc = zero();
                chunk.iter().for_each(|&first| run(first, &mut acc));
                acc
            })
            .reduce(zero, |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            })
    } else {
        let mut acc = zero();
        firsts.iter().for_each(|&first| run(first, &mut acc));
        acc
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
            self.forward(&Images::contiguous(x, plane), w, &d)
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

/// The gradients (dx, dW) of the convolution of `x` by `w` with `window`, for the output's
/// gradient `dy`.
pub(super) fn backward(x: &Tensor, w: &Tensor, dy: &Tensor, window: Window) -> Result<(Tensor, Tensor)> {
    let dy = dy.contiguous()?;
    let (cout, cin) = (w.dim(0)?, w.dim(1)?);
    if ConvOp(window).adjoint().is_some() && cout < cin {
        // The forward pass went by taps: one op unfolds dy once for both gradients.
        let packed = x.apply_op3_no_bwd(w, &dy, &ConvGradsByTaps(window))?;
        let numel = x.elem_count();
        let dx = packed.narrow(0, 0, numel)?.reshape(x.dims())?;
        let dw = packed.narrow(0, numel, w.elem_count())?.reshape(w.dims())?;
        return Ok((dx, dw));
    }
    let dx = dy.apply_op2_no_bwd(
        w,
        &ConvInputGrad {
            x_dims: x.dims().to_vec(),
            window,
        },
    )?;
    let dw = x.apply_op2_no_bwd(
        &dy,
        &ConvWeightGrad {
            w_dims: w.dims().to_vec(),
            window,
        },
    )?;
    Ok((dx, dw))
}

/// Inference: (x, W) → conv(max(0, x·scale + shift)), the eval-mode batch norm and ReLU
/// applied as the convolution reads x, whose images may lie apart (a channel range of a dense
/// block's buffer). No backward.
pub(super) struct NormReluConvOp {
    pub window: Window,
    pub norm_relu: BnReluEval,
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
        let w = super::cpu::contiguous(w, wl, self.name())?;
        Ok(ConvOp(self.window).forward(&x, w, d))
    }
}

/// (dy, W) → dx.
struct ConvInputGrad {
    x_dims: Vec<usize>,
    window: Window,
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "conv2d-gemm-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = ConvOp(self.window);
        let x_layout = Layout::contiguous(self.x_dims.as_slice());
        let d = op.dims(&x_layout, l2)?;
        let out = float_kernel!(self.name(), [dy: s1, l1; w: s2, l2], op.input_grad(dy, w, &d));
        Ok((out, Shape::from(self.x_dims.as_slice())))
    }
}

/// (x, W, dy) → dx and dW packed, for a conv whose forward pass goes by taps.
struct ConvGradsByTaps(Window);

impl CustomOp3 for ConvGradsByTaps {
    fn name(&self) -> &'static str {
        "conv2d-gemm-grads-by-taps"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = ConvOp(self.0);
        let d = op.dims(l1, l2)?;
        let Some(adjoint) = op.by_taps(&d) else {
            candle_core::bail!("{}: the conv does not go by taps", self.name());
        };
        if l3.shape().elem_count() != d.n * d.cout * d.l {
            candle_core::bail!("{}: dy {:?} does not fit the conv", self.name(), l3.dims());
        }
        let out = float_kernel!(self.name(), [x: s1, l1; w: s2, l2; dy: s3, l3], op.grads_by_taps(
            adjoint, x, w, dy, &d
        ));
        Ok((out, Shape::from(d.n * d.cin * d.h * d.w + d.cout * d.kk)))
    }
}

/// (x, dy) → dW.
struct ConvWeightGrad {
    w_dims: Vec<usize>,
    window: Window,
}

impl CustomOp2 for ConvWeightGrad {
    fn name(&self) -> &'static str {
        "conv2d-gemm-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = ConvOp(self.window);
        let w_layout = Layout::contiguous(self.w_dims.as_slice());
        let d = op.dims(l1, &w_layout)?;
        let out = float_kernel!(self.name(), [x: s1, l1; dy: s2, l2], op.weight_grad(x, dy, &d));
        Ok((out, Shape::from(self.w_dims.as_slice())))
    }
}
