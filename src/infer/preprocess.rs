//! Images into the model's input: decoding, the evaluation transform, and batching.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::DynamicImage;

use crate::data::Transform;
use crate::error::{image_error, Error, Result};

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
