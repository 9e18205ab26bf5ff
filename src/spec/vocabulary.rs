//! The vocabulary a [`Recipe`](super::Recipe) is written in: the shape of the learning rate,
//! the update rule and the training augmentation. The modules that act on them re-export them
//! (`train::ScheduleKind`, `train::OptimizerKind`, `data::Augment`).

use serde::{Deserialize, Serialize};

/// The shape of the learning rate over the run.
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Held constant, as the book trains.
    Constant,
    /// Divided by 10 at each milestone: the paper's, at 50 % and 75 % of the epochs (CIFAR).
    Step,
    /// Cosine decay over the run, stepped once an epoch as torchvision's reference recipe steps
    /// `CosineAnnealingLR`.
    Cosine,
}

/// Which update rule.
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD: momentum, optional Nesterov, L2 weight decay, as `torch.optim.SGD`.
    Sgd,
    /// AdamW: decoupled weight decay, as `torch.optim.AdamW` (β = 0.9, 0.999, ε = 1e-8).
    Adamw,
}

/// The augmentation of training samples; evaluation never augments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Augment {
    /// None: the evaluation transform (resize, centre crop).
    #[cfg_attr(feature = "cli", value(alias = "false"))]
    None,
    /// The CIFAR recipe (Huang et al. 2017, 4.1, after He et al. 2016): the image as evaluated,
    /// padded with 4 zero pixels, a random crop back to its size, and a horizontal flip with
    /// probability ½.
    #[cfg_attr(feature = "cli", value(alias = "true"))]
    CropFlip,
    /// torchvision's ImageNet reference recipe: `RandomResizedCrop(size, scale=(0.08, 1),
    /// ratio=(3/4, 4/3))`, bilinear, then `RandomHorizontalFlip()`.
    Imagenet,
    /// The paper's code, fb.resnet.torch: the ImageNet recipe, plus colour jitter (brightness,
    /// contrast and saturation factors in [0.6, 1.4], in random order) and AlexNet's PCA
    /// lighting noise (σ 0.1, ImageNet's eigenvalues) before normalisation.
    Fb,
}

/// Older files wrote `"augment": true` (the crop and flip) or `false`; both still read.
impl<'de> Deserialize<'de> for Augment {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Flag(bool),
            Name(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Flag(true) => Ok(Augment::CropFlip),
            Written::Flag(false) => Ok(Augment::None),
            Written::Name(name) => match name.as_str() {
                "none" => Ok(Augment::None),
                "crop-flip" => Ok(Augment::CropFlip),
                "imagenet" => Ok(Augment::Imagenet),
                "fb" => Ok(Augment::Fb),
                other => Err(serde::de::Error::custom(format!(
                    "unknown augmentation `{other}`: expected none, crop-flip, imagenet or fb"
                ))),
            },
        }
    }
}

impl Augment {
    /// True when the sample is cropped at a random place and scale from the whole image,
    /// rather than from the evaluation transform's output.
    pub fn resizes_crops(self) -> bool {
        matches!(self, Augment::Imagenet | Augment::Fb)
    }
}
