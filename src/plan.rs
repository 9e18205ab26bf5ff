//! The plan of a DenseNet: its stages in order, each a dense block with the transition before
//! it (none before the first), their channels and reductions, computed once from a spec. The
//! model, `feature_info`, the summary and the command line's level names all walk this plan
//! instead of redoing "the stem, then each block with a transition before every block but the
//! first" by hand.

use crate::spec::{Architecture, StemKind};

/// A transition: BN-ReLU-1×1 conv from `in_channels` to `out_channels = floor(θ·in_channels)`,
/// then a 2×2/2 average pool (Huang et al. 2017, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitionPlan {
    /// Its number in torchvision's names: `features.transition{number}`.
    pub number: usize,
    /// Channels in.
    pub in_channels: usize,
    /// Channels out.
    pub out_channels: usize,
}

/// One stage: the transition before a dense block, then the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagePlan {
    /// The block's number in torchvision's names: `features.denseblock{block}`, from 1.
    pub block: usize,
    /// The transition before the block; `None` for the first.
    pub transition: Option<TransitionPlan>,
    /// Dense layers in the block.
    pub layers: usize,
    /// Channels into the block (after the transition).
    pub in_channels: usize,
    /// Channels out of the block: `in_channels + layers · growth_rate`.
    pub out_channels: usize,
    /// Input pixels per pixel of the block's output, per side (4, 8, 16, 32 for DenseNet-121).
    pub reduction: usize,
}

impl StagePlan {
    /// The stage's level name in `features_only` and on the command line: `block{block}`.
    pub fn level_name(&self) -> String {
        format!("block{}", self.block)
    }
}

impl Architecture {
    /// Input pixels per pixel of the stem's output, after its pool: 4 for the ImageNet stem,
    /// 1 for the CIFAR stem.
    pub fn stem_reduction(&self) -> usize {
        match self.stem {
            StemKind::Imagenet => 4,
            StemKind::Cifar => 1,
        }
    }

    /// The stages in order, from the fields alone: a transition that would keep no channel
    /// shows as `out_channels == 0`, which [`Architecture::validate`] refuses.
    pub fn stages(&self) -> Vec<StagePlan> {
        let mut stages: Vec<StagePlan> = Vec::with_capacity(self.block_config.len());
        let mut channels = self.stem_features;
        let mut reduction = self.stem_reduction();
        for (i, &layers) in self.block_config.iter().enumerate() {
            let transition = (i > 0).then(|| TransitionPlan {
                number: i,
                in_channels: channels,
                out_channels: self.transition_channels(channels),
            });
            if let Some(t) = transition {
                channels = t.out_channels;
                reduction *= 2;
            }
            let in_channels = channels;
            channels += layers * self.growth_rate;
            stages.push(StagePlan {
                block: i + 1,
                transition,
                layers,
                in_channels,
                out_channels: channels,
                reduction,
            });
        }
        stages
    }
}

#[cfg(test)]
mod tests {
    use crate::VariantSpec;

    #[test]
    fn densenet_121s_plan_is_the_papers_table_1() {
        let spec = VariantSpec::resolve("121").unwrap();
        let stages = spec.architecture.stages();
        let channels: Vec<(usize, usize)> = stages.iter().map(|s| (s.in_channels, s.out_channels)).collect();
        assert_eq!(channels, [(64, 256), (128, 512), (256, 1024), (512, 1024)]);
        let transitions: Vec<Option<(usize, usize)>> = stages
            .iter()
            .map(|s| s.transition.map(|t| (t.in_channels, t.out_channels)))
            .collect();
        assert_eq!(
            transitions,
            [None, Some((256, 128)), Some((512, 256)), Some((1024, 512))]
        );
        let reductions: Vec<usize> = stages.iter().map(|s| s.reduction).collect();
        assert_eq!(reductions, [4, 8, 16, 32]);
        assert_eq!(stages[3].layers, 16);
        let bc = VariantSpec::resolve("bc-100-12").unwrap().architecture.stages();
        assert_eq!(bc.iter().map(|s| s.reduction).collect::<Vec<_>>(), [1, 2, 4]);
    }
}
