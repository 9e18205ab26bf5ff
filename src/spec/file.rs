//! A variant spec as its JSON files (and checkpoints' metadata) write it: one flat object, the
//! same since the first release, read strictly.

use serde::{Deserialize, Serialize};

use super::{
    Architecture, LayerKind, Preprocess, PretrainedCfg, Recipe, Reference, StemKind, TransitionPool,
    VariantSpec,
};

/// The JSON form of a [`VariantSpec`]: every field at the top level, unknown ones refused.
/// `input_size` repeats `preprocess.crop`: written for older readers; on reading it may be
/// left out, and when present must agree.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SpecFile {
    name: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    description: String,
    in_channels: usize,
    num_classes: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    labels: Option<String>,
    stem: StemKind,
    stem_features: usize,
    growth_rate: usize,
    block_config: Vec<usize>,
    layer: LayerKind,
    compression: f64,
    #[serde(default)]
    conv_bias: bool,
    #[serde(default)]
    drop_rate: f64,
    /// Written only when not the default, so that files of average-pooling nets stay readable
    /// by releases before the field, and those of max-pooling nets are refused by them.
    #[serde(default, skip_serializing_if = "TransitionPool::is_avg")]
    transition_pool: TransitionPool,
    #[serde(default)]
    input_size: Option<usize>,
    preprocess: Preprocess,
    #[serde(default)]
    recipe: Recipe,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference: Option<Reference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pretrained: Option<String>,
}

impl TryFrom<SpecFile> for VariantSpec {
    type Error = String;

    fn try_from(f: SpecFile) -> Result<Self, String> {
        let spec = VariantSpec {
            name: f.name,
            aliases: f.aliases,
            description: f.description,
            architecture: Architecture {
                in_channels: f.in_channels,
                num_classes: f.num_classes,
                stem: f.stem,
                stem_features: f.stem_features,
                growth_rate: f.growth_rate,
                block_config: f.block_config,
                layer: f.layer,
                compression: f.compression,
                conv_bias: f.conv_bias,
                drop_rate: f.drop_rate,
                transition_pool: f.transition_pool,
            },
            pretrained_cfg: PretrainedCfg {
                preprocess: f.preprocess,
                labels: f.labels,
                hf_hub_id: f.pretrained,
                reference: f.reference,
            },
            recipe: f.recipe,
        };
        if let Some(size) = f.input_size {
            let crop = spec.input_size();
            if size != crop {
                // A size the net cannot take is the first thing to say.
                spec.architecture.check_input_size(size).map_err(|e| e.message)?;
                return Err(format!(
                    "input_size {size} disagrees with preprocess.crop {crop}: the crop is the \
                     input size (leave input_size out, or make them equal)"
                ));
            }
        }
        Ok(spec)
    }
}

impl From<VariantSpec> for SpecFile {
    fn from(s: VariantSpec) -> Self {
        let (a, p) = (s.architecture, s.pretrained_cfg);
        SpecFile {
            name: s.name,
            aliases: s.aliases,
            description: s.description,
            in_channels: a.in_channels,
            num_classes: a.num_classes,
            labels: p.labels,
            stem: a.stem,
            stem_features: a.stem_features,
            growth_rate: a.growth_rate,
            block_config: a.block_config,
            layer: a.layer,
            compression: a.compression,
            conv_bias: a.conv_bias,
            drop_rate: a.drop_rate,
            transition_pool: a.transition_pool,
            input_size: Some(p.preprocess.crop),
            preprocess: p.preprocess,
            recipe: s.recipe,
            reference: p.reference,
            pretrained: p.hf_hub_id,
        }
    }
}
