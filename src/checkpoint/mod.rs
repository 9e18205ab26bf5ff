//! Checkpoints: which tensors a variant has, and reading them from safetensors strictly.

mod expected;

pub use expected::{expected_tensors, is_buffer, TensorSpec};

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::model::DenseNet;
use crate::spec::VariantSpec;

/// Reads every tensor of a safetensors file onto `device`.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| Error::Checkpoint {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Checks that `tensors` are exactly the tensors of `spec`, by name and shape
/// (`num_batches_tracked` entries are accepted and ignored). One error lists every missing
/// tensor, every unexpected one and every shape mismatch.
pub fn check_tensors(spec: &VariantSpec, tensors: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
    let expected = expected_tensors(spec)?;
    let mut problems = Vec::new();
    for t in &expected {
        match tensors.get(&t.name) {
            None => problems.push(format!("missing tensor {} {:?}", t.name, t.shape)),
            Some(found) if found.dims() != t.shape.as_slice() => problems.push(format!(
                "tensor {}: expected shape {:?}, found {:?}",
                t.name,
                t.shape,
                found.dims()
            )),
            Some(_) => {}
        }
    }
    let known: std::collections::HashSet<&str> = expected.iter().map(|t| t.name.as_str()).collect();
    let mut unexpected: Vec<&String> = tensors
        .keys()
        .filter(|k| !known.contains(k.as_str()) && !k.ends_with("num_batches_tracked"))
        .collect();
    unexpected.sort();
    problems.extend(unexpected.into_iter().map(|k| format!("unexpected tensor {k}")));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Checkpoint {
            path: origin.to_string(),
            message: format!("does not fit variant {}:\n  {}", spec.name, problems.join("\n  ")),
        })
    }
}

/// Builds `spec` from a map of canonical-named tensors, refusing any mismatch.
pub fn model_from_tensors(
    spec: &VariantSpec,
    tensors: HashMap<String, Tensor>,
    origin: &str,
    device: &Device,
) -> Result<DenseNet> {
    check_tensors(spec, &tensors, origin)?;
    let tensors = tensors
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()?;
    DenseNet::new(spec, VarBuilder::from_tensors(tensors, DType::F32, device))
}

/// Loads `spec` from a safetensors file with torchvision's names, strictly.
pub fn load_model(spec: &VariantSpec, path: &Path, device: &Device) -> Result<DenseNet> {
    let tensors = read_safetensors(path, device)?;
    model_from_tensors(spec, tensors, &path.display().to_string(), device)
}
