//! Accuracy and loss of a model on a data set split.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::data::{Dataset, Loader, LoaderOptions, Shard, Transform};
use crate::error::Result;
use crate::model::DenseNet;

/// What an evaluation measured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction of samples whose top class is right.
    pub top1: f64,
    /// Fraction whose right class is among the top five (or all classes, if fewer).
    pub top5: f64,
    /// Samples seen.
    pub samples: usize,
    /// Samples whose logits were not all finite (NaN or infinite: a diverged model); they
    /// count as misses, and make the loss NaN.
    pub non_finite: usize,
}

/// Evaluates `model` in inference mode ([`DenseNet::for_inference`]) on every sample of
/// `dataset`, or with several ranks on this rank's [`Shard`] of each batch: loss, top-1 and
/// top-5 accuracy. With `skip_bad_images`, a file that cannot be decoded is left out (and
/// passed to `skipped`), else it ends the evaluation with its error.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &DenseNet,
    dataset: Arc<Dataset>,
    transform: &Transform,
    batch_size: usize,
    device: &Device,
    skip_bad_images: bool,
    skipped: &mut dyn FnMut(&Path, &str),
    shard: Shard,
) -> Result<Evaluation> {
    let model = model.for_inference();
    let order: Vec<usize> = (0..dataset.len()).collect();
    let (mut loss_sum, mut top1, mut top5, mut seen, mut non_finite) = (0f64, 0usize, 0usize, 0usize, 0usize);
    let size = transform.size;
    let options = LoaderOptions {
        skip_bad_images,
        shard,
        ..LoaderOptions::default()
    };
    for batch in Loader::start(dataset, order, batch_size, transform.clone(), options) {
        let batch = batch?;
        for (path, message) in &batch.skipped {
            skipped(path, message);
        }
        let n = batch.labels.len();
        if n == 0 {
            continue;
        }
        let x = Tensor::from_vec(batch.images, (n, transform.channels, size, size), device)?;
        let y = Tensor::from_vec(batch.labels.clone(), n, device)?;
        let logits = model.forward_t(&x, false)?;
        loss_sum += candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64 * n as f64;
        let (c1, c5) = top_k_hits(&logits, &batch.labels)?;
        top1 += c1;
        top5 += c5;
        seen += n;
        non_finite += non_finite_rows(&logits)?;
    }
    let n = seen.max(1) as f64;
    Ok(Evaluation {
        loss: loss_sum / n,
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
        samples: seen,
        non_finite,
    })
}

/// How many rows of `logits` hold a NaN or an infinity.
pub fn non_finite_rows(logits: &Tensor) -> Result<usize> {
    let rows = logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .iter()
        .filter(|row| row.iter().any(|v| !v.is_finite()))
        .count())
}

/// Counts samples whose label is the top class, and among the top five; a row with a NaN or
/// an infinity ranks nothing, and is a miss.
pub fn top_k_hits(logits: &Tensor, labels: &[u32]) -> Result<(usize, usize)> {
    let rows = logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    let (mut top1, mut top5) = (0, 0);
    for (row, &label) in rows.iter().zip(labels) {
        if row.iter().any(|v| !v.is_finite()) {
            continue;
        }
        let target = row[label as usize];
        // Rank = how many classes score strictly higher than the label's.
        let rank = row.iter().filter(|&&v| v > target).count();
        top1 += usize::from(rank == 0);
        top5 += usize::from(rank < 5);
    }
    Ok((top1, top5))
}
