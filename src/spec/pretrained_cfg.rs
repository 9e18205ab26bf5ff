//! What a variant's weights expect and mean, apart from its architecture: timm's
//! `pretrained_cfg` (input size, interpolation, mean, std, crop, class names, hub repository).

use serde::{Deserialize, Serialize};

use super::architecture::check_sizes;
use crate::error::FieldError;

/// How an image becomes the network's input: torchvision's `Resize(resize)`,
/// `CenterCrop(crop)`, `ToTensor()`, `Normalize(mean, std)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// The shorter side is resized to this many pixels.
    pub resize: usize,
    /// Then the centre `crop`×`crop` square is kept: the model's input size.
    pub crop: usize,
    /// Per-channel mean subtracted after scaling pixels to [0, 1]; one value per input channel.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by after the mean; one value per input channel.
    pub std: Vec<f32>,
}

/// A published accuracy for the variant, to compare a trained or imported model against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// The data set the accuracy was measured on.
    pub dataset: String,
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Where the figure comes from.
    pub source: String,
}

/// What weights of a variant expect and mean: the preprocessing (whose crop is the input
/// size), the class names, where pretrained weights are, and their published accuracy.
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainedCfg {
    /// Image preprocessing for inference; `preprocess.crop` is the input size.
    pub preprocess: Preprocess,
    /// A built-in class-name list (`imagenet-1k`, `fashion-mnist`, `cifar-10`), if the classes
    /// are those.
    pub labels: Option<String>,
    /// Hugging Face hub repository with pretrained weights in torchvision's names, where one
    /// exists (timm's `hf_hub_id`).
    pub hf_hub_id: Option<String>,
    /// Published accuracy, where there is one.
    pub reference: Option<Reference>,
}

impl PretrainedCfg {
    /// Square input side in pixels: the centre crop.
    pub fn input_size(&self) -> usize {
        self.preprocess.crop
    }

    /// Checks the configuration for a net of `in_channels` inputs; the error names the field.
    pub fn validate(&self, in_channels: usize) -> Result<(), FieldError> {
        self.problems(in_channels).map_err(FieldError::said)
    }

    fn problems(&self, in_channels: usize) -> Result<(), String> {
        let p = &self.preprocess;
        check_sizes(&[("preprocess.resize", p.resize), ("preprocess.crop", p.crop)])?;
        if let Some(list) = &self.labels {
            if crate::spec::labels::builtin(list).is_none() {
                return Err(format!(
                    "labels `{list}` is not a built-in list ({})",
                    crate::spec::labels::names().join(", ")
                ));
            }
        }
        for (field, values) in [("mean", &p.mean), ("std", &p.std)] {
            if values.len() != in_channels {
                return Err(format!(
                    "preprocess.{field} has {} values, expected one per input channel ({in_channels})",
                    values.len(),
                ));
            }
        }
        if let Some(s) = p.std.iter().find(|s| s.is_nan() || **s <= 0.0) {
            return Err(format!("preprocess.std values must be positive, found {s}"));
        }
        if p.crop > p.resize {
            return Err(format!(
                "preprocess.crop ({}) is larger than preprocess.resize ({})",
                p.crop, p.resize
            ));
        }
        Ok(())
    }
}
