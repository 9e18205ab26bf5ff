//! Dense connectivity for fully connected layers: the net of the book's exercise 5 (Dive into
//! Deep Learning 8.7), for tabular data, and the plain MLP it is compared with. Built from an
//! [`MlpSpec`] by one constructor, as [`crate::DenseNet`] is from a variant spec.
//!
//! Tensor names, under a `VarBuilder`'s prefixes:
//! - dense: `stem.{linear,norm}`, `denseblock{i}.denselayer{j}.{linear,norm}`,
//!   `transition{i}.{linear,norm}`, `head`;
//! - plain: `hidden{k}.{linear,norm}`, `head`;
//!
//! where `linear` has `weight` (out, in) and `bias` (out), as `torch.nn.Linear`, and `norm`
//! has `weight`, `bias`, `running_mean` and `running_var` (out), as `torch.nn.BatchNorm1d`.

use candle_core::{Device, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};

use super::{Connectivity, MlpSpec};
use crate::checkpoint::{is_buffer, record_tensors, TensorSpec};
use crate::error::{Error, Result};
use crate::ops::{BatchNorm2d, Mode};
use crate::train::init::varmap_from;

/// linear → batch norm → ReLU: every hidden layer of these nets.
#[derive(Debug, Clone)]
struct LinearNormRelu {
    weight: Tensor,
    bias: Tensor,
    norm: BatchNorm2d,
}

impl LinearNormRelu {
    fn new(vb: VarBuilder, in_width: usize, out_width: usize) -> Result<Self> {
        let (weight, bias) = linear(vb.pp("linear"), in_width, out_width)?;
        Ok(Self {
            weight,
            bias,
            norm: BatchNorm2d::new(vb.pp("norm"), out_width)?,
        })
    }

    /// (N, in) → (N, out).
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?;
        let (n, c) = y.dims2()?;
        // Batch norm over (N, C) is the 2-D one over (N, C, 1, 1), as BatchNorm1d.
        let y = self.norm.forward_relu(&y.reshape((n, c, 1, 1))?, mode)?;
        Ok(y.reshape((n, c))?)
    }
}

/// `weight` (out, in) and `bias` (out) of a linear layer, new ones uniform in ±1/√in as
/// PyTorch's `nn.Linear` initialises them.
fn linear(vb: VarBuilder, in_width: usize, out_width: usize) -> Result<(Tensor, Tensor)> {
    let bound = 1.0 / (in_width.max(1) as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    Ok((
        vb.get_with_hints((out_width, in_width), "weight", init)?,
        vb.get_with_hints(out_width, "bias", init)?,
    ))
}

/// A part of the layers between the input and the head.
#[derive(Debug, Clone)]
enum Hidden {
    /// One layer fed by the previous output.
    Layer(LinearNormRelu),
    /// A dense block: each layer sees the block's input and every earlier layer's output,
    /// and the block returns them all concatenated.
    Block(Vec<LinearNormRelu>),
}

/// An MLP for one numeric target, dense or plain ([`Connectivity`]): (N, in_features) → (N).
#[derive(Debug, Clone)]
pub struct DenseMlp {
    hidden: Vec<Hidden>,
    head_weight: Tensor,
    head_bias: Tensor,
    in_features: usize,
}

impl DenseMlp {
    /// Builds the net of `spec` over `in_features` encoded inputs, its tensors from `vb`
    /// (new ones initialised as PyTorch's `nn.Linear` and `nn.BatchNorm1d`).
    ///
    /// # Errors
    /// A tensor `vb` lacks or has another shape (the name and both shapes).
    pub fn new(spec: &MlpSpec, in_features: usize, vb: VarBuilder) -> Result<Self> {
        let mut hidden = Vec::new();
        let mut width = in_features;
        match &spec.connectivity {
            Connectivity::Dense {
                stem_width,
                growth_width,
                block_config,
                compression,
            } => {
                hidden.push(Hidden::Layer(LinearNormRelu::new(
                    vb.pp("stem"),
                    width,
                    *stem_width,
                )?));
                width = *stem_width;
                for (b, layers) in block_config.iter().enumerate() {
                    let block_vb = vb.pp(format!("denseblock{}", b + 1));
                    let block = (0..*layers)
                        .map(|l| {
                            let vb = block_vb.pp(format!("denselayer{}", l + 1));
                            LinearNormRelu::new(vb, width + l * growth_width, *growth_width)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    hidden.push(Hidden::Block(block));
                    width += layers * growth_width;
                    if b + 1 < block_config.len() {
                        let compressed = (width as f64 * compression).floor() as usize;
                        let vb = vb.pp(format!("transition{}", b + 1));
                        hidden.push(Hidden::Layer(LinearNormRelu::new(vb, width, compressed)?));
                        width = compressed;
                    }
                }
            }
            Connectivity::Plain { hidden_widths } => {
                for (k, w) in hidden_widths.iter().enumerate() {
                    let vb = vb.pp(format!("hidden{}", k + 1));
                    hidden.push(Hidden::Layer(LinearNormRelu::new(vb, width, *w)?));
                    width = *w;
                }
            }
        }
        let (head_weight, head_bias) = linear(vb.pp("head"), width, 1)?;
        Ok(Self {
            hidden,
            head_weight,
            head_bias,
            in_features,
        })
    }

    /// Every tensor of `spec` over `in_features` inputs (parameters and running statistics),
    /// with its initialisation; nothing of their size is allocated.
    pub fn tensors(spec: &MlpSpec, in_features: usize) -> Result<Vec<(TensorSpec, Init)>> {
        record_tensors(|vb| Self::new(spec, in_features, vb).map(drop))
    }

    /// A `VarMap` with every tensor of `spec` over `in_features` inputs, initialised as PyTorch
    /// initialises `nn.Linear` and `nn.BatchNorm1d`, drawn from `seed`.
    pub fn seeded_varmap(spec: &MlpSpec, in_features: usize, seed: u64, device: &Device) -> Result<VarMap> {
        varmap_from(Self::tensors(spec, in_features)?, seed, device)
    }

    /// Learned parameters of `spec` over `in_features` inputs (batch-norm running statistics
    /// are not parameters), as `sum(p.numel() for p in model.parameters())`.
    pub fn parameter_count(spec: &MlpSpec, in_features: usize) -> Result<usize> {
        Ok(Self::tensors(spec, in_features)?
            .iter()
            .filter(|(t, _)| !is_buffer(&t.name))
            .map(|(t, _)| t.shape.iter().product::<usize>())
            .sum())
    }

    /// Inputs the net takes per row.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// (N, in_features) → (N): one output per row. [`Mode::Train`] normalises with the batch's
    /// statistics (and updates the running ones); the others with the running statistics.
    ///
    /// # Errors
    /// [`Error::BadInput`] for an input that is not (N ≥ 1, in_features).
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if x.rank() != 2 || x.dim(1)? != self.in_features || x.dim(0)? == 0 {
            return Err(Error::BadInput {
                variant: "tabular MLP".into(),
                found: x.dims().to_vec(),
                message: format!("expected (N ≥ 1, {}) encoded rows", self.in_features),
            });
        }
        let mut x = x.clone();
        for part in &self.hidden {
            x = match part {
                Hidden::Layer(layer) => layer.forward(&x, mode)?,
                Hidden::Block(layers) => {
                    let mut features = vec![x];
                    for layer in layers {
                        let input = Tensor::cat(&features, 1)?;
                        features.push(layer.forward(&input, mode)?);
                    }
                    Tensor::cat(&features, 1)?
                }
            };
        }
        let y = x.matmul(&self.head_weight.t()?)?.broadcast_add(&self.head_bias)?;
        Ok(y.squeeze(1)?)
    }
}
