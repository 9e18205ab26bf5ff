//! The training loss.

use candle_core::{Result, Tensor, D};

/// Cross-entropy of `logits` (N, K) against class indices `labels` (N, u32), averaged over the
/// batch, with label smoothing ε as `torch.nn.CrossEntropyLoss(label_smoothing=ε)`: the target
/// puts 1 − ε on the class and ε/K on each of the K classes, so the loss is
/// (1 − ε)·(−log p_y) + ε·(−Σ_k log p_k / K). A scalar tensor; ε = 0 is candle's
/// `cross_entropy`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, label_smoothing: f64) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = candle_nn::loss::nll(&log_p, labels)?;
    if label_smoothing == 0.0 {
        return Ok(nll);
    }
    let uniform = log_p.mean(D::Minus1)?.mean_all()?.neg()?;
    (nll * (1.0 - label_smoothing))? + (uniform * label_smoothing)?
}
