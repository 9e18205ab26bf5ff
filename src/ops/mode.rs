//! Which mode a forward pass runs in, and which kernels it runs on ([`KernelPath`]).

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

/// Which kernels an op runs: the one decision of the kernel path, from the pass's input (its
/// device and dtype) and mode. Every op of a forward pass asks it of the tensor it gets, and
/// since all of them have the input's device and dtype, the whole pass takes one path. The
/// speed work adds its choices here (instruction set, blocked layout), not at the ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// candle's generic ops, on any device and dtype, with the gradients candle records.
    Generic,
    /// Our CPU kernels (f32, f64) with their own backward: training and evaluation.
    Cpu,
    /// Our fused CPU inference kernels: batch norm and ReLU applied as the convolution reads,
    /// dense blocks in one buffer; no graph, whatever their inputs are.
    CpuFused,
}

impl KernelPath {
    /// The path of an op on `x` in `mode`.
    pub fn of(x: &Tensor, mode: Mode) -> Self {
        let ours = x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64);
        match (ours, mode) {
            (false, _) => Self::Generic,
            (true, Mode::Inference) => Self::CpuFused,
            (true, _) => Self::Cpu,
        }
    }

    /// True on our CPU kernels, fused or not.
    pub fn is_cpu(self) -> bool {
        self != Self::Generic
    }
}

/// True when our CPU kernels run for `x`: it lies on the CPU in f32 or f64. Elsewhere the ops
/// compose candle's ([`KernelPath`]).
pub fn cpu_kernels(x: &Tensor) -> bool {
    KernelPath::of(x, Mode::Eval).is_cpu()
}

/// True when the fused inference kernels run for `x` in `mode` ([`KernelPath::CpuFused`]).
pub fn fused_inference(x: &Tensor, mode: Mode) -> bool {
    KernelPath::of(x, mode) == KernelPath::CpuFused
}
