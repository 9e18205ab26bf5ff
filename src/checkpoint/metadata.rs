//! What a checkpoint written by this crate carries besides its tensors, in the safetensors
//! `__metadata__` (a map of strings): enough to use it without any flag.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::spec::VariantSpec;

const SPEC: &str = "densenet_zoo.spec";
const CLASSES: &str = "densenet_zoo.classes";
const PREPROCESS: &str = "densenet_zoo.preprocess";
const VERSION: &str = "densenet_zoo.version";
const TRAINING: &str = "densenet_zoo.training";
/// Which kind of model a file holds: `image` or `tabular`.
const KIND: &str = "densenet_zoo.kind";
/// The spec of a tabular net; before `densenet_zoo.kind` was written, its presence marked such
/// a file.
pub const TABULAR_SPEC: &str = "densenet_zoo.tabular_spec";

/// The kind of model a checkpoint written by this crate holds, as its metadata says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A DenseNet for images (and any file this crate did not write).
    Image,
    /// A net for tabular data, with its preprocessing.
    Tabular,
}

impl ModelKind {
    /// The kind `metadata` (a safetensors `__metadata__`) records; files written before the
    /// kind was recorded are told apart by the tabular spec, which only tabular files hold.
    pub fn of(metadata: &HashMap<String, String>) -> Self {
        match metadata.get(KIND).map(String::as_str) {
            Some("tabular") => Self::Tabular,
            Some(_) => Self::Image,
            None if metadata.contains_key(TABULAR_SPEC) => Self::Tabular,
            None => Self::Image,
        }
    }

    /// Records the kind in `metadata`.
    pub fn record(self, metadata: &mut HashMap<String, String>) {
        let name = match self {
            Self::Image => "image",
            Self::Tabular => "tabular",
        };
        metadata.insert(KIND.to_string(), name.to_string());
    }
}

/// The preprocessing recorded for other tools: resize, crop, mean, std and channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessRecord {
    /// Shorter side after resizing.
    pub resize: usize,
    /// Side of the centre crop, the network's input size.
    pub crop: usize,
    /// Per-channel mean, after scaling to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
    /// Input channels: 1 (grayscale) or 3 (RGB).
    pub channels: usize,
}

/// The metadata of a checkpoint written by this crate.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    /// The variant spec the tensors belong to.
    pub spec: VariantSpec,
    /// Class names, one per classifier output.
    pub classes: Vec<String>,
    /// The crate version that wrote the file.
    pub version: String,
    /// Training facts (epoch, accuracy, ...), where there are any.
    pub training: Option<serde_json::Value>,
}

impl Metadata {
    /// Metadata for `spec` with its built-in class names, written by this version of the crate.
    pub fn for_spec(spec: &VariantSpec) -> Self {
        Self {
            spec: spec.clone(),
            classes: crate::spec::labels::for_classes(
                spec.pretrained_cfg.labels.as_deref(),
                spec.architecture.num_classes,
            ),
            version: env!("CARGO_PKG_VERSION").to_string(),
            training: None,
        }
    }

    /// The preprocessing, as recorded in the file.
    pub fn preprocess(&self) -> PreprocessRecord {
        let p = &self.spec.pretrained_cfg.preprocess;
        PreprocessRecord {
            resize: p.resize,
            crop: p.crop,
            mean: p.mean.clone(),
            std: p.std.clone(),
            channels: self.spec.architecture.in_channels,
        }
    }

    /// The safetensors `__metadata__` map; `format: pt` keeps Hugging Face tools happy.
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            ("format".to_string(), "pt".to_string()),
            (SPEC.to_string(), to_json(&self.spec)),
            (CLASSES.to_string(), to_json(&self.classes)),
            (PREPROCESS.to_string(), to_json(&self.preprocess())),
            (VERSION.to_string(), self.version.clone()),
        ]);
        if let Some(training) = &self.training {
            map.insert(TRAINING.to_string(), training.to_string());
        }
        ModelKind::Image.record(&mut map);
        map
    }

    /// Reads our metadata back; `Ok(None)` when the file has none (e.g. a timm or torch file).
    ///
    /// # Errors
    /// A [`FieldError`] naming the metadata key that does not parse or fit.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Option<Self>, FieldError> {
        Self::parse(map).map_err(FieldError::said)
    }

    fn parse(map: &HashMap<String, String>) -> Result<Option<Self>, String> {
        let Some(spec_json) = map.get(SPEC) else {
            return Ok(None);
        };
        let spec = VariantSpec::from_json(spec_json, SPEC).map_err(|e| e.to_string())?;
        let classes: Vec<String> = match map.get(CLASSES) {
            Some(text) => serde_json::from_str(text).map_err(|e| format!("{CLASSES}: {e}"))?,
            None => crate::spec::labels::for_classes(
                spec.pretrained_cfg.labels.as_deref(),
                spec.architecture.num_classes,
            ),
        };
        if classes.len() != spec.architecture.num_classes {
            return Err(format!(
                "{CLASSES} lists {} names, but the spec has {} classes",
                classes.len(),
                spec.architecture.num_classes
            ));
        }
        let training = match map.get(TRAINING) {
            Some(text) => Some(serde_json::from_str(text).map_err(|e| format!("{TRAINING}: {e}"))?),
            None => None,
        };
        Ok(Some(Self {
            spec,
            classes,
            version: map.get(VERSION).cloned().unwrap_or_default(),
            training,
        }))
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("metadata values serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_is_read_from_the_key_and_from_files_written_before_it() {
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(ModelKind::of(&map(&[(KIND, "tabular")])), ModelKind::Tabular);
        assert_eq!(
            ModelKind::of(&map(&[(KIND, "image"), (SPEC, "{}")])),
            ModelKind::Image
        );
        // Before the kind was written: a tabular spec marks a tabular file; anything else,
        // our image checkpoints, timm's files with no metadata, is an image model.
        assert_eq!(ModelKind::of(&map(&[(TABULAR_SPEC, "{}")])), ModelKind::Tabular);
        assert_eq!(ModelKind::of(&map(&[(SPEC, "{}")])), ModelKind::Image);
        assert_eq!(ModelKind::of(&map(&[])), ModelKind::Image);
        let mut written = Metadata::for_spec(&VariantSpec::resolve("d2l").unwrap()).to_map();
        assert_eq!(ModelKind::of(&written), ModelKind::Image);
        ModelKind::Tabular.record(&mut written);
        assert_eq!(ModelKind::of(&written), ModelKind::Tabular);
    }
}
