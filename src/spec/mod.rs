//! Variant specs: everything that differs between DenseNets, as data.
//!
//! One JSON file per variant lives in `variants/`; the same files are embedded in the
//! binary, so `--variant 121` works anywhere, and a user may pass a path to a file of
//! their own instead. [`VariantSpec::validate`] refuses a spec that cannot work before a
//! single tensor is allocated.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The variants that ship with the crate, as `(file name, JSON text)`.
const BUILTIN: &[(&str, &str)] = &[
    ("d2l.json", include_str!("../variants/d2l.json")),
    ("densenet121.json", include_str!("../variants/densenet121.json")),
    ("densenet169.json", include_str!("../variants/densenet169.json")),
    ("densenet201.json", include_str!("../variants/densenet201.json")),
    ("densenet264.json", include_str!("../variants/densenet264.json")),
    ("densenet161.json", include_str!("../variants/densenet161.json")),
    ("bc-100-12.json", include_str!("../variants/bc-100-12.json")),
    ("bc-250-24.json", include_str!("../variants/bc-250-24.json")),
    ("bc-190-40.json", include_str!("../variants/bc-190-40.json")),
];

/// How the network begins, before the first dense block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StemKind {
    /// 7×7/2 conv, batch norm, ReLU, 3×3/2 max pool with padding 1: (N,C,H,W) → (N,F,H/4,W/4).
    Imagenet,
    /// One 3×3/1 conv with padding 1 and nothing else: (N,C,H,W) → (N,F,H,W).
    Cifar,
}

/// What one dense layer computes from the concatenation of all earlier feature maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LayerKind {
    /// DenseNet-B: BN-ReLU-1×1 conv to `bn_size`·k channels, then BN-ReLU-3×3 conv to k.
    Bottleneck {
        /// Width of the 1×1 bottleneck, in multiples of the growth rate (4 in the paper).
        bn_size: usize,
    },
    /// The book's conv block: BN-ReLU-3×3 conv to k channels.
    Plain,
}

/// How an image becomes the network's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// The shorter side is resized to this many pixels.
    pub resize: usize,
    /// Then the centre `crop`×`crop` square is kept.
    pub crop: usize,
    /// Per-channel mean subtracted after scaling pixels to [0, 1]; one value per input channel.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by after the mean; one value per input channel.
    pub std: Vec<f32>,
}

/// The training recipe `densenet-zoo train` defaults to for the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Epochs over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// SGD momentum (0 for plain SGD).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay on every parameter (never on batch-norm running statistics).
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: crate::train::ScheduleKind,
    /// Fractions of the run at which the step schedule divides the rate by 10.
    pub milestones: Vec<f64>,
    /// Update rule.
    pub optimizer: crate::train::OptimizerKind,
    /// Random crop with 4 pixels of padding and horizontal flips.
    pub augment: bool,
    /// Where the recipe comes from.
    #[serde(default)]
    pub source: String,
}

impl Recipe {
    /// Checks that the recipe can run: at least one epoch of batches of at least one image, a
    /// positive finite learning rate, momentum in [0, 1), a finite non-negative weight decay,
    /// milestones within the run. The message names the field and the value found.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.batch_size == 0 {
            return Err("batch_size must be at least 1, found 0".into());
        }
        if self.epochs == 0 {
            return Err("epochs must be at least 1, found 0".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("lr must be positive, found {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!("momentum must be in [0, 1), found {}", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "weight_decay must be 0 or more, found {}",
                self.weight_decay
            ));
        }
        if let Some(m) = self.milestones.iter().find(|m| !(**m > 0.0 && **m <= 1.0)) {
            return Err(format!(
                "milestones are fractions of the run in (0, 1], found {m}"
            ));
        }
        Ok(())
    }
}

impl Default for Recipe {
    /// The paper's CIFAR recipe (Huang et al. 2017, 3.4).
    fn default() -> Self {
        Self {
            epochs: 300,
            batch_size: 64,
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
            schedule: crate::train::ScheduleKind::Step,
            milestones: vec![0.5, 0.75],
            optimizer: crate::train::OptimizerKind::Sgd,
            augment: true,
            source: "Huang et al. 2017, 3.4".into(),
        }
    }
}

/// A published accuracy for the variant, to compare a trained or imported model against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// The data set the accuracy was measured on.
    pub dataset: String,
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Where the figure comes from.
    pub source: String,
}

/// Everything that differs between DenseNet variants. One generic constructor,
/// [`crate::DenseNet::new`], builds any of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// Canonical name, e.g. `densenet121`.
    pub name: String,
    /// Other names accepted by `--variant`, e.g. `121`.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// Channels of the input image: 3 for RGB, 1 for grayscale.
    pub in_channels: usize,
    /// Outputs of the classifier.
    pub num_classes: usize,
    /// A built-in class-name list (`imagenet-1k`, `fashion-mnist`, `cifar-10`), if the classes are those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// The layers before the first dense block.
    pub stem: StemKind,
    /// Channels out of the stem (torchvision's `num_init_features`).
    pub stem_features: usize,
    /// k: channels each dense layer adds.
    pub growth_rate: usize,
    /// Number of dense layers in each dense block.
    pub block_config: Vec<usize>,
    /// What a dense layer computes.
    pub layer: LayerKind,
    /// θ: a transition keeps `floor(θ·C)` of its C input channels.
    pub compression: f64,
    /// Whether convolutions carry a bias (the book's net does, torchvision's do not).
    #[serde(default)]
    pub conv_bias: bool,
    /// Dropout probability on each dense layer's new features, in training only.
    #[serde(default)]
    pub drop_rate: f64,
    /// Default square input size in pixels.
    pub input_size: usize,
    /// Image preprocessing for inference.
    pub preprocess: Preprocess,
    /// The default training recipe [default: the paper's CIFAR recipe].
    #[serde(default)]
    pub recipe: Recipe,
    /// Published accuracy, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    /// Hugging Face hub repository with pretrained weights in torchvision's names, where one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<String>,
}

impl VariantSpec {
    /// Parses and validates a spec from JSON text; `origin` names the text in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let spec: VariantSpec = serde_json::from_str(text).map_err(|e| Error::Spec {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        spec.validate().map_err(|message| Error::Spec {
            origin: origin.to_string(),
            message,
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

    /// Resolves `--variant`: a built-in name or alias (`121`, `densenet121`, `d2l`, `bc-100-12`),
    /// or else a path to a JSON spec file.
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

    /// Checks that the spec describes a network that can be built; the message says why not.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("in_channels", self.in_channels),
            ("num_classes", self.num_classes),
            ("stem_features", self.stem_features),
            ("growth_rate", self.growth_rate),
            ("input_size", self.input_size),
            ("preprocess.resize", self.preprocess.resize),
            ("preprocess.crop", self.preprocess.crop),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(format!("{field} must be at least 1, found 0"));
            }
        }
        const LIMIT: usize = 1 << 16;
        for (field, value) in positive {
            if value > LIMIT {
                return Err(format!("{field} is {value}, more than the limit of {LIMIT}"));
            }
        }
        if let Some(list) = &self.labels {
            if crate::labels::builtin(list).is_none() {
                return Err(format!(
                    "labels `{list}` is not a built-in list ({})",
                    crate::labels::names().join(", ")
                ));
            }
        }
        if self.block_config.is_empty() {
            return Err("block_config must list at least one dense block, found none".into());
        }
        if let Some(i) = self.block_config.iter().position(|&n| n == 0) {
            return Err(format!(
                "block_config[{i}] is 0: every dense block needs at least one layer"
            ));
        }
        if let Some(n) = self.block_config.iter().find(|&&n| n > 1024) {
            return Err(format!(
                "block_config has a block of {n} layers, more than the limit of 1024"
            ));
        }
        if let LayerKind::Bottleneck { bn_size } = self.layer {
            if bn_size == 0 || bn_size > 64 {
                return Err(format!("layer.bn_size must be between 1 and 64, found {bn_size}"));
            }
        }
        if !(self.compression > 0.0 && self.compression <= 1.0) {
            return Err(format!(
                "compression must be in (0, 1], found {}",
                self.compression
            ));
        }
        if !(0.0..1.0).contains(&self.drop_rate) {
            return Err(format!("drop_rate must be in [0, 1), found {}", self.drop_rate));
        }
        for (field, values) in [("mean", &self.preprocess.mean), ("std", &self.preprocess.std)] {
            if values.len() != self.in_channels {
                return Err(format!(
                    "preprocess.{field} has {} values, expected one per input channel ({})",
                    values.len(),
                    self.in_channels
                ));
            }
        }
        if let Some(s) = self.preprocess.std.iter().find(|s| s.is_nan() || **s <= 0.0) {
            return Err(format!("preprocess.std values must be positive, found {s}"));
        }
        if self.preprocess.crop > self.preprocess.resize {
            return Err(format!(
                "preprocess.crop ({}) is larger than preprocess.resize ({})",
                self.preprocess.crop, self.preprocess.resize
            ));
        }
        for t in self.stages().iter().filter_map(|s| s.transition) {
            if t.out_channels == 0 {
                return Err(format!("transition {} would keep 0 channels", t.number));
            }
        }
        self.check_input_size(self.input_size)
    }

    /// The spec for square inputs of `size` pixels: `input_size` and the centre crop become
    /// `size`, and the resize before the crop keeps its ratio to the crop (256/224 stays 8/7).
    pub fn set_input_size(&mut self, size: usize) {
        if self.input_size != size {
            let p = &mut self.preprocess;
            p.resize = ((size * p.resize) as f64 / p.crop as f64).round() as usize;
            p.crop = size;
            self.input_size = size;
        }
    }

    /// True when the book's code can hold this net (plain layers, the ImageNet stem, conv
    /// biases), so that its names can be written.
    pub fn has_book_layout(&self) -> bool {
        self.layer == LayerKind::Plain && self.stem == StemKind::Imagenet && self.conv_bias
    }

    /// Channels out of a transition that receives `channels`: `floor(θ·channels)`.
    pub fn transition_channels(&self, channels: usize) -> usize {
        (channels as f64 * self.compression).floor() as usize
    }

    /// Channels out of the last dense block (the width of the pooled embedding).
    pub fn num_features(&self) -> usize {
        self.stages()
            .last()
            .map_or(self.stem_features, |s| s.out_channels)
    }

    /// Channels after the stem and after each dense block, in order.
    pub fn stage_channels(&self) -> Vec<usize> {
        std::iter::once(self.stem_features)
            .chain(self.stages().iter().map(|s| s.out_channels))
            .collect()
    }

    /// Spatial side after the stem and after each dense block, for a square input of
    /// `size` pixels; an error says which stage would be empty.
    pub fn stage_sizes(&self, size: usize) -> std::result::Result<Vec<usize>, String> {
        // Output side of a k×k/s convolution or pool with padding p: floor((n + 2p - k)/s) + 1.
        let window = |n: usize, k: usize, s: usize, p: usize| (n + 2 * p).checked_sub(k).map(|m| m / s + 1);
        let stem = match self.stem {
            StemKind::Imagenet => window(size, 7, 2, 3).and_then(|n| window(n, 3, 2, 1)),
            StemKind::Cifar => window(size, 3, 1, 1),
        };
        let mut side = match stem {
            Some(n) if n > 0 => n,
            _ => return Err(format!("input size {size} is too small for the stem")),
        };
        let mut out = vec![side];
        for i in 0..self.block_config.len() {
            if i > 0 {
                side /= 2;
                if side == 0 {
                    return Err(format!(
                        "input size {size} is too small: the feature map is 1×1 before transition {i}, \
                         whose 2×2 average pool would leave nothing; use an input of at least {}",
                        self.min_input_size()
                    ));
                }
            }
            out.push(side);
        }
        Ok(out)
    }

    /// Checks that a square input of `size` pixels survives every downsampling stage.
    pub fn check_input_size(&self, size: usize) -> std::result::Result<(), String> {
        self.stage_sizes(size).map(|_| ())
    }

    /// The smallest square input that survives every downsampling stage.
    pub fn min_input_size(&self) -> usize {
        let transitions = self.block_config.len().saturating_sub(1) as u32;
        let stem_side = 1usize << transitions;
        match self.stem {
            // Each of the conv and the pool maps n to floor((n-1)/2)+1, so side s needs 2s-1 before it.
            StemKind::Imagenet => 2 * (2 * stem_side - 1) - 1,
            StemKind::Cifar => stem_side,
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
        assert_eq!(VariantSpec::resolve("DenseNet161").unwrap().growth_rate, 48);
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
        let err = spec.check_input_size(28).unwrap_err();
        assert!(err.contains("input size 28 is too small"), "{err}");
        assert!(err.contains("at least 29"), "{err}");
        assert_eq!(spec.min_input_size(), 29);
        assert!(spec.check_input_size(29).is_ok());
        assert_eq!(spec.stage_sizes(96).unwrap(), vec![24, 24, 12, 6, 3]);
    }

    #[test]
    fn min_input_size_is_exact_for_every_builtin() {
        for spec in VariantSpec::builtin() {
            let min = spec.min_input_size();
            assert!(spec.check_input_size(min).is_ok(), "{}", spec.name);
            assert!(spec.check_input_size(min - 1).is_err(), "{}", spec.name);
        }
    }

    #[test]
    fn impossible_specs_are_refused_with_the_reason() {
        let base = include_str!("../variants/densenet121.json");
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
        ];
        for (from, to, expected) in cases {
            let text = base.replace(from, to);
            assert_ne!(text, base);
            let err = VariantSpec::from_json(&text, "my.json").unwrap_err().to_string();
            assert!(err.contains("my.json") && err.contains(expected), "{err}");
        }
    }

    #[test]
    fn channels_follow_growth_and_compression() {
        let spec = VariantSpec::resolve("121").unwrap();
        assert_eq!(spec.stage_channels(), vec![64, 256, 512, 1024, 1024]);
        assert_eq!(spec.num_features(), 1024);
        let spec = VariantSpec::resolve("d2l").unwrap();
        assert_eq!(spec.stage_channels(), vec![64, 192, 224, 240, 248]);
    }
}
