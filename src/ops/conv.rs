//! 2-D convolution with square kernels, as every DenseNet uses them.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::cpu::{image_stride, BiasAdd, ConvOp, NormReluConvOp, Window};
use super::mode::{KernelPath, Mode};
use super::BatchNorm2d;

/// A k×k convolution with stride, zero padding and an optional bias.
///
/// Weight shape (out, in, k, k), as in PyTorch. Input (N, in, H, W) → (N, out, H', W') with
/// H' = floor((H + 2·padding − k) / stride) + 1.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    /// An inference copy's weights stacked by tap, when its conv runs by taps on the CPU
    /// kernels ([`Conv2d::detached`]).
    by_tap: Option<Tensor>,
}

impl Conv2d {
    /// Loads or creates `weight` (and `bias` when `bias` is true) under `vb`. New weights get
    /// torchvision's initialisation: Kaiming-normal (fan-in, ReLU gain) and a zero bias.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = vb.get_with_hints(
            (out_channels, in_channels, kernel, kernel),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let bias = if bias {
            Some(vb.get_with_hints(out_channels, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
            by_tap: None,
        })
    }

    /// The weight, (out, in, k, k).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The same convolution on detached weights: a copy for inference that records no graph.
    /// A stride-1 k×k conv with fewer output than input channels (a dense layer's 3×3) also gets
    /// its weights stacked by tap here, as its inference kernel multiplies them, once instead of
    /// at every call: from the weights as they are now, so take a new copy after training them.
    pub fn detached(&self) -> Self {
        let weight = self.weight.detach();
        Self {
            by_tap: self.stacked_by_tap(&weight).ok().flatten(),
            weight,
            bias: self.bias.as_ref().map(Tensor::detach),
            ..*self
        }
    }

    /// `weight` (Cout, Cin, k, k) stacked by tap, (k·k·Cout, Cin), when the fused inference
    /// kernel runs this conv by taps; `None` for any other conv or off the CPU.
    fn stacked_by_tap(&self, weight: &Tensor) -> Result<Option<Tensor>> {
        let (cout, cin, k, _) = weight.dims4()?;
        if !weight.device().is_cpu() || !ConvOp(self.window()?).runs_by_taps(cout, cin) {
            return Ok(None);
        }
        let stacked = weight.permute((2, 3, 0, 1))?.reshape((k * k * cout, cin))?;
        Ok(Some(stacked.contiguous()?))
    }

    /// Output side for an input side of `n` pixels.
    pub fn output_side(&self, n: usize) -> usize {
        let k = self.weight.dim(3).unwrap_or(1);
        (n + 2 * self.padding).saturating_sub(k) / self.stride + 1
    }

    /// Multiply-adds for one image of side `n`, bias excluded (as fvcore and timm count).
    pub fn macs(&self, n: usize) -> u64 {
        let out = self.output_side(n) as u64;
        self.weight.elem_count() as u64 * out * out
    }
}

impl Conv2d {
    /// The kernel, stride and padding.
    pub(super) fn window(&self) -> Result<Window> {
        Ok(Window {
            kernel: self.weight.dim(3)?,
            stride: self.stride,
            padding: self.padding,
        })
    }

    /// `y` (N, out, H', W') plus the bias, if there is one.
    pub(super) fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) if KernelPath::of(&y, Mode::Eval).is_cpu() => y.apply_op2(&b.contiguous()?, BiasAdd),
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.add_bias(conv2d(x, &self.weight, self.stride, self.padding)?)
    }
}

/// conv(max(0, norm(x))), the pre-activation unit: (N, Cin, H, W) → (N, Cout, H', W').
///
/// On the fused inference kernels ([`KernelPath::CpuFused`]), one op that applies the
/// eval-mode norm and ReLU as the convolution reads `x`, with no normalised copy of `x` in
/// between, reading a channel range of a wider tensor where it lies; otherwise
/// [`BatchNorm2d::forward_relu`] then the convolution. Same values either way.
pub fn norm_relu_conv(norm: &BatchNorm2d, conv: &Conv2d, x: &Tensor, mode: Mode) -> Result<Tensor> {
    if KernelPath::of(x, mode) != KernelPath::CpuFused {
        return conv.forward(&norm.forward_relu(x, mode)?);
    }
    let op = NormReluConvOp {
        window: conv.window()?,
        norm_relu: norm.eval_map()?,
        by_tap: conv.by_tap.clone(),
    };
    let y = match image_stride(x.layout()) {
        Some(_) => x.apply_op2_no_bwd(&conv.weight.contiguous()?, &op)?,
        None => x
            .contiguous()?
            .apply_op2_no_bwd(&conv.weight.contiguous()?, &op)?,
    };
    conv.add_bias(y)
}

/// (N, Cin, H, W) ∗ (Cout, Cin, k, k) → (N, Cout, H', W'), without bias.
///
/// On the CPU (f32, f64), our GEMM-per-image kernel with its own backward (`cpu::conv`);
/// elsewhere, candle's `conv2d`.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if !KernelPath::of(x, Mode::Eval).is_cpu() {
        return x.conv2d(weight, padding, stride, 1, 1);
    }
    let window = Window {
        kernel: weight.dim(3)?,
        stride,
        padding,
    };
    x.contiguous()?.apply_op2(&weight.contiguous()?, ConvOp(window))
}
