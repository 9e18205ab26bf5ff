//! Training-mode batch norm fused with the ReLU that always follows it in a DenseNet, as one
//! CPU kernel forward and one backward, with the analytical gradient:
//!
//! y = max(0, γ·x̂ + β), x̂ = (x − μ)/√(σ² + ε), μ and σ² the batch mean and biased variance;
//! with g = dy·[y > 0]: dβ = Σg, dγ = Σg·x̂, dx = γ/√(σ² + ε) · (g − mean(g) − x̂·mean(g·x̂)).
//!
//! With a [`BatchNormGroup`] the batch is the union of the processes' parts: μ, σ², mean(g) and
//! mean(g·x̂) are taken over all of it (`batch_norm_group`).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{float_kernel, unwritten_vec, Float};
use crate::ops::batch_norm_group::{global_moments, BatchNormGroup};

/// Per-channel batch statistics of one forward pass.
#[derive(Debug, Clone, Default)]
pub struct BatchStats {
    /// Values per channel they were taken over: N·H·W, summed over the processes of a group.
    pub count: f64,
    /// μ per channel.
    pub mean: Vec<f64>,
    /// Biased σ² per channel.
    pub var: Vec<f64>,
}

/// The fused op; `stats` is filled by the forward pass for the caller and the backward pass.
/// With a `group`, the statistics are those of the group's whole batch.
pub struct BnReluTrain {
    pub eps: f64,
    pub stats: Arc<Mutex<BatchStats>>,
    pub group: Option<Arc<dyn BatchNormGroup>>,
}

/// Independent partial sums per loop: the loops over them vectorise, and a sum does not depend
/// on the thread count.
const LANES: usize = 8;

/// (Σd, Σd²) over `xs` with d = x − `pivot`, in f64: the first two moments in one pass. A
/// pivot near the mean (a value of the channel) keeps Σd² − (Σd)²/n from cancelling.
fn moments<T: Float>(xs: &[T], pivot: f64) -> [f64; 2] {
    let (mut s1, mut s2) = ([0f64; LANES], [0f64; LANES]);
    let chunks = xs.chunks_exact(LANES);
    let [mut t1, mut t2] = [0.0; 2];
    for v in chunks.remainder() {
        let d = v.to_f64() - pivot;
        t1 += d;
        t2 += d * d;
    }
    for chunk in chunks {
        let chunk: &[T; LANES] = chunk.try_into().expect("chunks of LANES");
        for j in 0..LANES {
            let d = chunk[j].to_f64() - pivot;
            s1[j] += d;
            s2[j] += d * d;
        }
    }
    [s1.iter().sum::<f64>() + t1, s2.iter().sum::<f64>() + t2]
}

/// (Σg, Σg·(x − mean)) over one plane, with g = dy where y > 0, else 0.
fn grad_sums<T: Float>(x: &[T], y: &[T], dy: &[T], mean: f64) -> (f64, f64) {
    let term = |x: &T, y: &T, dy: &T| {
        let g = if *y > T::zero() { dy.to_f64() } else { 0.0 };
        (g, g * (x.to_f64() - mean))
    };
    let (mut sg, mut sgx) = ([0f64; LANES], [0f64; LANES]);
    let chunks = x
        .chunks_exact(LANES)
        .zip(y.chunks_exact(LANES))
        .zip(dy.chunks_exact(LANES));
    for ((xc, yc), dc) in chunks {
        let xc: &[T; LANES] = xc.try_into().expect("chunks of LANES");
        let yc: &[T; LANES] = yc.try_into().expect("chunks of LANES");
        let dc: &[T; LANES] = dc.try_into().expect("chunks of LANES");
        for j in 0..LANES {
            let (g, gx) = term(&xc[j], &yc[j], &dc[j]);
            sg[j] += g;
            sgx[j] += gx;
        }
    }
    let (mut tail_g, mut tail_gx) = (0.0, 0.0);
    let done = x.len() / LANES * LANES;
    for k in done..x.len() {
        let (g, gx) = term(&x[k], &y[k], &dy[k]);
        tail_g += g;
        tail_gx += gx;
    }
    (sg.iter().sum::<f64>() + tail_g, sgx.iter().sum::<f64>() + tail_gx)
}

/// Eval-mode batch norm and ReLU in one pass, for inference: y = max(0, x·scale + shift) per
/// channel, with scale = γ/√(running σ² + ε) and shift = β − running μ·scale. No backward.
/// The training op applies its batch statistics through it too, and the convolution through
/// it reads its input already normalised (`conv_backward::Images`).
#[derive(Debug)]
pub struct BnReluEval {
    pub scale: Vec<f64>,
    pub shift: Vec<f64>,
}

impl BnReluEval {
    /// `dst` = max(0, `src`·scale + shift) for values of channel `ch`, in T's precision as
    /// torch computes it. Like torch's ReLU, NaN passes through (`max` would turn it into 0).
    #[inline]
    pub(crate) fn apply<T: Float>(&self, ch: usize, src: &[T], dst: &mut [T]) {
        let (a, b) = (T::from_f64(self.scale[ch]), T::from_f64(self.shift[ch]));
        for (o, v) in dst.iter_mut().zip(src) {
            let z = *v * a + b;
            *o = if z <= T::zero() { T::zero() } else { z };
        }
    }

    /// The map over `x`, n images of (c, hw) that start `image_stride` apart, into a
    /// contiguous (n, c, hw), in parallel over images.
    fn planes<T: Float>(&self, x: &[T], n: usize, image_stride: usize, c: usize, hw: usize) -> Vec<T> {
        // SAFETY: each image's c planes of hw are written below by `apply`, which maps every
        // element of its plane; with c·hw = 0 the vector is empty.
        let mut y = unsafe { unwritten_vec(n * c * hw) };
        if c * hw == 0 {
            return y;
        }
        y.par_chunks_mut(c * hw).enumerate().for_each(|(img, out)| {
            for (ch, dst) in out.chunks_mut(hw).enumerate() {
                self.apply(ch, &x[img * image_stride + ch * hw..], dst);
            }
        });
        y
    }
}

impl CustomOp1 for BnReluEval {
    fn name(&self) -> &'static str {
        "batch-norm-relu-eval"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l1.shape().dims4()?;
        if c != self.scale.len() {
            candle_core::bail!("{}: {c} channels, {} scales", self.name(), self.scale.len());
        }
        // Each image contiguous, images possibly apart: a channel range of a wider tensor, as
        // a dense block's buffer at inference.
        let Some(stride) = image_stride(l1) else {
            candle_core::bail!("{}: each image must be contiguous", self.name());
        };
        let n = l1.dims()[0];
        let span = if n == 0 { 0 } else { (n - 1) * stride + c * h * w };
        let part = l1.start_offset()..l1.start_offset() + span;
        let hw = h * w;
        let out = match s1 {
            CpuStorage::F32(x) => CpuStorage::F32(self.planes(&x[part], n, stride, c, hw)),
            CpuStorage::F64(x) => CpuStorage::F64(self.planes(&x[part], n, stride, c, hw)),
            _ => candle_core::bail!("{}: needs f32 or f64", self.name()),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// The distance between images of a 4-D layout whose every image is contiguous, if it is one.
pub(crate) fn image_stride(layout: &Layout) -> Option<usize> {
    let (dims, stride) = (layout.dims(), layout.stride());
    if dims.len() != 4 {
        return None;
    }
    let inner_contiguous = (dims[3] == 1 || stride[3] == 1)
        && (dims[2] == 1 || stride[2] == dims[3])
        && (dims[1] == 1 || stride[1] == dims[2] * dims[3]);
    inner_contiguous.then(|| {
        if dims[0] == 1 {
            dims[1] * dims[2] * dims[3]
        } else {
            stride[0]
        }
    })
}

/// `f(channel, plane of x, plane of y, plane of dy)` for each of the n·c planes of (n, c, hw)
/// tensors (pass `x` for those not needed), in an (n, c) table, in parallel over images: a
/// sweep through contiguous memory, whose cost per plane stays small when planes are 1×1.
fn plane_table<T: Float, R: Copy + Default + Send>(
    (x, y, dy): (&[T], &[T], &[T]),
    c: usize,
    hw: usize,
    f: impl Fn(usize, &[T], &[T], &[T]) -> R + Sync,
) -> Vec<R> {
    let image = c * hw;
    if image == 0 {
        return Vec::new();
    }
    let mut table = vec![R::default(); x.len() / hw];
    let images = x
        .par_chunks(image)
        .zip(y.par_chunks(image))
        .zip(dy.par_chunks(image));
    table
        .par_chunks_mut(c)
        .zip(images)
        .for_each(|(row, ((x, y), dy))| {
            let planes = x.chunks(hw).zip(y.chunks(hw)).zip(dy.chunks(hw));
            for (ch, (o, ((x, y), dy))) in row.iter_mut().zip(planes).enumerate() {
                *o = f(ch, x, y, dy);
            }
        });
    table
}

/// Column `ch` of an (n, c) table summed over its n rows, in row order (so the sum does not
/// depend on the thread count), for every channel.
fn channel_totals(table: &[f64], c: usize) -> Vec<f64> {
    let mut totals = vec![0.0; c];
    for row in table.chunks(c) {
        totals.iter_mut().zip(row).for_each(|(t, v)| *t += v);
    }
    totals
}

impl BnReluTrain {
    /// y = max(0, γ·x̂ + β) for `x` (n, c, hw), recording the batch statistics in `stats`.
    pub(crate) fn forward<T: Float>(
        &self,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        n: usize,
        c: usize,
        hw: usize,
    ) -> Result<Vec<T>> {
        let local = (n * hw) as f64;
        // Moments about a value of each channel (its first in image 0), in one pass.
        let pivot: Vec<f64> = (0..c)
            .map(|ch| x.get(ch * hw).map_or(0.0, |v| v.to_f64()))
            .collect();
        let table = plane_table((x, x, x), c, hw, |ch, p, _, _| moments(p, pivot[ch]));
        let (s1, s2): (Vec<f64>, Vec<f64>) = table.iter().map(|[a, b]| (*a, *b)).unzip();
        let (s1, s2) = (channel_totals(&s1, c), channel_totals(&s2, c));
        let mean: Vec<f64> = (0..c).map(|ch| pivot[ch] + s1[ch] / local).collect();
        let (count, mean, var) = match &self.group {
            None => {
                let var = (0..c)
                    .map(|ch| (s2[ch] / local - (s1[ch] / local).powi(2)).max(0.0))
                    .collect();
                (local, mean, var)
            }
            Some(group) => {
                let m2: Vec<f64> = (0..c)
                    .map(|ch| (s2[ch] - s1[ch] * s1[ch] / local).max(0.0))
                    .collect();
                let moments = global_moments(group.as_ref(), local, &mean, &m2)?;
                if moments.0 < 2.0 {
                    candle_core::bail!(
                        "batch norm in training needs more than one value per channel, got {} \
                         in the whole batch of the group",
                        moments.0
                    );
                }
                moments
            }
        };
        let scale: Vec<f64> = (0..c)
            .map(|ch| gamma[ch].to_f64() / (var[ch] + self.eps).sqrt())
            .collect();
        let shift = (0..c)
            .map(|ch| beta[ch].to_f64() - mean[ch] * scale[ch])
            .collect();
        let y = BnReluEval { scale, shift }.planes(x, n, c * hw, c, hw);
        *self.stats.lock().expect("stats lock") = BatchStats { count, mean, var };
        Ok(y)
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
        )?);
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
        let (dx, dgamma, dbeta) =
            backward(x, gamma, y, dy, self.eps, self.stats.clone(), self.group.clone())?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// The gradients (dx, dγ, dβ) of the fused op for input `x`, its output `y` and the output's
/// gradient `dy`, given the batch statistics its forward pass recorded in `stats`. With a
/// `group` (the forward's), dx is the gradient through the group's whole batch; dγ and dβ are
/// this process's part.
pub(crate) fn backward(
    x: &Tensor,
    gamma: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    eps: f64,
    stats: Arc<Mutex<BatchStats>>,
    group: Option<Arc<dyn BatchNormGroup>>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, h, w) = x.dims4()?;
    let op = BnReluBackward {
        eps,
        stats,
        gamma: gamma.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?,
        group,
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
    group: Option<Arc<dyn BatchNormGroup>>,
}

impl BnReluBackward {
    fn backward<T: Float>(&self, x: &[T], y: &[T], dy: &[T], c: usize, hw: usize) -> Result<Vec<T>> {
        let stats = self.stats.lock().expect("stats lock").clone();
        let count = stats.count;
        let inv_std: Vec<f64> = stats.var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        let table = plane_table((x, y, dy), c, hw, |ch, x, y, dy| {
            let (g, gx) = grad_sums(x, y, dy, stats.mean[ch]);
            [g, gx]
        });
        let (g, gx): (Vec<f64>, Vec<f64>) = table.iter().map(|[g, gx]| (*g, *gx)).unzip();
        let sum_g = channel_totals(&g, c);
        let sum_gx: Vec<f64> = channel_totals(&gx, c)
            .iter()
            .zip(&inv_std)
            .map(|(s, i)| s * i)
            .collect();
        // dx takes the sums over the group's whole batch; dγ and dβ stay this process's.
        let (batch_g, batch_gx) = match &self.group {
            None => (sum_g.clone(), sum_gx.clone()),
            Some(group) => {
                let mut sums = [sum_g.as_slice(), sum_gx.as_slice()].concat();
                group.all_reduce_sum(&mut sums)?;
                let gx = sums.split_off(c);
                (sums, gx)
            }
        };
        // dx = a·(g − mean_g − x̂·mean_gx) with x̂ = (x − μ)·s, as a·g + r·(x − μ) + q per
        // channel, in T's precision (x − μ first, which loses nothing when x is near μ).
        let coefficients: Vec<[T; 4]> = (0..c)
            .map(|ch| {
                let (a, s) = (self.gamma[ch] * inv_std[ch], inv_std[ch]);
                let (r, q) = (-a * s * batch_gx[ch] / count, -a * batch_g[ch] / count);
                [a, r, q, stats.mean[ch]].map(T::from_f64)
            })
            .collect();
        let numel = x.len();
        // SAFETY: dx (the first numel) is written image by image and plane by plane below,
        // and the tail's 2·c sums after it.
        let mut out = unsafe { unwritten_vec(numel + 2 * c) };
        let (dx, tail) = out.split_at_mut(numel);
        if numel > 0 {
            let image = c * hw;
            let inputs = x
                .par_chunks(image)
                .zip(y.par_chunks(image))
                .zip(dy.par_chunks(image));
            dx.par_chunks_mut(image)
                .zip(inputs)
                .for_each(|(d, ((x, y), dy))| {
                    let planes = d
                        .chunks_mut(hw)
                        .zip(x.chunks(hw))
                        .zip(y.chunks(hw))
                        .zip(dy.chunks(hw));
                    for (ch, (((d, x), y), dy)) in planes.enumerate() {
                        let [a, r, q, mean] = coefficients[ch];
                        for (((o, x), y), dy) in d.iter_mut().zip(x).zip(y).zip(dy) {
                            let g = if *y > T::zero() { *dy } else { T::zero() };
                            *o = a * g + r * (*x - mean) + q;
                        }
                    }
                });
        }
        tail[..c]
            .iter_mut()
            .zip(&sum_gx)
            .for_each(|(t, v)| *t = T::from_f64(*v));
        tail[c..]
            .iter_mut()
            .zip(&sum_g)
            .for_each(|(t, v)| *t = T::from_f64(*v));
        Ok(out)
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
            c,
            h * w
        )?);
        Ok((out, Shape::from(n * c * h * w + 2 * c)))
    }
}
