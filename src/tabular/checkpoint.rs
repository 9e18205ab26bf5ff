//! Checkpoints of tabular nets: safetensors with the net's tensors (names of
//! [`DenseMlp`]) and, in `__metadata__`, the spec and the fitted preprocessing as JSON, so
//! that `infer` encodes new rows exactly as the training rows were.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::preprocess::Preprocessor;
use super::spec::MlpSpec;
use super::DenseMlp;
use crate::checkpoint::{kind_of_file, varmap_tensors, write_safetensors_with, ModelKind, TABULAR_SPEC};
use crate::error::{Error, Result};

const PREPROCESS_KEY: &str = "densenet_zoo.tabular_preprocess";
const VERSION_KEY: &str = "densenet_zoo.version";
const TRAINING_KEY: &str = "densenet_zoo.training";

/// A trained tabular net with what it needs to predict: its spec and preprocessing.
pub struct TabularModel {
    /// The spec it was built from.
    pub spec: MlpSpec,
    /// The preprocessing fitted on its training rows.
    pub preprocessor: Preprocessor,
    /// The net.
    pub model: DenseMlp,
    /// What training recorded (rows, epochs, cross-validation), if anything.
    pub training: Option<serde_json::Value>,
}

/// True when the safetensors `__metadata__` is a tabular checkpoint's.
pub fn is_tabular(metadata: &HashMap<String, String>) -> bool {
    ModelKind::of(metadata) == ModelKind::Tabular
}

/// True when `path` is a safetensors file whose metadata is a tabular checkpoint's; reads only
/// the header. False for anything else (an image model, a `.pth`, no such file).
pub fn is_tabular_file(path: &Path) -> bool {
    kind_of_file(path) == Some(ModelKind::Tabular)
}

/// Writes `tensors` of a net of `spec` with its `preprocessor` and `training` facts to `path`,
/// atomically.
pub fn save(
    path: &Path,
    spec: &MlpSpec,
    preprocessor: &Preprocessor,
    varmap: &candle_nn::VarMap,
    training: &serde_json::Value,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = varmap_tensors(varmap).into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let json = |v: serde_json::Result<String>| v.expect("specs and preprocessors serialise");
    let mut metadata = HashMap::from([
        (TABULAR_SPEC.to_string(), json(serde_json::to_string(spec))),
        (
            PREPROCESS_KEY.to_string(),
            json(serde_json::to_string(preprocessor)),
        ),
        (VERSION_KEY.to_string(), env!("CARGO_PKG_VERSION").to_string()),
        (TRAINING_KEY.to_string(), training.to_string()),
    ]);
    ModelKind::Tabular.record(&mut metadata);
    write_safetensors_with(path, &tensors, Some(metadata))
}

impl TabularModel {
    /// Reads a checkpoint [`save`] wrote.
    ///
    /// # Errors
    /// [`Error::Checkpoint`]: not a safetensors file, no tabular metadata (an image model's
    /// file says so), metadata that does not parse, or tensors that differ from the spec's
    /// (the missing, unexpected and misshapen ones named).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bad = |message: String| Error::Checkpoint {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let Some(spec_json) = metadata.get(TABULAR_SPEC) else {
            return Err(bad(
                "not a tabular model (no tabular spec in its metadata): a CSV file is predicted by \
                 a tabular net (dense-mlp, plain-mlp, linear-regression) trained on such a file"
                    .into(),
            ));
        };
        let spec = MlpSpec::from_json(spec_json, &format!("{} (metadata)", path.display()))?;
        let preprocessor: Preprocessor = metadata
            .get(PREPROCESS_KEY)
            .ok_or_else(|| bad(format!("{PREPROCESS_KEY} is missing from its metadata")))
            .and_then(|text| serde_json::from_str(text).map_err(|e| bad(format!("{PREPROCESS_KEY}: {e}"))))?;
        let training = metadata
            .get(TRAINING_KEY)
            .and_then(|t| serde_json::from_str(t).ok());
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
        let width = preprocessor.width();
        let expected = DenseMlp::tensors(&spec, width)?;
        let mut problems = Vec::new();
        for (t, _) in &expected {
            match tensors.get(&t.name) {
                None => problems.push(format!("{} missing", t.name)),
                Some(found) if found.dims() != t.shape.as_slice() => problems.push(format!(
                    "{}: shape {:?}, expected {:?}",
                    t.name,
                    found.dims(),
                    t.shape
                )),
                Some(_) => {}
            }
        }
        let names: HashSet<&str> = expected.iter().map(|(t, _)| t.name.as_str()).collect();
        let mut unexpected: Vec<&String> = tensors.keys().filter(|n| !names.contains(n.as_str())).collect();
        unexpected.sort();
        problems.extend(unexpected.into_iter().map(|n| format!("{n} unexpected")));
        if !problems.is_empty() {
            return Err(bad(format!(
                "its tensors do not fit {} over {width} inputs: {}",
                spec.name,
                problems.join("; ")
            )));
        }
        let tensors = tensors
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let model = DenseMlp::new(
            &spec,
            width,
            VarBuilder::from_tensors(tensors, DType::F32, device),
        )?;
        Ok(Self {
            spec,
            preprocessor,
            model,
            training,
        })
    }
}
