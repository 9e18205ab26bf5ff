//! Small per-channel kernels with their own backward, where candle's generic ops reduce over
//! strided dimensions one element at a time: adding a conv bias, and 2×2 average pooling.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{float_kernel, unwritten_vec, Float};

/// y (N, C, H, W) + b (C) broadcast over N, H, W; the bias gradient is a per-channel sum.
pub(crate) struct BiasAdd;

/// Per-channel sums of (N, C, H, W) → (C).
struct ChannelSum;

fn add_bias<T: Float>(y: &[T], b: &[T], c: usize, hw: usize) -> Vec<T> {
    let mut out = y.to_vec();
    out.par_chunks_mut(hw).enumerate().for_each(|(plane, o)| {
        let bias = b[plane % c];
        o.iter_mut().for_each(|v| *v += bias);
    });
    out
}

fn channel_sum<T: Float>(g: &[T], n: usize, c: usize, hw: usize) -> Vec<T> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut s = 0f64;
            for img in 0..n {
                s += g[(img * c + ch) * hw..(img * c + ch + 1) * hw]
                    .iter()
                    .map(|v| v.to_f64())
                    .sum::<f64>();
            }
            T::from_f64(s)
        })
        .collect()
}

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l1.shape().dims4()?;
        let out = float_kernel!(self.name(), [y: s1, l1; b: s2, l2], add_bias(y, b, c, h * w));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = grad.contiguous()?.apply_op1_no_bwd(&ChannelSum)?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "channel-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let out = float_kernel!(self.name(), [g: storage, layout], channel_sum(g, n, c, h * w));
        Ok((out, Shape::from(c)))
    }
}

/// 2×2/2 average pooling, floor mode: (N, C, H, W) → (N, C, H/2, W/2).
pub(crate) struct AvgPool2x2;

/// Its adjoint: each output gradient spread as a quarter over its window.
struct AvgPool2x2Backward {
    height: usize,
    width: usize,
}

fn avg_pool<T: Float>(x: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let (ho, wo) = (h / 2, w / 2);
    // SAFETY: each of the planes' ho·wo outputs is written once below.
    let mut out = unsafe { unwritten_vec(planes * ho * wo) };
    let quarter = T::from_f64(0.25);
    out.par_chunks_mut((ho * wo).max(1))
        .enumerate()
        .for_each(|(p, o)| {
            let src = &x[p * h * w..(p + 1) * h * w];
            for oy in 0..ho {
                let (r0, r1) = (&src[2 * oy * w..], &src[(2 * oy + 1) * w..]);
                for ox in 0..wo {
                    o[oy * wo + ox] = (r0[2 * ox] + r0[2 * ox + 1] + r1[2 * ox] + r1[2 * ox + 1]) * quarter;
                }
            }
        });
    out
}

fn avg_pool_backward<T: Float>(g: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let (ho, wo) = (h / 2, w / 2);
    let mut out = vec![T::zero(); planes * h * w];
    let quarter = T::from_f64(0.25);
    out.par_chunks_mut(h * w).enumerate().for_each(|(p, o)| {
        let src = &g[p * ho * wo..(p + 1) * ho * wo];
        for oy in 0..ho {
            for ox in 0..wo {
                let v = src[oy * wo + ox] * quarter;
                for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    o[(2 * oy + dy) * w + 2 * ox + dx] = v;
                }
            }
        }
    });
    out
}

impl CustomOp1 for AvgPool2x2 {
    fn name(&self) -> &'static str {
        "avg-pool-2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let out = float_kernel!(self.name(), [x: storage, layout], avg_pool(x, n * c, h, w));
        Ok((out, Shape::from((n, c, h / 2, w / 2))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, height, width) = arg.dims4()?;
        let op = AvgPool2x2Backward { height, width };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

impl CustomOp1 for AvgPool2x2Backward {
    fn name(&self) -> &'static str {
        "avg-pool-2x2-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, _, _) = layout.shape().dims4()?;
        let (h, w) = (self.height, self.width);
        let out = float_kernel!(self.name(), [g: storage, layout], avg_pool_backward(g, n * c, h, w));
        Ok((out, Shape::from((n, c, h, w))))
    }
}
