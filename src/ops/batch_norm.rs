//! 2-D batch normalisation with PyTorch's semantics.

use std::sync::{Arc, Mutex};

use candle_core::{CustomOp3, DType, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use super::batch_norm_group::BatchNormGroup;
use super::cpu::{image_stride, BatchStats, BnReluEval, BnReluTrain};
use super::mode::{KernelPath, Mode};

/// PyTorch's defaults: ε = 1e-5, running statistics updated with momentum 0.1.
const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// Batch normalisation over (N, C, H, W) → (N, C, H, W), per channel.
///
/// Parameters `weight` and `bias` (C) are learned; buffers `running_mean` and `running_var`
/// (C) are estimated in training mode like PyTorch's `BatchNorm2d`: the batch mean, and the
/// unbiased batch variance, mixed in with momentum 0.1. Evaluation mode normalises with them.
/// With a [`BatchNormGroup`] ([`BatchNorm2d::set_group`]), training takes the statistics of the
/// group's whole batch, as PyTorch's `SyncBatchNorm`.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    group: Option<Arc<dyn BatchNormGroup>>,
    /// The eval-mode map of an inference copy ([`BatchNorm2d::detached`]), prepared once from
    /// the running statistics of that moment.
    prepared: Option<Arc<BnReluEval>>,
}

impl BatchNorm2d {
    /// Loads or creates `weight`, `bias`, `running_mean` and `running_var` under `vb`.
    /// When `vb` is backed by a `VarMap`, training updates the map's running statistics.
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
        let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
        Ok(Self {
            weight,
            bias,
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
            group: None,
            prepared: None,
        })
    }

    /// Synchronised batch norm: in training, the batch statistics (and the sums of the backward
    /// pass) are those of every process of `group`, whose parts together are the batch, as
    /// PyTorch's `SyncBatchNorm`; `None`, this process's own (the default). The running
    /// statistics then agree across the group. Training with a group runs on the CPU kernels
    /// only (f32, f64 on the CPU): elsewhere it fails.
    pub fn set_group(&mut self, group: Option<Arc<dyn BatchNormGroup>>) {
        self.group = group;
    }

    /// The group set by [`BatchNorm2d::set_group`].
    pub fn group(&self) -> Option<Arc<dyn BatchNormGroup>> {
        self.group.clone()
    }

    /// The running mean, (C).
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// The running variance, (C).
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// Normalises `x` (N, C, H, W). With `train`, uses the batch statistics and updates the
    /// running ones; otherwise uses the running statistics.
    ///
    /// # Errors
    /// With `train` and a group ([`BatchNorm2d::set_group`]): the group's statistics are taken
    /// by the fused kernel of [`BatchNorm2d::forward_relu`] only.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, c, _, _) = x.dims4()?;
        if train && self.group.is_some() {
            candle_core::bail!(
                "synchronised batch norm trains on the CPU kernels only (f32 or f64 on the CPU), \
                 got {:?} on {:?}",
                x.dtype(),
                x.device().location()
            );
        }
        let (scale, shift) = if train {
            let mean = x.mean_keepdim((0, 2, 3))?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim((0, 2, 3))?;
            let count = values_per_channel(x)?;
            self.update_running(&mean.detach(), &(var.detach() * (count / (count - 1.0)))?)?;
            let scale = (self.weight.reshape((1, c, 1, 1))? / (var + EPS)?.sqrt()?)?;
            let shift = (self.bias.reshape((1, c, 1, 1))? - mean.mul(&scale)?)?;
            (scale, shift)
        } else {
            let mean = self.running_mean.as_detached_tensor().reshape((1, c, 1, 1))?;
            let var = self.running_var.as_detached_tensor().reshape((1, c, 1, 1))?;
            let scale = (self.weight.reshape((1, c, 1, 1))? / (var + EPS)?.sqrt()?)?;
            let shift = (self.bias.reshape((1, c, 1, 1))? - mean.mul(&scale)?)?;
            (scale, shift)
        };
        x.broadcast_mul(&scale)?.broadcast_add(&shift)
    }

    /// max(0, batch norm of `x`): what every DenseNet does with a batch norm, (N, C, H, W) →
    /// (N, C, H, W). On the CPU kernels ([`KernelPath`]), one fused op: in training with an
    /// analytical backward, in [`Mode::Inference`] a single pass with no backward; otherwise
    /// [`BatchNorm2d::forward_t`] then ReLU. Same values either way.
    pub fn forward_relu(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match KernelPath::of(x, mode) {
            KernelPath::CpuFused => return self.eval_relu(x),
            KernelPath::Cpu if mode.is_train() => {}
            _ => return super::relu(&self.forward_t(x, mode.is_train())?),
        }
        if self.group.is_none() {
            // With a group, the kernel checks the group's batch.
            values_per_channel(x)?;
        }
        let stats = Arc::new(Mutex::new(BatchStats::default()));
        let op: Arc<Box<dyn CustomOp3 + Send + Sync>> = Arc::new(Box::new(BnReluTrain {
            eps: EPS,
            stats: stats.clone(),
            group: self.group.clone(),
        }));
        let y = x.contiguous()?.apply_op3_arc(&self.weight, &self.bias, op)?;
        self.record_batch(&stats.lock().expect("stats lock"), x.device())?;
        Ok(y)
    }

    /// The same norm on detached γ and β (the running statistics shared, no group): a copy
    /// for inference that records no graph. Its eval-mode map (scale and shift per channel) is
    /// prepared here, from the statistics as they are now: [`Mode::Inference`] normalises with
    /// them even if training goes on updating the shared statistics; take a new copy then.
    pub fn detached(&self) -> Self {
        let mut copy = Self {
            weight: self.weight.detach(),
            bias: self.bias.detach(),
            running_mean: self.running_mean.clone(),
            running_var: self.running_var.clone(),
            group: None,
            prepared: None,
        };
        copy.prepared = copy.eval_map().ok();
        copy
    }

    /// Inference: one pass of the fused eval kernel, which has no backward.
    fn eval_relu(&self, x: &Tensor) -> Result<Tensor> {
        let op = self.eval_map()?;
        // A channel range of a wider tensor (a dense block's buffer) is read where it is.
        match image_stride(x.layout()) {
            Some(_) => x.apply_op1_no_bwd(&*op),
            None => x.contiguous()?.apply_op1_no_bwd(&*op),
        }
    }

    /// The eval-mode norm and its ReLU as a per-channel map, from the running statistics.
    pub(super) fn eval_map(&self) -> Result<Arc<BnReluEval>> {
        if let Some(prepared) = &self.prepared {
            return Ok(prepared.clone());
        }
        let f64s = |t: &Tensor| t.to_dtype(DType::F64)?.to_vec1::<f64>();
        let (gamma, beta) = (f64s(&self.weight)?, f64s(&self.bias)?);
        let mean = f64s(self.running_mean.as_tensor())?;
        let var = f64s(self.running_var.as_tensor())?;
        let scale: Vec<f64> = gamma
            .iter()
            .zip(&var)
            .map(|(g, v)| g / (v + EPS).sqrt())
            .collect();
        let shift = beta
            .iter()
            .zip(&mean)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        Ok(Arc::new(BnReluEval { scale, shift }))
    }

    /// γ and β, (C) each, and ε.
    pub(super) fn affine(&self) -> (&Tensor, &Tensor, f64) {
        (&self.weight, &self.bias, EPS)
    }

    /// Mixes the statistics of a training batch into the running ones (the variance unbiased
    /// first, by its count of values per channel, as PyTorch does).
    pub(super) fn record_batch(&self, stats: &BatchStats, device: &candle_core::Device) -> Result<()> {
        let (c, count) = (stats.mean.len(), stats.count);
        let mean = Tensor::from_vec(stats.mean.clone(), c, device)?;
        let var = (Tensor::from_vec(stats.var.clone(), c, device)? * (count / (count - 1.0)))?;
        self.update_running(&mean, &var)
    }

    fn update_running(&self, batch_mean: &Tensor, batch_var: &Tensor) -> Result<()> {
        let mix = |running: &Var, batch: &Tensor| -> Result<()> {
            let batch = batch.flatten_all()?.to_dtype(running.dtype())?;
            running.set(&((running.as_tensor() * (1.0 - MOMENTUM))? + (batch * MOMENTUM)?)?)
        };
        mix(&self.running_mean, batch_mean)?;
        mix(&self.running_var, batch_var)
    }
}

/// N·H·W, the values each channel of `x` (N, C, H, W) has in a batch; training needs two at least.
pub(super) fn values_per_channel(x: &Tensor) -> Result<f64> {
    let (n, _, h, w) = x.dims4()?;
    if n * h * w < 2 {
        candle_core::bail!(
            "batch norm in training needs more than one value per channel, got input {:?}",
            x.dims()
        );
    }
    Ok((n * h * w) as f64)
}
