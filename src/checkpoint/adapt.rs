//! Fitting pretrained tensors to a model that differs in its ends: another number of classes
//! (fine-tuning) or another number of input channels.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::error::Result;
use crate::spec::VariantSpec;

/// Adapts `conv0` to `spec.in_channels` the way timm does, and, when `new_classifier` is set,
/// drops a classifier of another size so that it is initialised fresh. Returns one notice per
/// change, for the user.
pub fn adapt(
    tensors: &mut HashMap<String, Tensor>,
    spec: &VariantSpec,
    new_classifier: bool,
) -> Result<Vec<String>> {
    let mut notices = Vec::new();
    let conv0 = "features.conv0.weight";
    if let Some(w) = tensors.get(conv0) {
        let found = w.dim(1)?;
        if w.rank() == 4 && found != spec.architecture.in_channels && found == 3 {
            tensors.insert(conv0.into(), adapt_input_conv(w, spec.architecture.in_channels)?);
            notices.push(format!(
                "{conv0}: adapted from 3 to {} input channels as timm does ({})",
                spec.architecture.in_channels,
                if spec.architecture.in_channels == 1 {
                    "summed over RGB"
                } else {
                    "RGB repeated and rescaled"
                }
            ));
        }
    }
    if new_classifier {
        if let Some(w) = tensors.get("classifier.weight") {
            let found = w.dim(0)?;
            if found != spec.architecture.num_classes {
                tensors.remove("classifier.weight");
                tensors.remove("classifier.bias");
                notices.push(format!(
                    "classifier: the checkpoint has {found} classes and the model {}: \
                     classifier.weight and classifier.bias are skipped and initialised fresh",
                    spec.architecture.num_classes
                ));
            }
        }
    }
    Ok(notices)
}

/// timm's rule for an RGB stem conv (O, 3, k, k) → (O, C, k, k): for one channel, the sum over
/// RGB; for C channels, RGB repeated to C channels and scaled by 3/C.
pub fn adapt_input_conv(weight: &Tensor, in_channels: usize) -> candle_core::Result<Tensor> {
    if in_channels == 1 {
        return weight.sum_keepdim(1);
    }
    let repeats = in_channels.div_ceil(3);
    let tiled = Tensor::cat(&vec![weight.clone(); repeats], 1)?;
    tiled.narrow(1, 0, in_channels)? * (3.0 / in_channels as f64)
}
