//! Variant specs: everything that differs between DenseNets, as data.
//!
//! One JSON file per variant lives in `variants/`; the same files are embedded in the
//! binary, so `--variant 121` works anywhere, and a user may pass a path to a file of
//! their own instead. [`VariantSpec::validate`] refuses a spec that cannot work before a
//! single tensor is allocated.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, FieldError, Result};

mod architecture;
mod file;
pub mod labels;
mod pretrained_cfg;
mod recipe;
mod vocabulary;

pub(crate) use architecture::check_sizes;
pub use architecture::{Architecture, LayerKind, StemKind, TransitionPool};
pub use pretrained_cfg::{Preprocess, PretrainedCfg, Reference};
pub use recipe::Recipe;
pub use vocabulary::{Augment, OptimizerKind, ScheduleKind};

/// The variants that ship with the crate, as `(file name, JSON text)`.
const BUILTIN: &[(&str, &str)] = &[
    ("d2l.json", include_str!("../../variants/d2l.json")),
    (
        "densenet121.json",
        include_str!("../../variants/densenet121.json"),
    ),
    (
        "densenet169.json",
        include_str!("../../variants/densenet169.json"),
    ),
    (
        "densenet201.json",
        include_str!("../../variants/densenet201.json"),
    ),
    (
        "densenet264.json",
        include_str!("../../variants/densenet264.json"),
    ),
    (
        "densenet161.json",
        include_str!("../../variants/densenet161.json"),
    ),
    ("bc-100-12.json", include_str!("../../variants/bc-100-12.json")),
    ("bc-250-24.json", include_str!("../../variants/bc-250-24.json")),
    ("bc-190-40.json", include_str!("../../variants/bc-190-40.json")),
];

/// A DenseNet variant: its [`Architecture`] (what [`crate::DenseNet::new`] builds), its
/// [`PretrainedCfg`] (preprocessing, class names, hub repository, published accuracy; timm's
/// `pretrained_cfg`) and the training [`Recipe`] it defaults to. One generic constructor builds
/// every variant.
///
/// In JSON (the files in `variants/`, checkpoints' metadata) it is one flat object, read
/// strictly; see `variants/densenet121.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "file::SpecFile", into = "file::SpecFile")]
pub struct VariantSpec {
    /// Canonical name, e.g. `densenet121`.
    pub name: String,
    /// Other names accepted by `--variant`, e.g. `121`.
    pub aliases: Vec<String>,
    /// One line for humans.
    pub description: String,
    /// The network's shape.
    pub architecture: Architecture,
    /// What its weights expect and mean.
    pub pretrained_cfg: PretrainedCfg,
    /// The default training recipe [default: the paper's CIFAR recipe].
    pub recipe: Recipe,
}
impl VariantSpec {
    /// Parses and validates a spec from JSON text; `origin` names the text in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let spec: VariantSpec = serde_json::from_str(text).map_err(|e| Error::Spec {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        spec.validate().map_err(|e| Error::Spec {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        Ok(spec)
    }

    /// Reads and validates a spec from a JSON file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Every built-in variant, in the order of the README's table.
    pub fn builtin() -> Vec<VariantSpec> {
        BUILTIN
            .iter()
            .map(|(file, text)| {
                Self::from_json(text, &format!("variants/{file} (embedded)"))
                    .expect("embedded variant specs are valid")
            })
            .collect()
    }

    /// Resolves a variant: a built-in name or alias (`121`, `densenet121`, `d2l`, `bc-100-12`),
    /// or else a path to a JSON spec file. Image variants only: [`crate::Variant::resolve`]
    /// knows the tabular nets too, and names them when an image variant is asked for.
    pub fn resolve(name_or_path: &str) -> Result<Self> {
        let wanted = name_or_path.to_ascii_lowercase();
        let builtin = Self::builtin();
        if let Some(spec) = builtin
            .iter()
            .find(|s| s.name == wanted || s.aliases.contains(&wanted))
        {
            return Ok(spec.clone());
        }
        let path = Path::new(name_or_path);
        if path.exists() {
            return Self::from_file(path);
        }
        Err(Error::UnknownVariant {
            name: name_or_path.to_string(),
            known: builtin.iter().map(|s| s.name.clone()).collect(),
        })
    }

    /// Checks that the spec describes a network that can be built, with preprocessing that
    /// fits it; the error names the field.
    pub fn validate(&self) -> std::result::Result<(), FieldError> {
        self.architecture.validate()?;
        self.pretrained_cfg.validate(self.architecture.in_channels)?;
        self.recipe.validate().map_err(|e| e.within("recipe"))?;
        self.architecture.check_input_size(self.input_size())
    }

    /// Square input side in pixels: the preprocessing's centre crop.
    pub fn input_size(&self) -> usize {
        self.pretrained_cfg.input_size()
    }

    /// The spec for square inputs of `size` pixels: the centre crop (the input size) becomes
    /// `size`, and the resize before the crop keeps its ratio to the crop (256/224 stays 8/7).
    pub fn set_input_size(&mut self, size: usize) {
        let p = &mut self.pretrained_cfg.preprocess;
        if p.crop != size {
            p.resize = ((size * p.resize) as f64 / p.crop as f64).round() as usize;
            p.crop = size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_resolves_by_name_and_alias() {
        for spec in VariantSpec::builtin() {
            assert_eq!(VariantSpec::resolve(&spec.name).unwrap(), spec);
            for alias in &spec.aliases {
                assert_eq!(VariantSpec::resolve(alias).unwrap().name, spec.name);
            }
        }
        assert_eq!(VariantSpec::resolve("121").unwrap().name, "densenet121");
        assert_eq!(
            VariantSpec::resolve("DenseNet161")
                .unwrap()
                .architecture
                .growth_rate,
            48
        );
    }

    #[test]
    fn unknown_variant_lists_the_known_ones() {
        let err = VariantSpec::resolve("densenet999").unwrap_err().to_string();
        assert!(err.contains("densenet999"), "{err}");
        assert!(err.contains("densenet121") && err.contains("bc-190-40"), "{err}");
    }

    #[test]
    fn the_books_net_is_too_deep_for_28_pixels() {
        let spec = VariantSpec::resolve("d2l").unwrap();
        let err = spec.architecture.check_input_size(28).unwrap_err().to_string();
        assert!(err.contains("input size 28 is too small"), "{err}");
        assert!(err.contains("at least 29"), "{err}");
        assert_eq!(spec.architecture.min_input_size(), 29);
        assert!(spec.architecture.check_input_size(29).is_ok());
        assert_eq!(spec.architecture.stage_sizes(96).unwrap(), vec![24, 24, 12, 6, 3]);
    }

    #[test]
    fn min_input_size_is_exact_for_every_builtin() {
        for spec in VariantSpec::builtin() {
            let min = spec.architecture.min_input_size();
            assert!(spec.architecture.check_input_size(min).is_ok(), "{}", spec.name);
            assert!(
                spec.architecture.check_input_size(min - 1).is_err(),
                "{}",
                spec.name
            );
        }
    }

    #[test]
    fn impossible_specs_are_refused_with_the_reason() {
        let base = include_str!("../../variants/densenet121.json");
        let cases = [
            (
                "\"block_config\": [6, 12, 24, 16]",
                "\"block_config\": []",
                "at least one dense block",
            ),
            (
                "\"block_config\": [6, 12, 24, 16]",
                "\"block_config\": [6, 0]",
                "block_config[1] is 0",
            ),
            (
                "\"growth_rate\": 32",
                "\"growth_rate\": 0",
                "growth_rate must be at least 1",
            ),
            (
                "\"growth_rate\": 32",
                "\"growth_rate\": -3",
                "invalid value: integer `-3`",
            ),
            (
                "\"compression\": 0.5",
                "\"compression\": 1.5",
                "compression must be in (0, 1]",
            ),
            (
                "\"input_size\": 224",
                "\"input_size\": 8",
                "input size 8 is too small",
            ),
            (
                "\"in_channels\": 3",
                "\"in_channels\": 1",
                "preprocess.mean has 3 values",
            ),
            (
                "\"growth_rate\": 32",
                "\"growth_rate\": 32, \"colour\": 1",
                "unknown field `colour`",
            ),
            (
                "\"resize\": 256,",
                "\"resize\": 256, \"interpolation\": \"bicubic\",",
                "unknown field `interpolation`",
            ),
            (
                "\"bn_size\": 4",
                "\"bn_size\": 4, \"memory_efficient\": true",
                "unknown field `memory_efficient`",
            ),
            (
                "\"batch_size\": 256,",
                "\"batch_size\": 0,",
                "recipe.batch_size must be at least 1",
            ),
            (
                "\"growth_rate\": 32",
                "\"growth_rate\": 32, \"transition_pool\": \"mean\"",
                "transition_pool must be \"avg\" or \"max\", found \"mean\"",
            ),
        ];
        for (from, to, expected) in cases {
            let text = base.replace(from, to);
            assert_ne!(text, base);
            let err = VariantSpec::from_json(&text, "my.json").unwrap_err().to_string();
            assert!(err.contains("my.json") && err.contains(expected), "{err}");
        }
    }

    #[test]
    fn transition_pooling_is_read_and_written_only_when_not_the_default() {
        let base = include_str!("../../variants/d2l.json");
        let avg = VariantSpec::from_json(base, "d2l.json").unwrap();
        assert_eq!(avg.architecture.transition_pool, TransitionPool::Avg);
        assert!(
            !serde_json::to_string(&avg).unwrap().contains("transition_pool"),
            "older readers refuse unknown fields"
        );
        let text = base.replace(
            "\"growth_rate\": 32",
            "\"growth_rate\": 32, \"transition_pool\": \"max\"",
        );
        let max = VariantSpec::from_json(&text, "max.json").unwrap();
        assert_eq!(max.architecture.transition_pool, TransitionPool::Max);
        let again = VariantSpec::from_json(&serde_json::to_string(&max).unwrap(), "again.json").unwrap();
        assert_eq!(again, max);
    }

    #[test]
    fn channels_follow_growth_and_compression() {
        let spec = VariantSpec::resolve("121").unwrap();
        assert_eq!(spec.architecture.stage_channels(), vec![64, 256, 512, 1024, 1024]);
        assert_eq!(spec.architecture.num_features(), 1024);
        let spec = VariantSpec::resolve("d2l").unwrap();
        assert_eq!(spec.architecture.stage_channels(), vec![64, 192, 224, 240, 248]);
    }
}
