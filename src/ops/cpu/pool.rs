//! The max pool on the CPU: rows of a window reduced a whole input row at a time, then its
//! columns; and its backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{float_kernel, unwritten_vec, Float};

/// The max pool's kernel, with its own backward (the first maximum of each window gets the
/// gradient, as in PyTorch).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

/// The geometry of one pooling call.
struct Window {
    n: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
}

impl MaxPool2d {
    fn window(&self, layout: &Layout) -> Result<Window> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let out = |side: usize| {
            (side + 2 * self.padding)
                .checked_sub(self.kernel)
                .map(|m| m / self.stride + 1)
        };
        match (out(h), out(w)) {
            (Some(ho), Some(wo)) if self.padding * 2 <= self.kernel => Ok(Window {
                n: n * c,
                h,
                w,
                ho,
                wo,
            }),
            _ => candle_core::bail!(
                "max pool {k}×{k}/{s} with padding {p} does not fit an input of {h}×{w}",
                k = self.kernel,
                s = self.stride,
                p = self.padding
            ),
        }
    }

    /// Calls `visit(output index, input index of the window's first maximum)` for one plane.
    fn for_each_argmax<T: Float>(&self, src: &[T], g: &Window, mut visit: impl FnMut(usize, usize)) {
        {
            for oy in 0..g.ho {
                let ys = self.span(oy, g.h);
                for ox in 0..g.wo {
                    let xs = self.span(ox, g.w);
                    let mut best = ys.start * g.w + xs.start;
                    for iy in ys.clone() {
                        for ix in xs.clone() {
                            let v = src[iy * g.w + ix];
                            #[allow(clippy::eq_op)]
                            let is_nan = v != v;
                            if v > src[best] || is_nan {
                                best = iy * g.w + ix;
                                if is_nan {
                                    break;
                                }
                            }
                        }
                    }
                    visit(oy * g.wo + ox, best);
                }
            }
        }
    }

    /// The rows (or columns) of the window at output position `o` along a side of `len`.
    fn span(&self, o: usize, len: usize) -> std::ops::Range<usize> {
        let start = (o * self.stride) as isize - self.padding as isize;
        start.max(0) as usize..((start + self.kernel as isize) as usize).min(len)
    }

    /// The maxima, as [`MaxPool2d::for_each_argmax`] finds them, a row of outputs at a time:
    /// the maximum over the window's rows first, a whole input row at once (a loop that
    /// vectorises), then over the window's columns of that row.
    fn forward<T: Float>(&self, x: &[T], g: &Window) -> Vec<T> {
        // SAFETY: each plane's ho rows of wo outputs are written below, one by one.
        let mut out = unsafe { unwritten_vec(g.n * g.ho * g.wo) };
        if g.ho * g.wo == 0 {
            return out;
        }
        // The larger of two values, NaN if either is (as torch's max pool).
        #[allow(clippy::eq_op)]
        let larger = |a: T, b: T| if b > a || b != b { b } else { a };
        out.par_chunks_mut(g.ho * g.wo)
            .enumerate()
            .for_each(|(plane, dst)| {
                let src = &x[plane * g.h * g.w..(plane + 1) * g.h * g.w];
                let mut column_max = vec![T::zero(); g.w];
                for (oy, dst) in dst.chunks_exact_mut(g.wo).enumerate() {
                    let mut rows = self.span(oy, g.h).map(|y| &src[y * g.w..(y + 1) * g.w]);
                    column_max.copy_from_slice(rows.next().expect("a window has a row"));
                    for row in rows {
                        column_max
                            .iter_mut()
                            .zip(row)
                            .for_each(|(m, v)| *m = larger(*m, *v));
                    }
                    for (ox, o) in dst.iter_mut().enumerate() {
                        let cols = &column_max[self.span(ox, g.w)];
                        *o = cols[1..].iter().fold(cols[0], |m, v| larger(m, *v));
                    }
                }
            });
        out
    }

    fn backward<T: Float>(&self, x: &[T], grad: &[T], g: &Window) -> Vec<T> {
        let mut out = vec![T::zero(); g.n * g.h * g.w];
        out.par_chunks_mut(g.h * g.w)
            .enumerate()
            .for_each(|(plane, dst)| {
                let src = &x[plane * g.h * g.w..(plane + 1) * g.h * g.w];
                let dy = &grad[plane * g.ho * g.wo..(plane + 1) * g.ho * g.wo];
                self.for_each_argmax(src, g, |o, i| dst[i] += dy[o]);
            });
        out
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.window(layout)?;
        let (n, c, _, _) = layout.shape().dims4()?;
        let shape = Shape::from((n, c, g.ho, g.wo));
        let out = float_kernel!(self.name(), [x: storage, layout], self.forward(x, &g));
        Ok((out, shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = arg.apply_op2_no_bwd(&grad_res.contiguous()?, &MaxPool2dBackward(*self))?;
        Ok(Some(grad))
    }
}

/// The gradient of [`MaxPool2d`] with respect to its input: (input, grad of output) → grad of input.
struct MaxPool2dBackward(MaxPool2d);

impl CustomOp2 for MaxPool2dBackward {
    fn name(&self) -> &'static str {
        "max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let pool = &self.0;
        let g = pool.window(l1)?;
        let out = float_kernel!(self.name(), [x: s1, l1; d: s2, l2], pool.backward(x, d, &g));
        Ok((out, l1.shape().clone()))
    }
}
