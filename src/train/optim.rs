//! Optimisers with state that can be saved: SGD with momentum, Nesterov and weight decay (the
//! paper's), and AdamW. candle's own have neither Nesterov nor a way to save their state.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::VarMap;

use crate::checkpoint::is_buffer;
use crate::error::Result;

pub use crate::spec::OptimizerKind;

/// An optimiser over a model's parameters (never its batch-norm running statistics).
pub struct Optimizer {
    kind: OptimizerKind,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    params: Vec<(String, Var)>,
    /// Per-parameter state: `momentum_buffer` for SGD, `exp_avg` and `exp_avg_sq` for AdamW.
    state: HashMap<String, Tensor>,
    steps: u64,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Optimizer {
    /// An optimiser over every parameter of `varmap`, sorted by name.
    pub fn new(
        kind: OptimizerKind,
        varmap: &VarMap,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    ) -> Self {
        let data = varmap.data().lock().expect("varmap lock");
        let mut params: Vec<(String, Var)> = data
            .iter()
            .filter(|(name, _)| !is_buffer(name))
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            kind,
            momentum,
            nesterov,
            weight_decay,
            params,
            state: HashMap::new(),
            steps: 0,
        }
    }

    /// The optimiser without the parameters `frozen` names, and without their state: they
    /// are never updated, weight decay included (fine-tuning with frozen levels).
    pub fn excluding(mut self, frozen: impl Fn(&str) -> bool) -> Self {
        self.params.retain(|(name, _)| !frozen(name));
        let kept: std::collections::HashSet<String> = self.params.iter().map(|(n, _)| n.clone()).collect();
        self.state
            .retain(|key, _| key.split_once('.').is_some_and(|(_, name)| kept.contains(name)));
        self
    }

    /// Updates every parameter that has a gradient, with learning rate `lr`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        for (name, var) in &self.params {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Detached: an update computed from the variable itself would record a graph, and
            // each momentum buffer would keep every earlier one alive through it.
            let p = &var.as_detached_tensor();
            match self.kind {
                OptimizerKind::Sgd => {
                    let mut d = if self.weight_decay != 0.0 {
                        (grad + (p * self.weight_decay)?)?
                    } else {
                        grad.clone()
                    };
                    if self.momentum != 0.0 {
                        let key = format!("momentum_buffer.{name}");
                        let buf = match self.state.get(&key) {
                            Some(buf) => ((buf * self.momentum)? + &d)?,
                            None => d.clone(),
                        };
                        d = if self.nesterov {
                            (d + (&buf * self.momentum)?)?
                        } else {
                            buf.clone()
                        };
                        self.state.insert(key, buf);
                    }
                    var.set(&(p - (d * lr)?)?)?;
                }
                OptimizerKind::Adamw => {
                    let (k1, k2) = (format!("exp_avg.{name}"), format!("exp_avg_sq.{name}"));
                    let m = match self.state.get(&k1) {
                        Some(m) => ((m * BETA1)? + (grad * (1.0 - BETA1))?)?,
                        None => (grad * (1.0 - BETA1))?,
                    };
                    let v = match self.state.get(&k2) {
                        Some(v) => ((v * BETA2)? + (grad.sqr()? * (1.0 - BETA2))?)?,
                        None => (grad.sqr()? * (1.0 - BETA2))?,
                    };
                    let t = self.steps as i32;
                    let m_hat = (&m / (1.0 - BETA1.powi(t)))?;
                    let v_hat = (&v / (1.0 - BETA2.powi(t)))?;
                    let decayed = (p * (1.0 - lr * self.weight_decay))?;
                    let update = (m_hat / (v_hat.sqrt()? + EPS)?)?;
                    var.set(&(decayed - (update * lr)?)?)?;
                    self.state.insert(k1, m);
                    self.state.insert(k2, v);
                }
            }
        }
        Ok(())
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The state to save, as tensors named `optimizer.<buffer>.<parameter>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .state
            .iter()
            .map(|(k, t)| (format!("optimizer.{k}"), t.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Restores state saved by [`Optimizer::state`], taking the `optimizer.` entries of `tensors`.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) {
        self.steps = steps;
        self.state = tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix("optimizer.").map(|k| (k.to_string(), t.clone())))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Three steps on w = [1, 2, −3] with gradients g₁, g₂, g₃ and lr 0.1; the expected values
    /// are torch.optim.SGD / AdamW's (torch 2.15), printed by a script run beside this test.
    fn three_steps(kind: OptimizerKind, momentum: f64, nesterov: bool, weight_decay: f64) -> Vec<f32> {
        let varmap = VarMap::new();
        let w = varmap
            .get(3, "w", candle_nn::Init::Const(0.0), DType::F32, &Device::Cpu)
            .unwrap();
        let var = varmap.data().lock().unwrap()["w"].clone();
        var.set(&Tensor::new(&[1f32, 2.0, -3.0], &Device::Cpu).unwrap())
            .unwrap();
        let mut opt = Optimizer::new(kind, &varmap, momentum, nesterov, weight_decay);
        for g in [[0.5f32, -1.0, 0.25], [0.1, 0.2, -0.3], [-0.4, 0.0, 1.0]] {
            // d(Σ g·w)/dw = g.
            let loss = (&w * Tensor::new(&g, &Device::Cpu).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            opt.step(&loss.backward().unwrap(), 0.1).unwrap();
        }
        // The state is plain data: a buffer that recorded its update would keep every earlier
        // buffer alive, and memory would grow with every step.
        for (name, t) in opt.state() {
            assert!(!t.track_op(), "{kind:?}: {name} records a graph");
        }
        var.as_tensor().to_vec1::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn sgd_matches_torch() {
        close(
            &three_steps(OptimizerKind::Sgd, 0.9, true, 0.01),
            &[0.86946553, 2.27267265, -3.17042089],
        );
        close(
            &three_steps(OptimizerKind::Sgd, 0.9, false, 0.0),
            &[0.88549995, 2.23299980, -3.11075020],
        );
        close(
            &three_steps(OptimizerKind::Sgd, 0.0, false, 0.0),
            &[0.98000002, 2.07999992, -3.09500003],
        );
    }

    #[test]
    fn adamw_matches_torch() {
        close(
            &three_steps(OptimizerKind::Adamw, 0.0, false, 0.01),
            &[0.80760926, 2.18436003, -3.13202238],
        );
    }

    #[test]
    fn running_statistics_are_never_optimised() {
        let varmap = VarMap::new();
        for name in ["norm.weight", "norm.running_mean", "norm.running_var"] {
            varmap
                .get(2, name, candle_nn::Init::Const(1.0), DType::F32, &Device::Cpu)
                .unwrap();
        }
        let opt = Optimizer::new(OptimizerKind::Sgd, &varmap, 0.9, true, 1e-4);
        let names: Vec<&str> = opt.params.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["norm.weight"]);
    }
}
