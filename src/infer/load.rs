//! Which model to run: a checkpoint (path or `hf:`), a variant's published weights, or the
//! embedded default, with its class names.

use super::pretrained::{OpenOptions, Source};
use crate::checkpoint::{Checkpoint, StateDictKey};
use crate::error::{Error, Result};
use crate::model::DenseNet;
use crate::registry::Variant;
use crate::spec::VariantSpec;

/// The embedded default: the book's net trained on Fashion-MNIST at 32×32 by this crate.
pub const DEFAULT_WEIGHTS: &[u8] = include_bytes!("../../weights/d2l-fashion-mnist.safetensors");
/// How the embedded default is named in messages.
pub const DEFAULT_WEIGHTS_NAME: &str = "weights/d2l-fashion-mnist.safetensors (embedded)";

/// A model ready for inference, with its preprocessing and class names.
pub struct Loaded {
    /// The model, built from plain tensors: no autograd graph is ever recorded.
    pub model: DenseNet,
    /// Class name per output.
    pub classes: Vec<String>,
    /// Where the weights came from.
    pub origin: String,
    /// Notices for the user (adapted tensors, ...).
    pub notices: Vec<String>,
}

/// Loads `source`: a checkpoint (path or `hf:`, holding `options.variant` when given), a
/// variant's published checkpoint (the variant `d2l`: the embedded default), or the embedded
/// default; reads the state dict and names the classes as `options` say. A variant without a
/// published checkpoint is refused with a plain message.
///
/// # Errors
/// [`Error::Checkpoint`] when the state dict asked for is not in the file (or
/// the file holds only one, as a safetensors file and the embedded default do);
/// [`Error::Labels`] when the class names cannot be read or their count is not the
/// classifier's.
pub fn load_with(source: &Source, options: &OpenOptions) -> Result<Loaded> {
    let (key, device) = (&options.state_dict, &options.device);
    let weights = match source {
        Source::Checkpoint(w) => Some(w.as_str()),
        _ => None,
    };
    let embedded = || -> Result<Checkpoint> {
        if *key != StateDictKey::Model {
            return Err(Error::Checkpoint {
                path: DEFAULT_WEIGHTS_NAME.into(),
                message: "holds one state dict: an EMA copy or another key is chosen only in a \
                          training checkpoint given as the weights"
                    .into(),
            });
        }
        Checkpoint::from_bytes(DEFAULT_WEIGHTS, DEFAULT_WEIGHTS_NAME, device)
    };
    let mut ckpt = match source {
        Source::Checkpoint(w) => {
            if let Some(v) = &options.variant {
                // A tabular net is refused as such before the file is read.
                Variant::resolve_image(v)?;
            }
            Checkpoint::open_with(w, device, key)?
        }
        Source::Embedded => embedded()?,
        Source::Variant(v) => {
            let spec = Variant::resolve_image(v)?;
            match &spec.pretrained_cfg.hf_hub_id {
                Some(repo) => Checkpoint::open_with(&format!("hf:{repo}"), device, key)?,
                None if spec.name == "d2l" => embedded()?,
                None => {
                    return Err(Error::Checkpoint {
                        path: spec.name.clone(),
                        message: "has no published pretrained weights: pass `weights`".into(),
                    })
                }
            }
        }
    };
    let spec = ckpt.spec(weights.and(options.variant.as_deref()))?;
    let adapted = ckpt.adapt(&spec, false)?;
    let mut notices = std::mem::take(&mut ckpt.notices);
    notices.extend(adapted);
    let classes = match &options.labels {
        Some(file) => {
            let names = crate::spec::labels::fit(
                crate::spec::labels::read_file(file)?,
                spec.architecture.num_classes,
                file,
            )?;
            if let Some(own) = ckpt
                .metadata
                .as_ref()
                .map(|m| &m.classes)
                .filter(|c| **c != names)
            {
                let shown: Vec<&str> = own.iter().take(4).map(String::as_str).collect();
                notices.push(format!(
                    "the class names of {} replace the checkpoint's own ({}{})",
                    file.display(),
                    shown.join(", "),
                    if own.len() > 4 { ", ..." } else { "" }
                ));
            }
            names
        }
        None => {
            let names = ckpt.class_names(&spec);
            if let Some(w) = weights.filter(|_| !ckpt.records_class_names(&spec)) {
                notices.push(unnamed_classes(w, &spec, &names));
            }
            names
        }
    };
    let origin = ckpt.origin.clone();
    Ok(Loaded {
        model: ckpt.into_model(&spec, device)?,
        classes,
        origin,
        notices,
    })
}

/// The note for weights `w` that record no class names: what their outputs are called instead.
fn unnamed_classes(w: &str, spec: &VariantSpec, names: &[String]) -> String {
    match spec.pretrained_cfg.labels.as_deref() {
        Some(list) if names.first().is_some_and(|n| n != "class0") => format!(
            "{w} records no class names: its {} outputs are named by the built-in list `{list}` of \
             {}; `labels` names them otherwise",
            names.len(),
            spec.name
        ),
        _ => format!(
            "{w} records no class names: its {} outputs are named class0 ... class{}; `labels` \
             names them",
            names.len(),
            names.len().saturating_sub(1)
        ),
    }
}
