//! The CPU convolution's backward pass (see [`super::conv`] for the layout and the GEMMs):
//! the input gradient, by a convolution of dy with the flipped, transposed weight where the
//! window allows, else `col2im` of Wᵀ·dy; the weight gradient, Σₙ dy[n]·cols[n]ᵀ; and, for a
//! convolution that went by taps, both from one unfolding of dy.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::conv::{
    aligned_width, for_each_group, matmul, matmul_into_images, plan, side_by_side, ConvOp, Dims, Images,
    Plan, Weights,
};
use super::im2col::{fold, Window};
use super::{float_kernel, unwritten_vec, Float};

impl ConvOp {
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
    pub(super) fn adjoint(&self) -> Option<Window> {
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
        let flipped = Weights::Torch(&flipped);
        ConvOp(adjoint).forward(&Images::contiguous(dy, d.cout * d.l), flipped, &of_dy)
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

/// The gradients (dx, dW) of the convolution of `x` by `w` with `window`, for the output's
/// gradient `dy`.
pub(crate) fn backward(x: &Tensor, w: &Tensor, dy: &Tensor, window: Window) -> Result<(Tensor, Tensor)> {
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
