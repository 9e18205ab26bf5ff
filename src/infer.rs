//! Inference: which model to run (a checkpoint, a hub repo, or the embedded default), image
//! preprocessing from the checkpoint or spec, and top-k with class names.

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::ops::softmax;
use image::DynamicImage;

use crate::checkpoint::Checkpoint;
use crate::data::{Augment, Transform};
use crate::error::{Error, Result};
use crate::model::DenseNet;
use crate::spec::VariantSpec;

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

/// Loads what `--weights` and `--variant` ask for: a checkpoint (path or `hf:`), else the
/// variant's published checkpoint, else, with neither flag (or `--variant d2l`), the embedded
/// default. A variant without a published checkpoint is refused with a plain message.
pub fn load(weights: Option<&str>, variant: Option<&str>, device: &Device) -> Result<Loaded> {
    let mut ckpt = match (weights, variant) {
        (Some(w), _) => Checkpoint::open(w, device)?,
        (None, None) => Checkpoint::from_bytes(DEFAULT_WEIGHTS, DEFAULT_WEIGHTS_NAME, device)?,
        (None, Some(v)) => {
            let spec = VariantSpec::resolve(v)?;
            match &spec.pretrained_cfg.hf_hub_id {
                Some(repo) => Checkpoint::open(&format!("hf:{repo}"), device)?,
                None if spec.name == "d2l" => {
                    Checkpoint::from_bytes(DEFAULT_WEIGHTS, DEFAULT_WEIGHTS_NAME, device)?
                }
                None => {
                    return Err(Error::Checkpoint {
                        path: spec.name.clone(),
                        message: "has no published pretrained weights: pass --weights".into(),
                    })
                }
            }
        }
    };
    let spec = ckpt.spec(if weights.is_some() { variant } else { None })?;
    let adapted = ckpt.adapt(&spec, false)?;
    let mut notices = std::mem::take(&mut ckpt.notices);
    notices.extend(adapted);
    let classes = match &ckpt.metadata {
        Some(m) if m.classes.len() == spec.architecture.num_classes => m.classes.clone(),
        _ => crate::labels::for_classes(
            spec.pretrained_cfg.labels.as_deref(),
            spec.architecture.num_classes,
        ),
    };
    let origin = ckpt.origin.clone();
    Ok(Loaded {
        model: ckpt.into_model(&spec, device)?,
        classes,
        origin,
        notices,
    })
}

/// The inference preprocessing of `spec`: torchvision's resize, centre crop and normalisation.
pub fn eval_transform(spec: &VariantSpec) -> Transform {
    Transform {
        size: spec.pretrained_cfg.preprocess.crop,
        resize: spec.pretrained_cfg.preprocess.resize,
        channels: spec.architecture.in_channels,
        mean: spec.pretrained_cfg.preprocess.mean.clone(),
        std: spec.pretrained_cfg.preprocess.std.clone(),
        augment: Augment::None,
    }
}

/// Reads and preprocesses one image file into (C, S, S) floats; the message says why not.
pub fn preprocess_file(path: &Path, transform: &Transform) -> std::result::Result<Vec<f32>, String> {
    preprocess_bytes(std::fs::read(path).map_err(|e| e.to_string())?, transform)
}

/// [`preprocess_file`] on an image file's bytes held in memory.
pub fn preprocess_bytes(bytes: Vec<u8>, transform: &Transform) -> std::result::Result<Vec<f32>, String> {
    preprocess_image(&crate::image_io::decode_image(bytes)?, transform)
}

/// Opens and decodes an image file (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM; at most 16,384
/// pixels a side); the message says why not.
pub fn open_image(path: &Path) -> std::result::Result<DynamicImage, String> {
    crate::image_io::open_image(path)
}

/// [`preprocess_file`] on a decoded image: (C, S, S) floats.
pub fn preprocess_image(
    image: &DynamicImage,
    transform: &Transform,
) -> std::result::Result<Vec<f32>, String> {
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
    let probs = softmax(&logits.to_dtype(candle_core::DType::F32)?, 1)?.to_vec2::<f32>()?;
    Ok(probs
        .into_iter()
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
        .collect())
}
