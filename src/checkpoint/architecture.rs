//! The architecture a state dict describes, read off its tensor shapes: everything a spec says
//! about the network (input channels, classes, stem, growth rate, block configuration,
//! bottleneck width, compression, conv biases) is there in torchvision's names.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::error::FieldError;
use crate::spec::{Architecture, LayerKind, StemKind, VariantSpec};

/// The spec whose tensors these are (canonical names), with the preprocessing, input size and
/// recipe of the nearest built-in variant. `Err` says which tensor describes no DenseNet, and
/// what was expected and found. Dropout is not in the tensors: the spec has none.
///
/// # Errors
/// A [`FieldError`] of the field `tensors`.
pub fn spec_from_tensors(tensors: &HashMap<String, Tensor>) -> Result<VariantSpec, FieldError> {
    derive_spec(tensors).map_err(|message| FieldError::new("tensors", message))
}

fn derive_spec(tensors: &HashMap<String, Tensor>) -> Result<VariantSpec, String> {
    let dims = |name: &str, rank: usize| -> Result<Vec<usize>, String> {
        let t = tensors.get(name).ok_or_else(|| format!("no tensor {name}"))?;
        if t.rank() == rank {
            Ok(t.dims().to_vec())
        } else {
            Err(format!(
                "tensor {name}: expected {rank} dimensions, found shape {:?}",
                t.dims()
            ))
        }
    };
    let conv0 = dims("features.conv0.weight", 4)?;
    let (stem_features, in_channels, kernel) = (conv0[0], conv0[1], conv0[2]);
    let stem = if tensors.contains_key("features.norm0.weight") {
        StemKind::Imagenet
    } else {
        StemKind::Cifar
    };
    let expected_kernel = if stem == StemKind::Imagenet { 7 } else { 3 };
    if kernel != expected_kernel || conv0[3] != kernel {
        return Err(format!(
            "tensor features.conv0.weight: a {} stem has a {expected_kernel}×{expected_kernel} \
             conv, found shape {conv0:?}",
            if stem == StemKind::Imagenet {
                "7×7/2 (ImageNet)"
            } else {
                "3×3 (CIFAR)"
            }
        ));
    }

    let mut block_config = Vec::new();
    while tensors
        .keys()
        .any(|k| k.starts_with(&format!("features.denseblock{}.", block_config.len() + 1)))
    {
        let block = block_config.len() + 1;
        let layers = (1..)
            .take_while(|l| {
                tensors.contains_key(&format!("features.denseblock{block}.denselayer{l}.conv1.weight"))
            })
            .count();
        if layers == 0 {
            return Err(format!(
                "no tensor features.denseblock{block}.denselayer1.conv1.weight"
            ));
        }
        block_config.push(layers);
    }
    if block_config.is_empty() {
        return Err("no dense block: no tensor features.denseblock1.denselayer1.conv1.weight".into());
    }

    let first = "features.denseblock1.denselayer1";
    let conv1 = dims(&format!("{first}.conv1.weight"), 4)?;
    let (growth_rate, layer) = if tensors.contains_key(&format!("{first}.conv2.weight")) {
        let growth = dims(&format!("{first}.conv2.weight"), 4)?[0];
        if growth == 0 || conv1[0] % growth != 0 {
            return Err(format!(
                "tensor {first}.conv1.weight: a bottleneck's width is a multiple of the growth \
                 rate ({growth}, from conv2), found {} outputs",
                conv1[0]
            ));
        }
        (
            growth,
            LayerKind::Bottleneck {
                bn_size: conv1[0] / growth,
            },
        )
    } else {
        (conv1[0], LayerKind::Plain)
    };

    let transitions: Vec<(usize, usize)> = (1..block_config.len())
        .map(|t| dims(&format!("features.transition{t}.conv.weight"), 4).map(|d| (d[1], d[0])))
        .collect::<Result<_, _>>()?;
    let compression = compression_of(&transitions).ok_or_else(|| {
        format!(
            "the transitions' (in, out) channels {transitions:?} follow no single compression \
             θ with out = floor(θ·in)"
        )
    })?;
    let num_classes = dims("classifier.weight", 2)?[0];

    let architecture = Architecture {
        in_channels,
        num_classes,
        stem,
        stem_features,
        growth_rate,
        block_config,
        layer,
        compression,
        conv_bias: tensors.contains_key("features.conv0.bias"),
        drop_rate: 0.0,
        // Pooling has no tensor: torchvision's average.
        transition_pool: Default::default(),
    };
    let nearest = preprocessing_source(&architecture);
    let mut pretrained_cfg = nearest.pretrained_cfg.clone();
    let size = nearest.input_size().max(architecture.min_input_size());
    let p = &mut pretrained_cfg.preprocess;
    p.resize = p.resize.max(size);
    p.crop = size;
    pretrained_cfg.labels = None;
    pretrained_cfg.hf_hub_id = None;
    pretrained_cfg.reference = None;
    let mut spec = VariantSpec {
        name: "from-tensors".into(),
        aliases: Vec::new(),
        description: format!(
            "read from a checkpoint's tensor shapes; input size, preprocessing and recipe as {}'s",
            nearest.name
        ),
        architecture,
        pretrained_cfg,
        recipe: nearest.recipe.clone(),
    };
    fit_preprocess_channels(&mut spec);
    spec.validate().map_err(|e| e.message)?;
    Ok(spec)
}

/// θ such that `out = floor(θ·in)` for every transition: 0.5 (every published DenseNet-BC and
/// the book's net) or 1 when they fit, else the first transition's ratio; `None` when no θ
/// fits them all. 0.5 when there is no transition.
fn compression_of(transitions: &[(usize, usize)]) -> Option<f64> {
    let fits = |theta: f64| {
        theta > 0.0
            && theta <= 1.0
            && transitions
                .iter()
                .all(|&(i, o)| (i as f64 * theta).floor() as usize == o)
    };
    let first = transitions.first().map(|&(i, o)| (o as f64 + 0.5) / i as f64);
    [Some(0.5), Some(1.0), first]
        .into_iter()
        .flatten()
        .find(|&t| fits(t))
}

/// The built-in variant nearest to the architecture `spec`: the fewest architecture fields that differ, plus
/// the number of dense blocks whose depth differs; the first in the table on a tie.
pub fn nearest_builtin(spec: &Architecture) -> VariantSpec {
    nearest_of(spec, VariantSpec::builtin())
}

/// The built-in variant whose input size, preprocessing and recipe a spec read from tensors
/// takes: the nearest one with the same stem (an ImageNet-stem net is fed as ImageNet nets are,
/// a CIFAR-stem net as CIFAR nets are).
pub fn preprocessing_source(spec: &Architecture) -> VariantSpec {
    let same_stem: Vec<VariantSpec> = VariantSpec::builtin()
        .into_iter()
        .filter(|b| b.architecture.stem == spec.stem)
        .collect();
    nearest_of(spec, same_stem)
}

fn nearest_of(spec: &Architecture, candidates: Vec<VariantSpec>) -> VariantSpec {
    let distance = |other: &VariantSpec| {
        let blocks = spec.block_config.len().max(other.architecture.block_config.len());
        let differing_blocks = (0..blocks)
            .filter(|&b| spec.block_config.get(b) != other.architecture.block_config.get(b))
            .count();
        architecture_differences(spec, other).len() + differing_blocks
    };
    candidates
        .into_iter()
        .min_by_key(distance)
        .expect("there are built-in variants of each stem")
}

/// The architecture fields in which `spec` differs from the variant `other`, each as
/// `field value (other has value)`; the number of classes is not architecture.
pub fn architecture_differences(spec: &Architecture, other: &VariantSpec) -> Vec<String> {
    let fields = |s: &Architecture| {
        [
            ("in_channels", s.in_channels.to_string()),
            ("stem", format!("{:?}", s.stem).to_lowercase()),
            ("stem_features", s.stem_features.to_string()),
            ("growth_rate", s.growth_rate.to_string()),
            ("block_config", format!("{:?}", s.block_config)),
            ("layer", layer_name(s.layer)),
            ("compression", s.compression.to_string()),
            ("conv_bias", s.conv_bias.to_string()),
        ]
    };
    fields(spec)
        .into_iter()
        .zip(fields(&other.architecture))
        .filter(|((_, ours), (_, theirs))| ours != theirs)
        .map(|((field, ours), (_, theirs))| format!("{field} {ours} ({} has {theirs})", other.name))
        .collect()
}

fn layer_name(layer: LayerKind) -> String {
    match layer {
        LayerKind::Bottleneck { bn_size } => format!("bottleneck (bn_size {bn_size})"),
        LayerKind::Plain => "plain".into(),
    }
}

/// Gives the preprocessing one mean and std per input channel: kept when they already fit,
/// else the average of the given values for every channel (as timm does for grayscale input).
pub fn fit_preprocess_channels(spec: &mut VariantSpec) {
    let fit = |values: &mut Vec<f32>, channels: usize| {
        if values.len() != channels && !values.is_empty() {
            let mean = values.iter().sum::<f32>() / values.len() as f32;
            *values = vec![mean; channels];
        }
    };
    fit(
        &mut spec.pretrained_cfg.preprocess.mean,
        spec.architecture.in_channels,
    );
    fit(
        &mut spec.pretrained_cfg.preprocess.std,
        spec.architecture.in_channels,
    );
}
