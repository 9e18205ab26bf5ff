//! Inference: which model to run (a checkpoint, a hub repo, or the embedded default), image
//! preprocessing from the checkpoint or spec, and top-k with class names.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::ops::softmax;
use image::DynamicImage;

use crate::checkpoint::{Checkpoint, StateDictKey};
pub use crate::data::eval_transform;
use crate::data::Transform;
use crate::error::{image_error, Error, Result};
use crate::model::DenseNet;
use crate::registry::Variant;

/// The embedded default: the book's net trained on Fashion-MNIST at 32×32 by this crate.
pub const DEFAULT_WEIGHTS: &[u8] = include_bytes!("../weights/d2l-fashion-mnist.safetensors");
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

/// How [`load_with`] reads a model, beyond where its weights are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadOptions {
    /// Which state dict of a training checkpoint to read (its EMA copy, another key).
    pub state_dict: StateDictKey,
    /// A file of class names ([`crate::labels::read_file`]) that replaces the checkpoint's:
    /// a torchvision fine-tune saved as `.pth` knows none. Its count must be the classifier's.
    pub labels: Option<PathBuf>,
}

/// Loads what `weights` and `variant` ask for: a checkpoint (path or `hf:`), else the
/// variant's published checkpoint, else, with neither (or the variant `d2l`), the embedded
/// default. A variant without a published checkpoint is refused with a plain message.
pub fn load(weights: Option<&str>, variant: Option<&str>, device: &Device) -> Result<Loaded> {
    load_with(weights, variant, device, &LoadOptions::default())
}

/// [`load`], reading the state dict and naming the classes as `options` say.
///
/// # Errors
/// As [`load`]; [`Error::Checkpoint`] when the state dict asked for is not in the file (or
/// the file holds only one, as a safetensors file and the embedded default do);
/// [`Error::Labels`] when the class names cannot be read or their count is not the
/// classifier's.
pub fn load_with(
    weights: Option<&str>,
    variant: Option<&str>,
    device: &Device,
    options: &LoadOptions,
) -> Result<Loaded> {
    let key = &options.state_dict;
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
    let mut ckpt = match (weights, variant) {
        (Some(w), v) => {
            if let Some(v) = v {
                // A tabular net is refused as such before the file is read.
                Variant::resolve_image(v)?;
            }
            Checkpoint::open_with(w, device, key)?
        }
        (None, None) => embedded()?,
        (None, Some(v)) => {
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
    let spec = ckpt.spec(if weights.is_some() { variant } else { None })?;
    let adapted = ckpt.adapt(&spec, false)?;
    let mut notices = std::mem::take(&mut ckpt.notices);
    notices.extend(adapted);
    let classes = match &options.labels {
        Some(file) => {
            let names = crate::labels::fit(
                crate::labels::read_file(file)?,
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
        None => ckpt.class_names(&spec),
    };
    let origin = ckpt.origin.clone();
    Ok(Loaded {
        model: ckpt.into_model(&spec, device)?,
        classes,
        origin,
        notices,
    })
}

/// Reads and preprocesses one image file into (C, S, S) floats.
///
/// # Errors
/// [`Error::Image`] naming the file: unreadable, not an image, too large, empty.
pub fn preprocess_file(path: &Path, transform: &Transform) -> Result<Vec<f32>> {
    preprocess_image(&open_image(path)?, transform).map_err(|e| at(path, e))
}

/// [`preprocess_file`] on an image file's bytes held in memory.
pub fn preprocess_bytes(bytes: Vec<u8>, transform: &Transform) -> Result<Vec<f32>> {
    preprocess_image(
        &crate::image_io::decode_image(bytes).map_err(image_error)?,
        transform,
    )
}

/// Opens and decodes an image file (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM; at most
/// 178,956,970 pixels, PIL's limit).
///
/// # Errors
/// [`Error::Image`] naming the file and why it cannot be read.
pub fn open_image(path: &Path) -> Result<DynamicImage> {
    crate::image_io::open_image(path).map_err(|message| Error::Image {
        path: Some(path.to_path_buf()),
        message,
    })
}

/// `error`, an [`Error::Image`] of an image held in memory, as one of the file at `path`.
fn at(path: &Path, error: Error) -> Error {
    match error {
        Error::Image { path: None, message } => Error::Image {
            path: Some(path.to_path_buf()),
            message,
        },
        other => other,
    }
}

/// [`preprocess_file`] on a decoded image: (C, S, S) floats.
///
/// # Errors
/// [`Error::Image`]: an empty image, or one too elongated to resize.
pub fn preprocess_image(image: &DynamicImage, transform: &Transform) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(transform.channels * transform.size * transform.size);
    // Without augmentation the generator is never drawn from.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    transform.image_sample(image, &mut rng, &mut out)?;
    Ok(out)
}

/// Stacks preprocessed images into a batch (N, C, S, S).
pub fn batch(images: &[Vec<f32>], transform: &Transform, device: &Device) -> Result<Tensor> {
    let s = transform.size;
    let data: Vec<f32> = images.concat();
    Ok(Tensor::from_vec(
        data,
        (images.len(), transform.channels, s, s),
        device,
    )?)
}

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
