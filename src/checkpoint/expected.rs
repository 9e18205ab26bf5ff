//! The tensors a variant has, by name and shape, found by building it without weights.

use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::error::Result;
use crate::model::DenseNet;
use crate::spec::VariantSpec;

/// A tensor the model expects: its checkpoint name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Canonical (torchvision) name, e.g. `features.denseblock1.denselayer1.norm1.weight`.
    pub name: String,
    /// Shape, e.g. `[64]`.
    pub shape: Vec<usize>,
}

/// True for batch-norm buffers (running statistics), which are state but not parameters.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var") || name.ends_with("num_batches_tracked")
}

/// Every tensor of `spec`'s model in construction order, parameters and buffers, without
/// `num_batches_tracked`. Nothing of the model's size is allocated.
pub fn expected_tensors(spec: &VariantSpec) -> Result<Vec<TensorSpec>> {
    Ok(expected_tensors_with_init(spec)?
        .into_iter()
        .map(|(t, _)| t)
        .collect())
}

/// [`expected_tensors`] with the initialisation each tensor gets in a new model.
pub fn expected_tensors_with_init(spec: &VariantSpec) -> Result<Vec<(TensorSpec, Init)>> {
    record_tensors(|vb| DenseNet::new(spec, vb).map(drop))
}

/// Every tensor that `build` asks its `VarBuilder` for, in order, with its initialisation;
/// nothing of the tensors' size is allocated.
pub(crate) fn record_tensors(
    build: impl FnOnce(VarBuilder) -> Result<()>,
) -> Result<Vec<(TensorSpec, Init)>> {
    let recorder = Recorder(Mutex::new(Vec::new()));
    build(VarBuilder::from_backend(
        Box::new(&recorder),
        DType::F32,
        Device::Cpu,
    ))?;
    Ok(recorder.0.into_inner().expect("recorder lock is never poisoned"))
}

/// A VarBuilder backend that notes every tensor asked for (with its initialisation) and
/// returns zeros that take no memory.
struct Recorder(Mutex<Vec<(TensorSpec, Init)>>);

impl candle_nn::var_builder::SimpleBackend for &Recorder {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = TensorSpec {
            name: name.to_string(),
            shape: shape.dims().to_vec(),
        };
        self.0.lock().expect("recorder lock").push((tensor, init));
        Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("the tensor recorder cannot provide {name} without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}
