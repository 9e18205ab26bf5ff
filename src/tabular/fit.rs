//! Training a tabular net on a CSV file, and k-fold cross-validation of its log-RMSE: the
//! book's `train` and `k_fold` for house prices (Dive into Deep Learning 5.7), with the folds
//! drawn from a seeded permutation so that every model is scored on the same ones.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::preprocess::{Encoded, Preprocessor, Schema};
use super::spec::MlpSpec;
use super::table::CsvTable;
use super::DenseMlp;
use crate::error::{Error, Result};
use crate::ops::Mode;
use crate::spec::Recipe;
use crate::train::{Optimizer, Schedule};

/// A net trained on a table, with the preprocessing it was trained with.
pub struct FittedModel {
    /// The spec it was built from.
    pub spec: MlpSpec,
    /// The preprocessing fitted on its training rows.
    pub preprocessor: Preprocessor,
    /// Its tensors (what a checkpoint saves).
    pub varmap: VarMap,
    /// The net.
    pub model: DenseMlp,
    /// Mean training loss (squared error of the standardised log target) of each epoch.
    pub epoch_losses: Vec<f64>,
}

impl FittedModel {
    /// Predicted log targets of encoded rows, in evaluation mode (running statistics).
    pub fn predict_log(&self, encoded: &Encoded, device: &Device) -> Result<Vec<f64>> {
        predict_log(&self.model, &self.preprocessor, encoded, device)
    }
}

/// Predicted log targets of `encoded` rows by `model` (N rows → N values), in inference mode.
pub fn predict_log(
    model: &DenseMlp,
    preprocessor: &Preprocessor,
    encoded: &Encoded,
    device: &Device,
) -> Result<Vec<f64>> {
    let x = Tensor::from_slice(&encoded.values, (encoded.rows, preprocessor.width()), device)?;
    let y = model
        .forward(&x, Mode::Inference)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    Ok(y.into_iter().map(|v| preprocessor.log_prediction(v)).collect())
}

/// Root mean squared error between predicted and true log targets: the book's `log_rmse`
/// (Kaggle's House Prices score), without its clamp of predictions to at least 1.
pub fn log_rmse(predicted: &[f64], truth: &[f64]) -> f64 {
    let n = predicted.len().max(1) as f64;
    let sum: f64 = predicted.iter().zip(truth).map(|(p, t)| (p - t).powi(2)).sum();
    (sum / n).sqrt()
}

/// The most parameters a tabular net may have (1 GiB of f32).
const MAX_PARAMETERS: usize = 1 << 28;

/// Mixed into the seed for the order of the batches, so that it is not the folds' permutation.
const BATCH_ORDER_STREAM: u64 = 0x0bad_5eed_0fba_7c4e;

/// How a net is trained: the recipe, and the seed of its weights, batch order (and folds).
#[derive(Debug, Clone, PartialEq)]
pub struct FitOptions {
    /// Optimizer, learning rate and schedule, weight decay, epochs and batch size.
    pub recipe: Recipe,
    /// Seed of the initial weights and of the order of the batches.
    pub seed: u64,
}

/// Trains `spec` on every row of `train` with `options`.
/// The loss is the mean squared error of the standardised log target. A last batch of a
/// single row is skipped (batch norm has no statistics of one row, as PyTorch refuses).
///
/// # Errors
/// The table's errors ([`Schema::fit`], [`Preprocessor::encode`]); [`Error::Training`] for a
/// recipe the spec refuses, batches of one row, more than 2²⁸ parameters, or a loss that stops
/// being finite (the epoch, and what to lower).
pub fn fit(
    spec: &MlpSpec,
    schema: &Schema,
    train: &CsvTable,
    options: &FitOptions,
    device: &Device,
) -> Result<FittedModel> {
    let (recipe, seed) = (&options.recipe, options.seed);
    let with_recipe = MlpSpec {
        recipe: recipe.clone(),
        ..spec.clone()
    };
    with_recipe
        .validate()
        .map_err(|m| Error::Training(format!("{}: {m}", spec.name)))?;
    if recipe.batch_size < 2 {
        return Err(Error::Training(format!(
            "batch size {}: batch norm has no statistics of one row; use 2 or more",
            recipe.batch_size
        )));
    }
    if train.len() < 2 {
        return Err(Error::Csv {
            path: train.path.clone(),
            line: None,
            column: None,
            message: format!("{} row to train on: batch norm needs at least 2", train.len()),
        });
    }
    let preprocessor = schema.fit(train)?;
    let encoded = preprocessor.encode(train)?;
    let targets: Vec<f32> = preprocessor
        .log_targets(train)?
        .into_iter()
        .map(|v| preprocessor.standardise_target(v) as f32)
        .collect();
    let width = preprocessor.width();
    let parameters = DenseMlp::parameter_count(spec, width)?;
    if parameters > MAX_PARAMETERS {
        return Err(Error::Training(format!(
            "{} over {width} inputs has {parameters} parameters, more than the limit of {MAX_PARAMETERS}",
            spec.name
        )));
    }
    let x = Tensor::from_slice(&encoded.values, (encoded.rows, width), device)?;
    let y = Tensor::from_slice(&targets, encoded.rows, device)?;
    let varmap = DenseMlp::seeded_varmap(spec, width, seed, device)?;
    let model = DenseMlp::new(spec, width, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    let mut optimizer = Optimizer::new(
        recipe.optimizer,
        &varmap,
        recipe.momentum,
        recipe.nesterov,
        recipe.weight_decay,
    );
    let schedule = Schedule {
        kind: recipe.schedule,
        base_lr: recipe.lr,
        epochs: recipe.epochs,
        warmup_epochs: 0,
        milestones: recipe.milestones.clone(),
    };
    let rows = encoded.rows;
    let batch = recipe.batch_size.min(rows);
    let steps_per_epoch = rows.div_ceil(batch);
    let mut order: Vec<u32> = (0..rows as u32).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ BATCH_ORDER_STREAM);
    let mut epoch_losses = Vec::new();
    for epoch in 0..recipe.epochs {
        order.shuffle(&mut rng);
        let (mut sum, mut count) = (0.0, 0usize);
        for (step, chunk) in order.chunks(batch).enumerate() {
            if chunk.len() < 2 {
                continue;
            }
            let index = Tensor::from_slice(chunk, chunk.len(), device)?;
            let (xb, yb) = (x.index_select(&index, 0)?, y.index_select(&index, 0)?);
            let loss = (model.forward(&xb, Mode::Train)? - yb)?.sqr()?.mean_all()?;
            let value = f64::from(loss.to_scalar::<f32>()?);
            if !value.is_finite() {
                return Err(Error::Training(format!(
                    "the loss is {value} in epoch {}: lower the learning rate ({})",
                    epoch + 1,
                    recipe.lr
                )));
            }
            let lr = schedule.lr(epoch as f64 + step as f64 / steps_per_epoch as f64);
            optimizer.step(&loss.backward()?, lr)?;
            sum += value * chunk.len() as f64;
            count += chunk.len();
        }
        epoch_losses.push(sum / count.max(1) as f64);
    }
    Ok(FittedModel {
        spec: spec.clone(),
        preprocessor,
        varmap,
        model,
        epoch_losses,
    })
}

/// One fold of a cross-validation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FoldResult {
    /// 1-based.
    pub fold: usize,
    /// Rows trained on.
    pub train_rows: usize,
    /// Rows held out.
    pub valid_rows: usize,
    /// Log-RMSE on the training rows, after training.
    pub train_log_rmse: f64,
    /// Log-RMSE on the held-out rows.
    pub valid_log_rmse: f64,
    /// Held-out values of categorical columns that the training rows did not have (each
    /// encoded as all zeros).
    pub unseen_categories: usize,
}

/// K-fold cross-validation: every fold's result, and the mean and spread of the held-out
/// log-RMSE.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CrossValidation {
    /// Mean of the folds' held-out log-RMSE.
    pub log_rmse_mean: f64,
    /// Their standard deviation (n − 1).
    pub log_rmse_std: f64,
    /// Each fold.
    pub folds: Vec<FoldResult>,
}

/// The rows of each of `k` folds: a permutation of `0..rows` drawn from `seed`, cut into `k`
/// contiguous parts whose sizes differ by at most one (as scikit-learn's `KFold(shuffle=True)`).
pub fn fold_rows(rows: usize, k: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..rows).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    (0..k)
        .map(|i| order[i * rows / k..(i + 1) * rows / k].to_vec())
        .collect()
}

/// K-fold cross-validation of `spec` on `table` ([`fold_rows`] with the options' seed): for
/// each fold, preprocessing fitted and the net trained ([`fit`] with `options`) on the others,
/// and scored on it. `on_fold` sees each fold's result as it is done.
///
/// # Errors
/// [`Error::Csv`] when `k` is not in 2..=rows/2 (each training split needs two rows); the
/// errors of [`fit`].
pub fn cross_validate(
    spec: &MlpSpec,
    schema: &Schema,
    table: &CsvTable,
    k: usize,
    options: &FitOptions,
    device: &Device,
    mut on_fold: impl FnMut(&FoldResult),
) -> Result<CrossValidation> {
    if k < 2 || k > table.len() / 2 {
        return Err(Error::Csv {
            path: table.path.clone(),
            line: None,
            column: None,
            message: format!(
                "{k} folds of {} rows: the folds must be at least 2 and at most half the rows",
                table.len()
            ),
        });
    }
    let folds = fold_rows(table.len(), k, options.seed);
    let mut results = Vec::with_capacity(k);
    for (i, valid_rows) in folds.iter().enumerate() {
        let train_rows: Vec<usize> = folds
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, rows)| rows.iter().copied())
            .collect();
        let (train, valid) = (table.select(&train_rows), table.select(valid_rows));
        let fitted = fit(spec, schema, &train, options, device).map_err(|e| match e {
            Error::Training(m) => Error::Training(format!("fold {} of {k}: {m}", i + 1)),
            e => e,
        })?;
        let score = |part: &CsvTable| -> Result<(f64, usize)> {
            let encoded = fitted.preprocessor.encode(part)?;
            let predicted = fitted.predict_log(&encoded, device)?;
            let unseen = encoded.unseen.iter().map(|u| u.1).sum();
            Ok((
                log_rmse(&predicted, &fitted.preprocessor.log_targets(part)?),
                unseen,
            ))
        };
        let (train_log_rmse, _) = score(&train)?;
        let (valid_log_rmse, unseen_categories) = score(&valid)?;
        let result = FoldResult {
            fold: i + 1,
            train_rows: train.len(),
            valid_rows: valid.len(),
            train_log_rmse,
            valid_log_rmse,
            unseen_categories,
        };
        on_fold(&result);
        results.push(result);
    }
    let scores: Vec<f64> = results.iter().map(|r| r.valid_log_rmse).collect();
    let mean = scores.iter().sum::<f64>() / k as f64;
    let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (k - 1) as f64;
    Ok(CrossValidation {
        log_rmse_mean: mean,
        log_rmse_std: var.sqrt(),
        folds: results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_partition_the_rows_evenly() {
        let folds = fold_rows(11, 3, 7);
        let sizes: Vec<usize> = folds.iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 4, 4]);
        let mut all: Vec<usize> = folds.concat();
        all.sort();
        assert_eq!(all, (0..11).collect::<Vec<_>>());
        assert_eq!(fold_rows(11, 3, 7), folds, "the same seed gives the same folds");
        assert_ne!(fold_rows(11, 3, 8), folds);
    }

    #[test]
    fn log_rmse_is_the_root_mean_square() {
        assert!((log_rmse(&[1.0, 2.0], &[1.0, 4.0]) - 2f64.sqrt()).abs() < 1e-15);
    }
}
