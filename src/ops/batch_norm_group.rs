//! Synchronised batch norm: the batch statistics of the whole batch that the processes of a
//! data-parallel run share, as PyTorch's `SyncBatchNorm`, instead of each process's own part.
//!
//! The forward pass combines each process's count, means and sums of squared deviations
//! (Chan, Golub and LeVeque's pairwise update, summed over the processes in two all-reduces:
//! the counts and sums first, then the deviations about the global mean), so that no process
//! subtracts large sums. The backward pass adds Σg and Σg·(x − μ) over the processes before it
//! forms dx; dγ and dβ stay each process's own, since the gradient average across processes
//! adds them afterwards.

use std::fmt::Debug;

use candle_core::Result;

/// The processes whose batch norms share their batch statistics: PyTorch's process group of
/// `SyncBatchNorm`. Every process calls [`BatchNormGroup::all_reduce_sum`] in the same order,
/// once or twice per batch norm in each forward pass and once in each backward pass, from the
/// thread that runs the model.
pub trait BatchNormGroup: Send + Sync + Debug {
    /// Replaces `values` on every process by their element-wise sum over the processes.
    ///
    /// # Errors
    /// When the processes cannot communicate, or when called from a thread the group does not
    /// communicate from.
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()>;
}

/// The count, mean and biased variance of each channel over every process's part of the
/// batch, from this process's `count` values per channel, their `mean`s and their sums of
/// squared deviations from them, `m2`. A process with no values (count 0) takes part with
/// zeros.
pub(super) fn global_moments(
    group: &dyn BatchNormGroup,
    count: f64,
    mean: &[f64],
    m2: &[f64],
) -> Result<(f64, Vec<f64>, Vec<f64>)> {
    let mut sums = Vec::with_capacity(mean.len() + 1);
    sums.push(count);
    sums.extend(mean.iter().map(|m| if count > 0.0 { m * count } else { 0.0 }));
    group.all_reduce_sum(&mut sums)?;
    let total = sums[0];
    let global_mean: Vec<f64> = sums[1..].iter().map(|s| s / total).collect();
    let mut deviations: Vec<f64> = mean
        .iter()
        .zip(m2)
        .zip(&global_mean)
        .map(|((m, m2), g)| {
            if count > 0.0 {
                m2 + count * (m - g).powi(2)
            } else {
                0.0
            }
        })
        .collect();
    group.all_reduce_sum(&mut deviations)?;
    let var = deviations.iter().map(|d| (d / total).max(0.0)).collect();
    Ok((total, global_mean, var))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Stands for the other processes: adds their values, given up front, one list per call.
    #[derive(Debug)]
    struct Others(Mutex<Vec<Vec<f64>>>);

    impl BatchNormGroup for Others {
        fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
            let theirs = self.0.lock().unwrap().remove(0);
            values.iter_mut().zip(theirs).for_each(|(v, t)| *v += t);
            Ok(())
        }
    }

    fn moments(xs: &[f64]) -> (f64, f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let m2 = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
        (n, mean, m2)
    }

    #[test]
    fn two_parts_give_the_whole_batch_moments() {
        // One channel, values far from 0 (where Σx² − (Σx)²/n would cancel), split 3 / 5.
        let all = [
            1e6 + 0.5,
            1e6 - 1.25,
            1e6 + 2.0,
            1e6,
            1e6 + 0.75,
            1e6 - 0.5,
            1e6 + 1.0,
            1e6 - 2.0,
        ];
        let (mine, theirs) = all.split_at(3);
        let (n, mean, m2) = moments(mine);
        let (tn, tmean, tm2) = moments(theirs);
        let (_, want_mean, want_m2) = moments(&all);
        // Their first message: count and count·mean; their second: deviations about the global mean.
        let global = (n * mean + tn * tmean) / (n + tn);
        let others = Others(Mutex::new(vec![
            vec![tn, tn * tmean],
            vec![tm2 + tn * (tmean - global).powi(2)],
        ]));
        let (total, got_mean, got_var) = global_moments(&others, n, &[mean], &[m2]).unwrap();
        assert_eq!(total, 8.0);
        assert!(
            (got_mean[0] - want_mean).abs() < 1e-9,
            "{} vs {want_mean}",
            got_mean[0]
        );
        let want_var = want_m2 / 8.0;
        assert!(
            (got_var[0] - want_var).abs() < 1e-9 * want_var,
            "{} vs {want_var}",
            got_var[0]
        );
    }

    #[test]
    fn a_process_with_no_values_adds_nothing() {
        let xs = [0.25, -1.0, 3.5, 2.0];
        let (n, mean, m2) = moments(&xs);
        let global = mean;
        let others = Others(Mutex::new(vec![
            vec![n, n * mean],
            vec![m2 + n * (mean - global).powi(2)],
        ]));
        let (total, got_mean, got_var) = global_moments(&others, 0.0, &[f64::NAN], &[f64::NAN]).unwrap();
        assert_eq!(total, 4.0);
        assert!((got_mean[0] - mean).abs() < 1e-15);
        assert!((got_var[0] - m2 / 4.0).abs() < 1e-15);
    }
}
