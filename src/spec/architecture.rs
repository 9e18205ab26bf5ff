//! The architecture of a DenseNet: what [`crate::DenseNet::new`] builds, and nothing else (timm's
//! model arguments).

use serde::{Deserialize, Serialize};

use crate::error::FieldError;

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
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LayerKind {
    /// DenseNet-B: BN-ReLU-1×1 conv to `bn_size`·k channels, then BN-ReLU-3×3 conv to k.
    Bottleneck {
        /// Width of the 1×1 bottleneck, in multiples of the growth rate (4 in the paper).
        bn_size: usize,
    },
    /// The book's conv block: BN-ReLU-3×3 conv to k channels.
    Plain,
}

/// How a transition halves the resolution (the book's exercise 1 asks why average, not max).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum TransitionPool {
    /// 2×2/2 average pool, as every published DenseNet (torchvision's `AvgPool2d(2, 2)`).
    #[default]
    Avg,
    /// 2×2/2 max pool after the 1×1 conv (`MaxPool2d(2, 2)`); no torchvision class has it.
    Max,
}

/// Read from spec files with an error that names the field (serde's would speak of an
/// "unknown variant").
impl TryFrom<String> for TransitionPool {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "avg" => Ok(TransitionPool::Avg),
            "max" => Ok(TransitionPool::Max),
            other => Err(format!(
                "transition_pool must be \"avg\" or \"max\", found \"{other}\""
            )),
        }
    }
}

impl TransitionPool {
    /// True for the default, [`TransitionPool::Avg`].
    pub fn is_avg(&self) -> bool {
        *self == TransitionPool::Avg
    }

    /// `avg` or `max`, as spec files write it.
    pub fn name(self) -> &'static str {
        match self {
            TransitionPool::Avg => "avg",
            TransitionPool::Max => "max",
        }
    }
}

/// The largest value a size field may take: 65,536.
const SIZE_LIMIT: usize = 1 << 16;

/// The shape of a DenseNet (Huang et al. 2017, Table 1): every tensor's name and shape follow
/// from it, and nothing about data, preprocessing or training is in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Architecture {
    /// Channels of the input image: 3 for RGB, 1 for grayscale.
    pub in_channels: usize,
    /// Outputs of the classifier.
    pub num_classes: usize,
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
    pub conv_bias: bool,
    /// Dropout probability on each dense layer's new features, in training only.
    pub drop_rate: f64,
    /// How each transition downsamples: average (the default) or max pooling.
    pub transition_pool: TransitionPool,
}

impl Architecture {
    /// Checks that the architecture can be built; the error names the field and the value.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.problems().map_err(FieldError::said)
    }

    fn problems(&self) -> Result<(), String> {
        let sizes = [
            ("in_channels", self.in_channels),
            ("num_classes", self.num_classes),
            ("stem_features", self.stem_features),
            ("growth_rate", self.growth_rate),
        ];
        check_sizes(&sizes)?;
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
        for t in self.stages().iter().filter_map(|s| s.transition) {
            if t.out_channels == 0 {
                return Err(format!("transition {} would keep 0 channels", t.number));
            }
        }
        Ok(())
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
    /// `size` pixels; an error (of the field `input_size`) says which stage would be empty.
    pub fn stage_sizes(&self, size: usize) -> Result<Vec<usize>, FieldError> {
        self.sides(size)
            .map_err(|message| FieldError::new("input_size", message))
    }

    fn sides(&self, size: usize) -> Result<Vec<usize>, String> {
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
    pub fn check_input_size(&self, size: usize) -> Result<(), FieldError> {
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

/// Refuses a size field of 0 or above [`SIZE_LIMIT`], naming it.
pub(crate) fn check_sizes(sizes: &[(&str, usize)]) -> Result<(), String> {
    for &(field, value) in sizes {
        if value == 0 {
            return Err(format!("{field} must be at least 1, found 0"));
        }
    }
    for &(field, value) in sizes {
        if value > SIZE_LIMIT {
            return Err(format!("{field} is {value}, more than the limit of {SIZE_LIMIT}"));
        }
    }
    Ok(())
}
