//! Logits into class probabilities and top-k lists with class names.

use candle_core::Tensor;
use candle_nn::ops::softmax;

use crate::error::Result;

/// One entry of a top-k list.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// Class index.
    pub index: usize,
    /// Class name.
    pub label: String,
    /// Softmax probability.
    pub prob: f32,
}

/// The `k` most probable classes of each row of `logits` (N, classes), most probable first.
pub fn top_k(logits: &Tensor, classes: &[String], k: usize) -> Result<Vec<Vec<Prediction>>> {
    Ok(top_k_of(&probabilities(logits)?, classes, k))
}

/// The softmax of each row of `logits` (N, classes), as rows of f32.
pub fn probabilities(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(softmax(&logits.to_dtype(candle_core::DType::F32)?, 1)?.to_vec2::<f32>()?)
}

/// [`top_k`] of probabilities already computed ([`probabilities`]).
pub fn top_k_of(probs: &[Vec<f32>], classes: &[String], k: usize) -> Vec<Vec<Prediction>> {
    probs
        .iter()
        .map(|row| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            order
                .into_iter()
                .take(k)
                .map(|i| Prediction {
                    index: i,
                    label: classes.get(i).cloned().unwrap_or_else(|| format!("class{i}")),
                    prob: row[i],
                })
                .collect()
        })
        .collect()
}
