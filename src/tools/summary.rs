//! Per-stage output shapes, parameters and multiply-adds, like torchinfo's summary.

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Serialize;

use crate::checkpoint::{expected_tensors, is_buffer};
use crate::error::{Error, Result};
use crate::model::DenseNet;
use crate::spec::VariantSpec;

/// A count with its thousands grouped: 7978856 → "7,978,856".
pub use crate::image_io::grouped;

/// One stage of the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageSummary {
    /// `stem`, `denseblock1`, `transition1`, ..., `norm5`, `classifier`.
    pub name: String,
    /// Output shape for one image: (C, H, W), or (classes) for the classifier.
    pub output_shape: Vec<usize>,
    /// Learned parameters (batch-norm running statistics excluded).
    pub params: u64,
    /// Multiply-adds of convolutions and the classifier for one image.
    pub macs: u64,
}

/// The whole network at one input size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The variant's name.
    pub variant: String,
    /// The square input side in pixels.
    pub input_size: usize,
    /// Total learned parameters.
    pub params: u64,
    /// Total multiply-adds for one image.
    pub macs: u64,
    /// How the transitions pool: `avg` or `max`.
    pub transition_pool: crate::spec::TransitionPool,
    /// Stage by stage, in order.
    pub stages: Vec<StageSummary>,
}

/// Summarises `spec` at a square input of `input_size` pixels, refusing a size too small.
pub fn summarize(spec: &VariantSpec, input_size: usize) -> Result<Summary> {
    let sides = spec
        .architecture
        .stage_sizes(input_size)
        .map_err(|message| Error::Spec {
            origin: spec.name.clone(),
            message: message.to_string(),
        })?;
    let model = DenseNet::new(spec, VarBuilder::zeros(DType::F32, &Device::Cpu))?;
    let tensors = expected_tensors(spec)?;
    let params_under = |prefixes: &[String]| -> u64 {
        tensors
            .iter()
            .filter(|t| !is_buffer(&t.name) && prefixes.iter().any(|p| t.name.starts_with(&format!("{p}."))))
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum()
    };
    let mut stages = vec![StageSummary {
        name: "stem".into(),
        output_shape: vec![spec.architecture.stem_features, sides[0], sides[0]],
        params: params_under(&["features.conv0".into(), "features.norm0".into()]),
        macs: model.stem().macs(input_size),
    }];
    for ((plan, stage), side) in spec
        .architecture
        .stages()
        .iter()
        .zip(model.stages())
        .zip(sides.windows(2))
    {
        let (side_in, side) = (side[0], side[1]);
        if let (Some(t), Some(transition)) = (plan.transition, &stage.transition) {
            let name = format!("transition{}", t.number);
            stages.push(StageSummary {
                output_shape: vec![t.out_channels, side, side],
                params: params_under(&[format!("features.{name}")]),
                macs: transition.macs(side_in),
                name,
            });
        }
        let name = format!("denseblock{}", plan.block);
        stages.push(StageSummary {
            output_shape: vec![plan.out_channels, side, side],
            params: params_under(&[format!("features.{name}")]),
            macs: stage.block.macs(side),
            name,
        });
    }
    let features = spec.architecture.num_features();
    let last_side = *sides.last().expect("at least one stage");
    stages.push(StageSummary {
        name: "norm5".into(),
        output_shape: vec![features, last_side, last_side],
        params: params_under(&["features.norm5".into()]),
        macs: 0,
    });
    stages.push(StageSummary {
        name: "classifier".into(),
        output_shape: vec![spec.architecture.num_classes],
        params: params_under(&["classifier".into()]),
        macs: (features * spec.architecture.num_classes) as u64,
    });
    Ok(Summary {
        variant: spec.name.clone(),
        input_size,
        params: stages.iter().map(|s| s.params).sum(),
        macs: stages.iter().map(|s| s.macs).sum(),
        transition_pool: spec.architecture.transition_pool,
        stages,
    })
}
