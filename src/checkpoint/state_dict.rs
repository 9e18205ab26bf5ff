//! The tensors of a model by name: the strict check of a checkpoint against a spec, the state
//! dict to write (torchvision's order, `num_batches_tracked` included), and a model built from
//! plain tensors.

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use super::{canonical_to_d2l, canonical_to_d2l_current, expected_tensors, Checkpoint, NamingScheme};
use crate::error::{Error, Result};
use crate::model::DenseNet;
use crate::spec::VariantSpec;

pub(super) fn without_counters(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect()
}

/// Checks that `tensors` are exactly the tensors of `spec`: every name present with its shape
/// and dtype F32, and nothing else (`num_batches_tracked` entries are accepted and ignored;
/// names in `may_miss` may be absent), and, if so, that every value is finite. One error names
/// `origin` and lists every missing tensor, every unexpected one, every shape or dtype mismatch,
/// or every tensor holding NaN or infinite values.
pub fn check_tensors(
    spec: &VariantSpec,
    tensors: &HashMap<String, Tensor>,
    origin: &str,
    may_miss: &[&str],
) -> Result<()> {
    let expected = expected_tensors(spec)?;
    let mut problems = Vec::new();
    for t in &expected {
        match tensors.get(&t.name) {
            None if may_miss.contains(&t.name.as_str()) => {}
            None => problems.push(format!("missing tensor {} {:?}", t.name, t.shape)),
            Some(found) if found.dims() != t.shape.as_slice() => problems.push(format!(
                "tensor {}: expected shape {:?}, found {:?}",
                t.name,
                t.shape,
                found.dims()
            )),
            Some(found) if found.dtype() != DType::F32 => problems.push(format!(
                "tensor {}: expected dtype F32, found {:?}",
                t.name,
                found.dtype()
            )),
            Some(_) => {}
        }
    }
    let known: HashSet<&str> = expected.iter().map(|t| t.name.as_str()).collect();
    let mut unexpected: Vec<&String> = tensors
        .keys()
        .filter(|k| !known.contains(k.as_str()) && !k.ends_with("num_batches_tracked"))
        .collect();
    unexpected.sort();
    problems.extend(unexpected.into_iter().map(|k| format!("unexpected tensor {k}")));
    if problems.is_empty() {
        // Only a checkpoint that fits is worth scanning: a NaN or infinite weight makes every
        // output NaN, so it is refused too.
        for t in &expected {
            if let Some(found) = tensors.get(&t.name) {
                let values = found.flatten_all()?.to_vec1::<f32>()?;
                let bad = values.iter().filter(|v| !v.is_finite()).count();
                if bad > 0 {
                    problems.push(format!(
                        "tensor {}: {bad} of {} values are NaN or infinite",
                        t.name,
                        values.len()
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Checkpoint {
            path: origin.to_string(),
            message: format!(
                "does not fit variant {} ({} problem{}):\n  {}",
                spec.name,
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                first_lines(&problems.join("\n  "), 20)
            ),
        })
    }
}

/// The state dict to write for `spec`: every expected tensor from `tensors` in torchvision's
/// order, plus a `num_batches_tracked` (int64 scalar) after each batch norm's running variance,
/// as torchvision's `state_dict()` has them, taken from `tensors` or else 0.
pub fn state_dict(spec: &VariantSpec, tensors: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for t in expected_tensors(spec)? {
        let tensor = tensors.get(&t.name).ok_or_else(|| Error::Checkpoint {
            path: spec.name.clone(),
            message: format!("missing tensor {}", t.name),
        })?;
        out.push((t.name.clone(), tensor.clone()));
        if let Some(norm) = t.name.strip_suffix(".running_var") {
            let name = format!("{norm}.num_batches_tracked");
            let counter = match tensors.get(&name) {
                Some(c) => c.to_dtype(DType::I64)?.reshape(())?,
                None => Tensor::new(0i64, &Device::Cpu)?,
            };
            out.push((name, counter));
        }
    }
    Ok(out)
}

/// The state dict of `spec` ([`state_dict`]) under the names of `scheme`: torchvision's, or
/// the book's first or current edition, which need the book's layout (plain layers, the
/// ImageNet stem, conv biases). torchvision's legacy names are read, never written.
pub fn export_state_dict(
    spec: &VariantSpec,
    tensors: &HashMap<String, Tensor>,
    scheme: NamingScheme,
) -> Result<Vec<(String, Tensor)>> {
    let canonical = state_dict(spec, tensors)?;
    let refuse = |message: String| Error::Spec {
        origin: spec.name.clone(),
        message,
    };
    let book = spec.architecture.has_book_layout();
    match scheme {
        NamingScheme::Torchvision => Ok(canonical),
        NamingScheme::TorchvisionLegacy => Err(refuse(
            "torchvision's legacy names are read, not written: torchvision loads its current ones".into(),
        )),
        NamingScheme::D2l | NamingScheme::D2lCurrent if !book => Err(refuse(
            "the book's names need its layout (plain layers, ImageNet stem, conv biases)".into(),
        )),
        NamingScheme::D2l => {
            canonical_to_d2l(canonical, &spec.architecture.block_config).map_err(|e| refuse(e.message))
        }
        NamingScheme::D2lCurrent => canonical_to_d2l_current(canonical).map_err(|e| refuse(e.message)),
    }
}

/// Builds `spec` for inference from a map of canonical-named tensors, refusing any mismatch.
pub fn model_from_tensors(
    spec: &VariantSpec,
    tensors: HashMap<String, Tensor>,
    origin: &str,
    device: &Device,
) -> Result<DenseNet> {
    Checkpoint {
        origin: origin.to_string(),
        scheme: NamingScheme::Torchvision,
        tensors,
        metadata: None,
        optimizer: HashMap::new(),
        notices: Vec::new(),
    }
    .into_model(spec, device)
}

/// The tensors of a `VarMap` (parameters and running statistics), by name, detached: they share
/// the variables' storage, and a model built on them records no autograd graph.
pub fn varmap_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
        .collect()
}

/// The first `n` lines of `text`, and how many more there are.
fn first_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= n {
        return text.to_string();
    }
    format!("{}\n  ... and {} more", lines[..n].join("\n"), lines.len() - n)
}
