//! Specs of the nets for tabular data: dense connectivity for fully connected layers (the
//! book's exercise 5 of the DenseNet chapter), the plain MLP and linear regression it is
//! measured against. As the image variants, they are data: `variants/dense-mlp.json`,
//! `plain-mlp.json` and `linear-regression.json` are embedded, and a user may pass a file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, FieldError, Result};
use crate::spec::{check_sizes, Recipe};

/// The tabular specs that ship with the crate, as `(file name, JSON text)`.
const BUILTIN: &[(&str, &str)] = &[
    ("dense-mlp.json", include_str!("../../variants/dense-mlp.json")),
    ("plain-mlp.json", include_str!("../../variants/plain-mlp.json")),
    (
        "linear-regression.json",
        include_str!("../../variants/linear-regression.json"),
    ),
];

/// The most layers a block (or a plain net) may have.
const MAX_LAYERS: usize = 1024;
/// The most epochs a recipe may ask for.
const MAX_EPOCHS: usize = 1_000_000;

/// A net for one numeric target from a row of encoded features: its connectivity and the
/// recipe it trains with. Read strictly from JSON (see `variants/dense-mlp.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpSpec {
    /// Canonical name, e.g. `dense-mlp`.
    pub name: String,
    /// Other names accepted by `--variant`.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// How the hidden layers connect.
    pub connectivity: Connectivity,
    /// The training recipe (`augment` must be `none` and `label_smoothing` 0: rows are not
    /// images and the target is not a class).
    pub recipe: Recipe,
}

/// The hidden layers. Every hidden layer is linear → batch norm → ReLU; the head is one linear
/// output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Connectivity {
    /// Dense connectivity (Huang et al. 2017, for fully connected layers): a stem layer of
    /// `stem_width`, then dense blocks whose layers each see the concatenation of the block's
    /// input and every earlier layer's output and add `growth_width` features; between blocks a
    /// transition layer compresses the width to ⌊width × `compression`⌋.
    Dense {
        /// Width of the first hidden layer.
        stem_width: usize,
        /// Features each dense layer adds (the growth rate).
        growth_width: usize,
        /// Layers per dense block.
        block_config: Vec<usize>,
        /// Transition compression θ in (0, 1].
        compression: f64,
    },
    /// Hidden layers in sequence, each seeing only the one before; none is linear regression.
    Plain {
        /// Width of each hidden layer, in order.
        hidden_widths: Vec<usize>,
    },
}

impl MlpSpec {
    /// Parses and validates a spec from JSON text; `origin` names the text in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let spec: MlpSpec = serde_json::from_str(text).map_err(|e| Error::Spec {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        spec.validate().map_err(|message| Error::Spec {
            origin: origin.to_string(),
            message: message.to_string(),
        })?;
        Ok(spec)
    }

    /// Every built-in tabular spec.
    pub fn builtin() -> Vec<MlpSpec> {
        BUILTIN
            .iter()
            .map(|(file, text)| {
                Self::from_json(text, &format!("variants/{file} (embedded)"))
                    .expect("embedded tabular specs are valid")
            })
            .collect()
    }

    /// The built-in spec called `name` (or an alias), if any.
    pub fn find_builtin(name: &str) -> Option<MlpSpec> {
        let wanted = name.to_ascii_lowercase();
        Self::builtin()
            .into_iter()
            .find(|s| s.name == wanted || s.aliases.contains(&wanted))
    }

    /// Resolves `--variant` for tabular data: a built-in name, or a JSON file that describes
    /// a tabular net (one with `connectivity`). `Ok(None)` when it is neither (an image variant).
    pub fn resolve(name_or_path: &str) -> Result<Option<Self>> {
        if let Some(spec) = Self::find_builtin(name_or_path) {
            return Ok(Some(spec));
        }
        let path = Path::new(name_or_path);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let is_tabular = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .is_some_and(|v| v.get("connectivity").is_some());
        if !is_tabular {
            return Ok(None);
        }
        Self::from_json(&text, &path.display().to_string()).map(Some)
    }

    /// Checks that the spec can be built and trained; the error names the field and value.
    pub fn validate(&self) -> std::result::Result<(), FieldError> {
        self.problems().map_err(FieldError::said)
    }

    fn problems(&self) -> std::result::Result<(), String> {
        match &self.connectivity {
            Connectivity::Dense {
                stem_width,
                growth_width,
                block_config,
                compression,
            } => {
                check_sizes(&[("stem_width", *stem_width), ("growth_width", *growth_width)])?;
                if block_config.is_empty() || block_config.contains(&0) {
                    return Err(format!(
                        "block_config needs at least one block of at least one layer, found {block_config:?}"
                    ));
                }
                if let Some(n) = block_config.iter().find(|&&n| n > MAX_LAYERS) {
                    return Err(format!(
                        "block_config has a block of {n} layers, more than the limit of {MAX_LAYERS}"
                    ));
                }
                if !(*compression > 0.0 && *compression <= 1.0) {
                    return Err(format!("compression must be in (0, 1], found {compression}"));
                }
                let mut width = *stem_width;
                for (i, layers) in block_config.iter().enumerate() {
                    width += layers * growth_width;
                    check_sizes(&[(&format!("the width after dense block {}", i + 1), width)])?;
                    if i + 1 < block_config.len() {
                        width = (width as f64 * compression).floor() as usize;
                        if width == 0 {
                            return Err(format!("transition {} compresses the width to 0", i + 1));
                        }
                    }
                }
            }
            Connectivity::Plain { hidden_widths } => {
                if hidden_widths.len() > MAX_LAYERS {
                    return Err(format!(
                        "hidden_widths has {} layers, more than the limit of {MAX_LAYERS}",
                        hidden_widths.len()
                    ));
                }
                for w in hidden_widths {
                    check_sizes(&[("hidden_widths", *w)])?;
                }
            }
        }
        self.recipe.validate().map_err(|e| e.within("recipe").message)?;
        if self.recipe.epochs > MAX_EPOCHS {
            return Err(format!(
                "recipe.epochs is {}, more than the limit of {MAX_EPOCHS}",
                self.recipe.epochs
            ));
        }
        if self.recipe.augment != crate::data::Augment::None {
            return Err("recipe.augment must be none: rows of a table are not augmented".into());
        }
        if self.recipe.label_smoothing != 0.0 {
            return Err("recipe.label_smoothing must be 0: the target is a number, not a class".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_runs_of_every_tabular_recipe_train_their_first_epoch_at_the_full_rate() {
        for spec in MlpSpec::builtin() {
            crate::train::assert_short_runs_start_at_the_full_rate(&spec.name, &spec.recipe);
        }
    }
}
