//! Memory-efficient training of a dense block: its feature maps stored once, in one buffer, and
//! each layer's batch norm and ReLU recomputed in the backward pass instead of stored, as in
//! Pleiss et al., "Memory-Efficient Implementation of DenseNets" (2017).
//!
//! A plain dense block keeps, for each layer l, its input concatenation (C_l channels) and that
//! concatenation normalised, for the backward pass: memory quadratic in the depth. Here layer l's
//! first unit, concat → BN → ReLU → conv, is one op ([`FirstUnit`]) that reads the first C_l
//! channels of the block's buffer and keeps nothing but its own output; its backward pass
//! recomputes BN-ReLU from the buffer. What stays per block is the buffer (the block's output)
//! and, in the backward pass, one gradient buffer of the same size.
//!
//! The buffer is written in place, which candle's autograd cannot see, so the gradient of the
//! feature maps takes a side path. Each appended feature map extends a chain of one-element
//! *tokens* ([`Append`]); every op that reads the buffer takes the latest token as its input.
//! In the backward pass those ops add the gradient of the channels they read into the block's
//! gradient buffer, and the token chain orders them before the [`Append`] of every feature map
//! they read: when an [`Append`] runs backward, the gradient of its channels is complete, and it
//! hands it to the feature map's producer. The sums are the ones candle's concatenation would
//! form, in the same order, so both modes give bit-identical results.
//!
//! # Invariant: backward after every consumer
//! All of this rests on one property of candle's `Tensor::backward`, which its topological
//! sort gives and `tests::backward_runs_after_every_consumer_of_an_output` pins: **an op's
//! backward runs only after the backward of every op that read its output.** If a candle
//! release broke it, an [`Append`] would hand on a gradient still missing terms, and that test
//! fails first. The batch statistics that a training [`BnReluTrain`] keeps for its backward ride
//! in the op itself, written by its forward, which always runs first.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use super::bn_relu::{self, BatchStats, BnReluTrain};
use super::conv::{ConvOp, Images, Weights};
use super::conv_backward;
use super::im2col::Window;
use super::{float_kernel, Float};
use crate::ops::batch_norm::values_per_channel;
use crate::ops::{BatchNorm2d, Conv2d};

/// What the ops of one block share.
struct Block {
    /// (N, C_total, H, W). In the forward pass, the buffer the feature maps are written into;
    /// from [`SharedFeatures::finish`] on, the block's output (detached), which holds the same.
    features: Mutex<Tensor>,
    /// (N, C_total, H, W): the gradient of every channel, summed over the ops that read it.
    /// Only during the backward pass.
    grad: Mutex<Option<Tensor>>,
}

impl Block {
    fn features(&self) -> Tensor {
        self.features.lock().expect("features lock").clone()
    }

    /// Adds `g` (N, c, H, W) to the gradient of the first c channels.
    fn add_grad(&self, g: &Tensor) -> Result<()> {
        let mut grad = self.grad.lock().expect("grad lock");
        match grad.as_ref() {
            Some(sum) => {
                let c = g.dim(1)?;
                sum.slice_set(&(sum.narrow(1, 0, c)? + g)?, 1, 0)
            }
            // The block's output is what every loss reads, so its gradient comes first and
            // starts the sum as it is.
            None => {
                let features = self.features();
                let sum = Tensor::zeros(features.shape(), g.dtype(), g.device())?;
                sum.slice_set(&g.contiguous()?, 1, 0)?;
                *grad = Some(sum);
                Ok(())
            }
        }
    }

    /// The gradient of channels offset..offset + c, complete once every op reading them is done.
    fn grad(&self, offset: usize, c: usize, like: &Tensor) -> Result<Tensor> {
        let mut grad = self.grad.lock().expect("grad lock");
        let g = match grad.as_ref() {
            Some(sum) => sum.narrow(1, offset, c)?.copy()?,
            None => like.zeros_like()?,
        };
        if offset == 0 {
            // The block input's gradient is the last one asked for: free the buffer.
            *grad = None;
        }
        Ok(g)
    }
}

/// The growing concatenation of a dense block in training, stored once.
///
/// ```text
/// let mut features = SharedFeatures::new(&x, out_channels)?;   // x (N, C0, H, W)
/// for layer in layers {
///     let y = features.norm_relu_conv(&layer.norm1, &layer.conv1)?;  // reads the C_l so far
///     features.push(&layer.rest(y))?;                              // appends k channels
/// }
/// let out = features.finish()?;                                  // (N, C0 + L·k, H, W)
/// ```
///
/// CPU, f32 or f64 only ([`super::cpu_kernels`]); elsewhere use the plain concatenation.
pub(crate) struct SharedFeatures {
    block: Arc<Block>,
    /// The last token: depends, in the graph, on every feature map pushed so far.
    token: Tensor,
    /// Channels pushed so far.
    channels: usize,
}

impl SharedFeatures {
    /// A buffer for `total_channels` channels, starting with the block input `x` (N, C0, H, W).
    pub(crate) fn new(x: &Tensor, total_channels: usize) -> Result<Self> {
        let (n, c0, h, w) = x.dims4()?;
        if c0 > total_channels {
            candle_core::bail!("shared features: the input has {c0} channels, the block {total_channels}");
        }
        let buffer = Tensor::zeros((n, total_channels, h, w), x.dtype(), x.device())?;
        let mut features = Self {
            block: Arc::new(Block {
                features: Mutex::new(buffer),
                grad: Mutex::new(None),
            }),
            token: Tensor::zeros(1, x.dtype(), x.device())?,
            channels: 0,
        };
        features.push(x)?;
        Ok(features)
    }

    /// Appends `x` (N, k, H, W) after the channels so far.
    pub(crate) fn push(&mut self, x: &Tensor) -> Result<()> {
        let x = x.contiguous()?;
        let c = x.dim(1)?;
        self.block.features().slice_set(&x, 1, self.channels)?;
        self.token = self.token.apply_op2(
            &x,
            Append {
                block: self.block.clone(),
                offset: self.channels,
            },
        )?;
        self.channels += c;
        Ok(())
    }

    /// conv(ReLU(norm(the concatenation so far))): (N, C_l, H, W) → (N, out, H', W'), in
    /// training mode (batch statistics, running ones updated). Keeps only its output.
    pub(crate) fn norm_relu_conv(&self, norm: &BatchNorm2d, conv: &Conv2d) -> Result<Tensor> {
        let (gamma, beta, eps) = norm.affine();
        let stats = Arc::new(Mutex::new(BatchStats::default()));
        let op = FirstUnit {
            block: self.block.clone(),
            channels: self.channels,
            window: conv.window()?,
            norm: BnReluTrain {
                eps,
                stats: stats.clone(),
                group: norm.group(),
            },
        };
        let y = self.token.apply_op3(
            &Tensor::stack(&[gamma, beta], 0)?,
            &conv.weight().contiguous()?,
            op,
        )?;
        let features = self.block.features();
        if norm.group().is_none() {
            // With a group, the kernel checks the group's batch.
            values_per_channel(&features)?;
        }
        norm.record_batch(&stats.lock().expect("stats lock"), features.device())?;
        conv.add_bias(y)
    }

    /// The block's output, (N, C_total, H, W), once every channel is pushed.
    pub(crate) fn finish(self) -> Result<Tensor> {
        let total = self.block.features().dim(1)?;
        if self.channels != total {
            candle_core::bail!("shared features: {} of {total} channels pushed", self.channels);
        }
        let out = self.token.apply_op1(Output {
            block: self.block.clone(),
        })?;
        // The backward pass reads the output; the buffer, which holds the same, goes.
        *self.block.features.lock().expect("features lock") = out.detach();
        Ok(out)
    }
}

/// Runs `$body` on the contiguous f32 or f64 CPU storage of `$tensor`, bound to `$slice`,
/// with [`float_kernel`]'s other inputs.
macro_rules! with_buffer {
    ($op:expr, $tensor:expr, [$slice:ident $(; $x:ident: $s:expr, $l:expr)*], $body:expr) => {{
        let (storage, layout) = $tensor.storage_and_layout();
        let Storage::Cpu(data) = &*storage else {
            candle_core::bail!("{}: needs the CPU", $op)
        };
        float_kernel!($op, [$slice: data, layout $(; $x: $s, $l)*], $body)
    }};
}

/// (token, x) → token: records that `x` sits at channel `offset` of the buffer.
struct Append {
    block: Arc<Block>,
    offset: usize,
}

impl CustomOp2 for Append {
    fn name(&self) -> &'static str {
        "shared-features-append"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let token = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(vec![0.0]),
            CpuStorage::F64(_) => CpuStorage::F64(vec![0.0]),
            _ => candle_core::bail!("{}: needs f32 or f64", self.name()),
        };
        Ok((token, Shape::from(1)))
    }

    fn bwd(
        &self,
        token: &Tensor,
        x: &Tensor,
        _: &Tensor,
        _: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = self.block.grad(self.offset, x.dim(1)?, x)?;
        Ok((Some(token.zeros_like()?), Some(dx)))
    }
}

/// (token, [γ; β] (2, C_l), W) → conv(ReLU(BN(buffer[:, :C_l]))), the first unit of a layer.
struct FirstUnit {
    block: Arc<Block>,
    /// C_l, the channels read.
    channels: usize,
    window: Window,
    norm: BnReluTrain,
}

impl FirstUnit {
    fn forward<T: Float>(
        &self,
        buffer: &[T],
        gamma_beta: &[T],
        weight: &[T],
        d: &[usize; 4],
        w: &Layout,
    ) -> Result<Vec<T>> {
        let [n, total, h, wd] = *d;
        let (c, hw) = (self.channels, h * wd);
        let mut x = Vec::with_capacity(n * c * hw);
        for image in buffer.chunks(total * hw) {
            x.extend_from_slice(&image[..c * hw]);
        }
        let z = self
            .norm
            .forward(&x, &gamma_beta[..c], &gamma_beta[c..], n, c, hw)?;
        drop(x);
        let conv = ConvOp(self.window);
        let dims = conv.dims(&Layout::contiguous((n, c, h, wd)), w)?;
        Ok(conv.forward(&Images::contiguous(&z, c * hw), Weights::Torch(weight), &dims))
    }
}

impl CustomOp3 for FirstUnit {
    fn name(&self) -> &'static str {
        "shared-features-norm-relu-conv"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let features = self.block.features();
        let (n, _, h, w) = features.dims4()?;
        let d = [n, features.dim(1)?, h, w];
        let cout = l3.shape().dims()[0];
        let out = with_buffer!(
            self.name(),
            features,
            [buffer; gb: s2, l2; wt: s3, l3],
            self.forward(buffer, gb, wt, &d, l3)?
        );
        let shape = Shape::from((n, cout, self.window.out(h), self.window.out(w)));
        Ok((out, shape))
    }

    fn bwd(
        &self,
        token: &Tensor,
        gamma_beta: &Tensor,
        weight: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Recompute the normalised input from the block's output, which holds it unchanged.
        let x = self.block.features().narrow(1, 0, self.channels)?.contiguous()?;
        let (gamma, beta) = (gamma_beta.get(0)?, gamma_beta.get(1)?);
        // With a group, the recomputation takes the group's statistics again, as every process
        // recomputes the same layers in the same order.
        let norm = BnReluTrain {
            eps: self.norm.eps,
            stats: Arc::new(Mutex::new(BatchStats::default())),
            group: self.norm.group.clone(),
        };
        let z = x.apply_op3_no_bwd(&gamma, &beta, &norm)?;
        let (dz, dw) = conv_backward::backward(&z, weight, dy, self.window)?;
        let (dx, dgamma, dbeta) = bn_relu::backward(&x, &gamma, &z, &dz, norm.eps, norm.stats, norm.group)?;
        self.block.add_grad(&dx)?;
        Ok((
            Some(token.zeros_like()?),
            Some(Tensor::stack(&[dgamma, dbeta], 0)?),
            Some(dw),
        ))
    }
}

/// token → a copy of the whole buffer, the block's output.
struct Output {
    block: Arc<Block>,
}

impl CustomOp1 for Output {
    fn name(&self) -> &'static str {
        "shared-features-output"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let features = self.block.features();
        let out = with_buffer!(self.name(), features, [data], data.to_vec());
        Ok((out, features.shape().clone()))
    }

    fn bwd(&self, token: &Tensor, _: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        self.block.add_grad(dy)?;
        Ok(Some(token.zeros_like()?))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor, Var};

    /// The identity, logging its name when its backward runs.
    struct Logged {
        name: &'static str,
        log: Arc<Mutex<Vec<&'static str>>>,
    }

    impl CustomOp1 for Logged {
        fn name(&self) -> &'static str {
            self.name
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            let CpuStorage::F32(v) = s else {
                candle_core::bail!("f32 only")
            };
            Ok((CpuStorage::F32(v.clone()), l.shape().clone()))
        }

        fn bwd(&self, _: &Tensor, _: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
            self.log.lock().unwrap().push(self.name);
            Ok(Some(dy.clone()))
        }
    }

    #[test]
    fn backward_runs_after_every_consumer_of_an_output() {
        // The shape of a memory-efficient block: a token chain (append1 → append2), each token
        // read by a layer (read1, read2), and a loss over all of them, built in that order.
        let log = Arc::new(Mutex::new(Vec::new()));
        let op = |name| Logged {
            name,
            log: log.clone(),
        };
        let x = Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let append1 = x.apply_op1(op("append1")).unwrap();
        let read1 = append1.apply_op1(op("read1")).unwrap();
        let append2 = append1.apply_op1(op("append2")).unwrap();
        let read2 = append2.apply_op1(op("read2")).unwrap();
        let loss = (read1.sum_all().unwrap() + read2.sum_all().unwrap()).unwrap();
        let loss = (loss + append2.sum_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let order = log.lock().unwrap().clone();
        let at = |name| order.iter().position(|n| *n == name).unwrap();
        assert!(at("append1") > at("read1"), "{order:?}");
        assert!(at("append1") > at("append2"), "{order:?}");
        assert!(at("append2") > at("read2"), "{order:?}");
        // Three paths reach x, each with gradient 1.
        let dx = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(dx, [3.0, 3.0]);
    }
}
