//! The training recipe a variant defaults to.

use serde::{Deserialize, Serialize};

use crate::error::FieldError;

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
    pub schedule: super::ScheduleKind,
    /// Fractions of the run at which the step schedule divides the rate by 10.
    pub milestones: Vec<f64>,
    /// Update rule.
    pub optimizer: super::OptimizerKind,
    /// The augmentation of training samples (`true` and `false` in older files read as
    /// `crop-flip` and `none`).
    pub augment: super::Augment,
    /// ε of label smoothing, as `torch.nn.CrossEntropyLoss(label_smoothing=ε)`: the target is
    /// 1 − ε on the class and ε/K spread over all K classes. Written only when not 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// Where the recipe comes from.
    #[serde(default)]
    pub source: String,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl Recipe {
    /// Checks that the recipe can run: at least one epoch of batches of at least one image, a
    /// positive finite learning rate, momentum in [0, 1), a finite non-negative weight decay,
    /// milestones within the run. The message names the field and the value found.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.problems().map_err(FieldError::said)
    }

    fn problems(&self) -> Result<(), String> {
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
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return Err(format!(
                "label_smoothing must be in [0, 1], found {}",
                self.label_smoothing
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
            schedule: super::ScheduleKind::Step,
            milestones: vec![0.5, 0.75],
            optimizer: super::OptimizerKind::Sgd,
            augment: super::Augment::CropFlip,
            label_smoothing: 0.0,
            source: "Huang et al. 2017, 3.4".into(),
        }
    }
}
