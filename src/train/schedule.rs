//! Learning-rate schedules, evaluated per iteration.

/// The shape of the learning rate over the run.
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Held constant, as the book trains.
    Constant,
    /// Divided by 10 at each milestone: the paper's, at 50 % and 75 % of the epochs (CIFAR).
    Step,
    /// Cosine decay to 0 over the run.
    Cosine,
}

/// A schedule with optional linear warmup from 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Which shape.
    pub kind: ScheduleKind,
    /// Peak learning rate.
    pub base_lr: f64,
    /// Length of the run in epochs.
    pub epochs: usize,
    /// Epochs of linear warmup at the start.
    pub warmup_epochs: usize,
    /// Fractions of the run where the step schedule divides the rate by 10.
    pub milestones: Vec<f64>,
}

impl Schedule {
    /// The learning rate at `progress` epochs into the run (fractional within an epoch).
    pub fn lr(&self, progress: f64) -> f64 {
        let epochs = self.epochs.max(1) as f64;
        if progress < self.warmup_epochs as f64 {
            return self.base_lr * (progress / self.warmup_epochs as f64).max(1e-3);
        }
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Step => {
                let epoch = progress.floor();
                let drops = self
                    .milestones
                    .iter()
                    .filter(|&&f| epoch >= (f * epochs).round())
                    .count();
                self.base_lr * 0.1f64.powi(drops as i32)
            }
            ScheduleKind::Cosine => {
                let warm = self.warmup_epochs as f64;
                let t = ((progress - warm) / (epochs - warm).max(1.0)).clamp(0.0, 1.0);
                0.5 * self.base_lr * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_papers_step_schedule_divides_by_ten_at_half_and_three_quarters() {
        let s = Schedule {
            kind: ScheduleKind::Step,
            base_lr: 0.1,
            epochs: 300,
            warmup_epochs: 0,
            milestones: vec![0.5, 0.75],
        };
        assert_eq!(s.lr(0.0), 0.1);
        assert_eq!(s.lr(149.9), 0.1);
        assert!((s.lr(150.0) - 0.01).abs() < 1e-12);
        assert!((s.lr(225.0) - 0.001).abs() < 1e-12);
        let imagenet = Schedule {
            epochs: 90,
            milestones: vec![0.3333, 0.6667],
            ..s
        };
        assert_eq!(imagenet.lr(29.0), 0.1);
        assert!((imagenet.lr(30.0) - 0.01).abs() < 1e-12);
        assert!((imagenet.lr(60.0) - 0.001).abs() < 1e-12);
    }

    #[test]
    fn warmup_then_cosine() {
        let s = Schedule {
            kind: ScheduleKind::Cosine,
            base_lr: 1.0,
            epochs: 12,
            warmup_epochs: 2,
            milestones: vec![],
        };
        assert!((s.lr(1.0) - 0.5).abs() < 1e-12);
        assert!((s.lr(2.0) - 1.0).abs() < 1e-12);
        assert!((s.lr(7.0) - 0.5).abs() < 1e-12);
        assert!(s.lr(12.0).abs() < 1e-12);
    }
}
