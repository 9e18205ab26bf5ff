//! Training-mode batch norm fused with the ReLU that always follows it in a DenseNet, as one
//! CPU kernel forward and one backward, with the analytical gradient:
//!
//! y = max(0, γ·x̂ + β), x̂ = (x − μ)/√(σ² + ε), μ and σ² the batch mean and biased variance;
//! with g = dy·[y > 0]: dβ = Σg, dγ = Σg·x̂, dx = γ/√(σ² + ε) · (g − mean(g) − x̂·mean(g·x̂)).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::cpu::float_kernel;

/// Per-channel batch statistics of one forward pass.
#[derive(Debug, Clone, Default)]
pub struct BatchStats {
    /// μ per channel.
    pub mean: Vec<f64>,
    /// Biased σ² per channel.
    pub var: Vec<f64>,
}

/// The fused op; `stats` is filled by the forward pass for the caller and the backward pass.
pub struct BnReluTrain {
    pub eps: f64,
    pub stats: Arc<Mutex<BatchStats>>,
}

/// Per-channel sums over (N, H, W) of `f(n, c, i)`, computed in parallel over channels.
fn channel_sums(
    n: usize,
    c: usize,
    hw: usize,
    f: impl Fn(usize, usize, usize) -> (f64, f64) + Sync,
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut a, mut b) = (0f64, 0f64);
            for img in 0..n {
                for i in 0..hw {
                    let (da, db) = f(img, ch, i);
                    a += da;
                    b += db;
                }
            }
            (a, b)
        })
        .collect()
}

impl BnReluTrain {
    /// y = max(0, γ·x̂ + β) for `x` (n, c, hw), recording the batch statistics in `stats`.
    pub(super) fn forward<T: WithDType>(
        &self,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        n: usize,
        c: usize,
        hw: usize,
    ) -> Vec<T> {
        let count = (n * hw) as f64;
        let at = |img: usize, ch: usize, i: usize| x[(img * c + ch) * hw + i].to_f64();
        let mean: Vec<f64> = channel_sums(n, c, hw, |img, ch, i| (at(img, ch, i), 0.0))
            .into_iter()
            .map(|(s, _)| s / count)
            .collect();
        let var: Vec<f64> = channel_sums(n, c, hw, |img, ch, i| {
            let d = at(img, ch, i) - mean[ch];
            (d * d, 0.0)
        })
        .into_iter()
        .map(|(s, _)| s / count)
        .collect();
        let scale: Vec<f64> = (0..c)
            .map(|ch| gamma[ch].to_f64() / (var[ch] + self.eps).sqrt())
            .collect();
        let shift: Vec<f64> = (0..c)
            .map(|ch| beta[ch].to_f64() - mean[ch] * scale[ch])
            .collect();
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(hw).enumerate().for_each(|(plane, out)| {
            let ch = plane % c;
            let (a, b) = (scale[ch], shift[ch]);
            for (o, v) in out.iter_mut().zip(&x[plane * hw..(plane + 1) * hw]) {
                let z = v.to_f64() * a + b;
                // Like torch's ReLU, NaN passes through (f64::max would turn it into 0).
                *o = T::from_f64(if z > 0.0 || z.is_nan() { z } else { 0.0 });
            }
        });
        *self.stats.lock().expect("stats lock") = BatchStats { mean, var };
        y
    }
}

impl CustomOp3 for BnReluTrain {
    fn name(&self) -> &'static str {
        "batch-norm-relu-train"
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
        let (n, c, h, w) = l1.shape().dims4()?;
        let out = float_kernel!(self.name(), [x: s1, l1; g: s2, l2; b: s3, l3], self.forward(
            x,
            g,
            b,
            n,
            c,
            h * w
        ));
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dgamma, dbeta) = backward(x, gamma, y, dy, self.eps, self.stats.clone())?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// The gradients (dx, dγ, dβ) of the fused op for input `x`, its output `y` and the output's
/// gradient `dy`, given the batch statistics its forward pass recorded in `stats`.
pub(super) fn backward(
    x: &Tensor,
    gamma: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    eps: f64,
    stats: Arc<Mutex<BatchStats>>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, h, w) = x.dims4()?;
    let op = BnReluBackward {
        eps,
        stats,
        gamma: gamma.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?,
    };
    // One packed result: dx (N·C·H·W), then dγ (C), then dβ (C).
    let packed = x.apply_op3_no_bwd(y, &dy.contiguous()?, &op)?;
    let numel = n * c * h * w;
    let dx = packed.narrow(0, 0, numel)?.reshape((n, c, h, w))?;
    let dgamma = packed.narrow(0, numel, c)?;
    let dbeta = packed.narrow(0, numel + c, c)?;
    Ok((dx, dgamma, dbeta))
}

struct BnReluBackward {
    eps: f64,
    stats: Arc<Mutex<BatchStats>>,
    gamma: Vec<f64>,
}

impl BnReluBackward {
    fn backward<T: WithDType>(&self, x: &[T], y: &[T], dy: &[T], n: usize, c: usize, hw: usize) -> Vec<T> {
        let stats = self.stats.lock().expect("stats lock").clone();
        let count = (n * hw) as f64;
        let inv_std: Vec<f64> = stats.var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        let g = |k: usize| if y[k] > T::zero() { dy[k].to_f64() } else { 0.0 };
        let sums = channel_sums(n, c, hw, |img, ch, i| {
            let k = (img * c + ch) * hw + i;
            let gk = g(k);
            (gk, gk * (x[k].to_f64() - stats.mean[ch]) * inv_std[ch])
        });
        let numel = x.len();
        let mut out = vec![T::zero(); numel + 2 * c];
        let (dx, tail) = out.split_at_mut(numel);
        dx.par_chunks_mut(hw).enumerate().for_each(|(plane, d)| {
            let ch = plane % c;
            let (sum_g, sum_gx) = sums[ch];
            let (mean_g, mean_gx) = (sum_g / count, sum_gx / count);
            let k0 = plane * hw;
            let a = self.gamma[ch] * inv_std[ch];
            for (i, out) in d.iter_mut().enumerate() {
                let k = k0 + i;
                let xhat = (x[k].to_f64() - stats.mean[ch]) * inv_std[ch];
                *out = T::from_f64(a * (g(k) - mean_g - xhat * mean_gx));
            }
        });
        for ch in 0..c {
            tail[ch] = T::from_f64(sums[ch].1);
            tail[c + ch] = T::from_f64(sums[ch].0);
        }
        out
    }
}

impl CustomOp3 for BnReluBackward {
    fn name(&self) -> &'static str {
        "batch-norm-relu-backward"
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
        let (n, c, h, w) = l1.shape().dims4()?;
        let out = float_kernel!(self.name(), [x: s1, l1; y: s2, l2; d: s3, l3], self.backward(
            x,
            y,
            d,
            n,
            c,
            h * w
        ));
        Ok((out, Shape::from(n * c * h * w + 2 * c)))
    }
}
