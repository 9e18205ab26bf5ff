//! Learning-rate schedules, evaluated per iteration.

pub use crate::spec::ScheduleKind;

/// A schedule with optional linear warmup from 0.
///
/// Step and cosine change the rate once per epoch, as torchvision's reference recipe steps its
/// scheduler; the warmup rises per batch. The first epoch after the warmup always trains at
/// `base_lr`: a step milestone that would fall on it, or on the same epoch as another, is
/// moved to the next free epoch, or left out when the run has none ([`Schedule::milestone_epochs`],
/// [`Schedule::notes`]).
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

/// Where one step milestone lands in a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Milestone {
    /// The fraction of the run it was given as.
    pub fraction: f64,
    /// The epoch (from 0) it falls on by rounding, as the paper places 50 % and 75 % of 300.
    pub asked: usize,
    /// The epoch (from 0) from which the rate is divided by it; `None` when it falls at or
    /// after the end of the run.
    pub placed: Option<usize>,
}

impl Schedule {
    /// The learning rate at `progress` epochs into the run (fractional within an epoch).
    pub fn lr(&self, progress: f64) -> f64 {
        let epochs = self.epochs.max(1) as f64;
        if progress < self.warmup_epochs as f64 {
            return self.base_lr * (progress / self.warmup_epochs as f64).max(1e-3);
        }
        let epoch = progress.floor();
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Step => {
                let drops = self
                    .milestone_epochs()
                    .iter()
                    .filter(|m| m.placed.is_some_and(|e| epoch >= e as f64))
                    .count();
                self.base_lr * 0.1f64.powi(drops as i32)
            }
            ScheduleKind::Cosine => {
                let warm = self.warmup_epochs as f64;
                let t = ((epoch - warm) / (epochs - warm).max(1.0)).clamp(0.0, 1.0);
                0.5 * self.base_lr * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    /// The step schedule's milestones in the order of their fractions, each on the epoch
    /// `fraction × epochs` rounds to, except that none falls on the first epoch after the
    /// warmup or on an epoch another already took: such a one moves to the next epoch, and
    /// is left out (`placed: None`) when that is past the end.
    pub fn milestone_epochs(&self) -> Vec<Milestone> {
        let mut fractions = self.milestones.clone();
        fractions.sort_by(f64::total_cmp);
        let mut next_free = self.warmup_epochs + 1;
        fractions
            .into_iter()
            .map(|fraction| {
                let asked = (fraction * self.epochs as f64).round() as usize;
                let epoch = asked.max(next_free);
                let placed = (epoch < self.epochs).then_some(epoch);
                if placed.is_some() {
                    next_free = epoch + 1;
                }
                Milestone {
                    fraction,
                    asked,
                    placed,
                }
            })
            .collect()
    }

    /// What the schedule does differently from what its settings say on their face, one
    /// sentence each, for the user to see: step milestones moved or left out by
    /// [`Schedule::milestone_epochs`] (a short run: fine-tuning for one or two epochs), and a
    /// step schedule with no milestone in the run. Epochs are counted from 1, as the progress
    /// shows them.
    pub fn notes(&self) -> Vec<String> {
        if self.kind != ScheduleKind::Step || self.milestones.is_empty() {
            return Vec::new();
        }
        let milestones = self.milestone_epochs();
        let run = format!(
            "a run of {} epoch{}{}",
            self.epochs,
            if self.epochs == 1 { "" } else { "s" },
            match self.warmup_epochs {
                0 => String::new(),
                w => format!(" with {w} of warmup"),
            }
        );
        let percent = |m: &Milestone| format!("{:.0} %", m.fraction * 100.0);
        let mut changes = Vec::new();
        for m in &milestones {
            match m.placed {
                Some(e) if e == m.asked => {}
                Some(e) => changes.push(format!(
                    "the milestone at {} moves from epoch {} to {}",
                    percent(m),
                    m.asked + 1,
                    e + 1
                )),
                None if m.asked < self.epochs => changes.push(format!(
                    "the milestone at {} (epoch {}) is left out: no later epoch is free",
                    percent(m),
                    m.asked + 1
                )),
                None => {}
            }
        }
        let placed: Vec<String> = milestones
            .iter()
            .filter_map(|m| m.placed.map(|e| (e + 1).to_string()))
            .collect();
        if placed.is_empty() {
            let all: Vec<String> = milestones.iter().map(percent).collect();
            return vec![format!(
                "the step schedule's milestones ({}) fall outside {run}: it trains at lr {} throughout",
                all.join(", "),
                self.base_lr
            )];
        }
        if changes.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "step schedule over {run}: {}; the rate is divided by 10 from epoch{} {} (the first \
             epoch{} trains at the full rate, and the rate drops at most once an epoch)",
            changes.join("; "),
            if placed.len() == 1 { "" } else { "s" },
            placed.join(", "),
            if self.warmup_epochs > 0 {
                " after the warmup"
            } else {
                ""
            },
        )]
    }
}

/// For the tests of every recipe: under every schedule, over 1 to 5 epochs with each warmup
/// that leaves an epoch, the first epoch after the warmup trains at the full rate from its
/// first batch to its last, and the step schedule divides it at most once per epoch, never
/// past the run.
#[cfg(test)]
pub(crate) fn assert_short_runs_start_at_the_full_rate(name: &str, recipe: &crate::spec::Recipe) {
    for kind in [ScheduleKind::Constant, ScheduleKind::Step, ScheduleKind::Cosine] {
        for epochs in 1..=5 {
            for warmup_epochs in 0..epochs {
                let s = Schedule {
                    kind,
                    base_lr: recipe.lr,
                    epochs,
                    warmup_epochs,
                    milestones: recipe.milestones.clone(),
                };
                let w = warmup_epochs as f64;
                for within in [0.0, 0.25, 0.5, 0.999] {
                    assert_eq!(
                        s.lr(w + within),
                        recipe.lr,
                        "{name}, {kind:?}, {epochs} epochs, {warmup_epochs} warmup, at {within}"
                    );
                }
                let placed: Vec<usize> = s.milestone_epochs().iter().filter_map(|m| m.placed).collect();
                assert!(placed.windows(2).all(|p| p[0] < p[1]), "{name}: {placed:?}");
                assert!(
                    placed.iter().all(|&e| e > warmup_epochs && e < epochs),
                    "{name}: {placed:?}"
                );
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

    /// Every built-in image recipe under every schedule, over 1 to 5 epochs with each warmup
    /// that leaves an epoch (the tabular recipes: `tabular::spec`'s tests).
    #[test]
    fn short_runs_train_their_first_epoch_after_warmup_at_the_full_rate() {
        for spec in crate::spec::VariantSpec::builtin() {
            assert_short_runs_start_at_the_full_rate(&spec.name, &spec.recipe);
        }
    }

    #[test]
    fn imagenets_milestones_on_one_and_two_epochs_are_moved_or_left_out_and_said() {
        let s = |epochs| Schedule {
            kind: ScheduleKind::Step,
            base_lr: 0.01,
            epochs,
            warmup_epochs: 0,
            milestones: vec![0.3333, 0.6667],
        };
        // One epoch: 1/3 rounds onto epoch 0, 2/3 onto the end.
        assert_eq!(s(1).lr(0.0), 0.01);
        assert_eq!(s(1).lr(0.99), 0.01);
        let note = s(1).notes().join(" ");
        assert!(
            note.contains("fall outside a run of 1 epoch") && note.contains("lr 0.01 throughout"),
            "{note}"
        );
        // Two epochs: both round onto epoch 1; the second has no later epoch.
        assert_eq!(s(2).lr(0.5), 0.01);
        assert!((s(2).lr(1.5) - 0.001).abs() < 1e-15);
        let note = s(2).notes().join(" ");
        assert!(
            note.contains("the milestone at 67 % (epoch 2) is left out")
                && note.contains("divided by 10 from epoch 2"),
            "{note}"
        );
        // Three: epochs 2 and 3, as asked; nothing to say.
        assert_eq!(s(3).notes(), Vec::<String>::new());
        assert!((s(3).lr(2.0) - 0.0001).abs() < 1e-15);
        // With two epochs of warmup in five, 1/3 (the third epoch, index 2: the first after the
        // warmup) moves to the fourth, and 2/3 to the fifth.
        let warm = Schedule {
            warmup_epochs: 2,
            ..s(5)
        };
        assert_eq!(warm.lr(2.5), 0.01);
        assert!((warm.lr(3.0) - 0.001).abs() < 1e-15);
        assert!((warm.lr(4.0) - 0.0001).abs() < 1e-15);
        let note = warm.notes().join(" ");
        assert!(
            note.contains("the milestone at 33 % moves from epoch 3 to 4"),
            "{note}"
        );
        // The paper's 90 epochs are untouched.
        assert_eq!(s(90).notes(), Vec::<String>::new());
    }

    #[test]
    fn cosine_steps_once_per_epoch_as_torchvisions_reference() {
        let s = Schedule {
            kind: ScheduleKind::Cosine,
            base_lr: 1.0,
            epochs: 4,
            warmup_epochs: 0,
            milestones: vec![],
        };
        // torch.optim.lr_scheduler.CosineAnnealingLR(T_max=4), stepped after each epoch.
        let want = [1.0, 0.853_553_390_593_273_8, 0.5, 0.146_446_609_406_726_24];
        for (epoch, want) in want.iter().enumerate() {
            assert!((s.lr(epoch as f64 + 0.7) - want).abs() < 1e-12, "epoch {epoch}");
        }
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
