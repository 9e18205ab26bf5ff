//! Which mode a forward pass runs in, and whether the fused CPU kernels apply to it.

use candle_core::{DType, Tensor};

/// How a forward pass runs, as PyTorch's `model.train()`, `model.eval()`, and `model.eval()`
/// under `torch.inference_mode()`.
///
/// | mode | batch norm | autograd | CPU kernels (f32, f64) |
/// |---|---|---|---|
/// | `Train` | batch statistics, running ones updated | recorded through variables | ours, with their backward |
/// | `Eval` | running statistics | recorded through variables | ours, with their backward |
/// | `Inference` | running statistics | none: no gradient reaches the input or the weights | fused: norm and ReLU applied as the convolution reads, dense blocks in one buffer |
///
/// `Eval` and `Inference` give the same values up to rounding; `Inference` is the fast one and
/// the one [`DenseNet::for_inference`](crate::DenseNet::for_inference) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Training: batch statistics, with a graph for the backward pass.
    Train,
    /// Evaluation with a graph: running statistics, gradients still available.
    Eval,
    /// Inference: running statistics and no graph.
    Inference,
}

impl Mode {
    /// `Train` for `true`, `Eval` for `false`: the `train` flag of candle's `forward_t`.
    pub fn from_train(train: bool) -> Self {
        if train {
            Mode::Train
        } else {
            Mode::Eval
        }
    }

    /// True in training mode, where batch norms use (and update) batch statistics.
    pub fn is_train(self) -> bool {
        self == Mode::Train
    }
}

/// True when our CPU kernels run for `x`: it lies on the CPU in f32 or f64. Elsewhere the ops
/// compose candle's.
pub fn cpu_kernels(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// True when the fused inference kernels run for `x` in `mode`: inference mode, on the CPU
/// kernels ([`cpu_kernels`]). They record no graph, whatever their inputs are.
pub fn fused_inference(x: &Tensor, mode: Mode) -> bool {
    mode == Mode::Inference && cpu_kernels(x)
}
