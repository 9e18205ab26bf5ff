//! The CPU convolution: one GEMM per image in NCHW, forward and backward, with no batch-sized
//! intermediate. For each image n, with K = Cin·k·k and L = H'·W':
//! - forward: y[n] (Cout×L) = W (Cout×K) · cols[n] (K×L);
//! - input gradient: dx[n] = col2im(Wᵀ (K×Cout) · dy[n] (Cout×L));
//! - weight gradient: dW (Cout×K) = Σₙ dy[n] (Cout×L) · cols[n]ᵀ (L×K).
//!
//! cols[n] is the image itself for a 1×1 conv, else its `im2col` columns. Images are spread
//! over threads; a batch smaller than the thread count lets each GEMM use them instead.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu::float_kernel;
use super::im2col::{fold, unfold, Window};

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

/// How to spread `n` images over the threads: (images in parallel?, GEMM parallelism).
fn plan(n: usize) -> (bool, Parallelism) {
    let threads = rayon::current_num_threads();
    if n >= threads && threads > 1 {
        (true, Parallelism::None)
    } else {
        (false, Parallelism::Rayon(threads))
    }
}

/// dst (m×n) = a (m×k) · b (k×n), all row-major, optionally accumulating; `b_transposed`
/// reads b as the transpose of a row-major (n×k) matrix.
#[allow(clippy::too_many_arguments)]
fn matmul<T: WithDType>(
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

/// Runs `f(image index, output chunk)` over every image, in parallel or not.
fn for_each_image<T: Send>(
    out: &mut [T],
    chunk: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if parallel {
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, o)| f(i, o));
    } else {
        out.chunks_mut(chunk).enumerate().for_each(|(i, o)| f(i, o));
    }
}

impl ConvOp {
    pub(super) fn forward<T: WithDType>(&self, x: &[T], weight: &[T], d: &Dims) -> Vec<T> {
        let (parallel, par) = plan(d.n);
        let mut y = vec![T::zero(); d.n * d.cout * d.l];
        for_each_image(&mut y, d.cout * d.l, parallel, |i, out| {
            let image = &x[i * d.cin * d.h * d.w..(i + 1) * d.cin * d.h * d.w];
            if self.0.is_pointwise() {
                matmul(out, weight, image, (d.cout, d.kk, d.l), false, false, false, par);
            } else {
                let mut cols = vec![T::zero(); d.kk * d.l];
                unfold(image, d.cin, d.h, d.w, self.0, &mut cols);
                matmul(out, weight, &cols, (d.cout, d.kk, d.l), false, false, false, par);
            }
        });
        y
    }

    fn input_grad<T: WithDType>(&self, dy: &[T], weight: &[T], d: &Dims) -> Vec<T> {
        if let Some(adjoint) = self.adjoint() {
            return self.input_grad_as_conv(adjoint, dy, weight, d);
        }
        let (parallel, par) = plan(d.n);
        let plane = d.cin * d.h * d.w;
        let mut dx = vec![T::zero(); d.n * plane];
        for_each_image(&mut dx, plane, parallel, |i, out| {
            let g = &dy[i * d.cout * d.l..(i + 1) * d.cout * d.l];
            if self.0.is_pointwise() {
                matmul(out, weight, g, (d.kk, d.cout, d.l), true, false, false, par);
            } else {
                let mut cols = vec![T::zero(); d.kk * d.l];
                matmul(&mut cols, weight, g, (d.kk, d.cout, d.l), true, false, false, par);
                fold(&cols, d.cin, d.h, d.w, self.0, out);
            }
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
    fn input_grad_as_conv<T: WithDType>(&self, adjoint: Window, dy: &[T], weight: &[T], d: &Dims) -> Vec<T> {
        let k2 = self.0.kernel * self.0.kernel;
        let row = d.cout * k2;
        let mut flipped = vec![T::zero(); d.cin * row];
        for co in 0..d.cout {
            for ci in 0..d.cin {
                for tap in 0..k2 {
                    flipped[ci * row + co * k2 + (k2 - 1 - tap)] = weight[(co * d.cin + ci) * k2 + tap];
                }
            }
        }
        let of_dy = Dims {
            n: d.n,
            cin: d.cout,
            h: self.0.out(d.h),
            w: self.0.out(d.w),
            cout: d.cin,
            kk: row,
            l: d.h * d.w,
        };
        ConvOp(adjoint).forward(dy, &flipped, &of_dy)
    }

    fn weight_grad<T: WithDType>(&self, x: &[T], dy: &[T], d: &Dims) -> Vec<T> {
        let (parallel, par) = plan(d.n);
        let plane = d.cin * d.h * d.w;
        let one = |i: usize, acc: &mut Vec<T>, cols: &mut Vec<T>| {
            let image = &x[i * plane..(i + 1) * plane];
            let g = &dy[i * d.cout * d.l..(i + 1) * d.cout * d.l];
            let cols: &[T] = if self.0.is_pointwise() {
                image
            } else {
                unfold(image, d.cin, d.h, d.w, self.0, cols);
                cols
            };
            matmul(acc, g, cols, (d.cout, d.l, d.kk), false, true, true, par);
        };
        let zero = || (vec![T::zero(); d.cout * d.kk], vec![T::zero(); d.kk * d.l]);
        if parallel {
            let threads = rayon::current_num_threads();
            let per = d.n.div_ceil(threads);
            (0..threads)
                .into_par_iter()
                .map(|t| {
                    let (mut acc, mut cols) = zero();
                    for i in (t * per)..((t + 1) * per).min(d.n) {
                        one(i, &mut acc, &mut cols);
                    }
                    acc
                })
                .reduce(
                    || vec![T::zero(); d.cout * d.kk],
                    |mut a, b| {
                        a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                        a
                    },
                )
        } else {
            let (mut acc, mut cols) = zero();
            (0..d.n).for_each(|i| one(i, &mut acc, &mut cols));
            acc
        }
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
        let out = float_kernel!(self.name(), [x: s1, l1; w: s2, l2], self.forward(x, w, &d));
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
