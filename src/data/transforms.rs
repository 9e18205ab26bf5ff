//! Turning 8-bit images into normalised float tensors, with the usual augmentations.

use image::{imageops, imageops::FilterType, DynamicImage, GenericImageView};
use rand::Rng;

/// From an image to the network's input: (channels, size, size) floats.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    /// Output side in pixels.
    pub size: usize,
    /// Files only: the shorter side is resized to this before the centre `size` crop (256 for
    /// ImageNet's 224). In-memory data sets are resized straight to `size`.
    pub resize: usize,
    /// Output channels: 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Per-channel mean subtracted from pixels scaled to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by.
    pub std: Vec<f32>,
    /// Random crop with `pad` pixels of zero padding, and random horizontal flips.
    pub augment: bool,
    /// Padding for the random crop (4 in the paper's CIFAR recipe).
    pub pad: usize,
}

impl Transform {
    /// Normalises planar 8-bit pixels (channels × size × size) into `out`, augmenting when asked.
    pub fn apply_planar(&self, pixels: &[u8], rng: &mut impl Rng, out: &mut Vec<f32>) {
        let s = self.size;
        let (dy, dx, flip) = if self.augment {
            (
                rng.random_range(0..=2 * self.pad) as isize - self.pad as isize,
                rng.random_range(0..=2 * self.pad) as isize - self.pad as isize,
                rng.random_bool(0.5),
            )
        } else {
            (0, 0, false)
        };
        for c in 0..self.channels {
            let plane = &pixels[c * s * s..(c + 1) * s * s];
            let (mean, std) = (self.mean[c], self.std[c]);
            for y in 0..s as isize {
                for x in 0..s as isize {
                    let sx = if flip { s as isize - 1 - x } else { x } + dx;
                    let sy = y + dy;
                    let v = if (0..s as isize).contains(&sy) && (0..s as isize).contains(&sx) {
                        plane[sy as usize * s + sx as usize] as f32 / 255.0
                    } else {
                        0.0
                    };
                    out.push((v - mean) / std);
                }
            }
        }
    }

    /// torchvision's `Resize(resize)` then `CenterCrop(size)`, in the transform's channels, as
    /// planar 8-bit pixels: the shorter side becomes `resize` and the longer
    /// `floor(resize · long / short)`, bilinear with antialiasing; the crop offset is
    /// `round((side − size) / 2)`, ties to even. A color image for a 1-channel model is first
    /// converted to luma as PIL does. An image already of the target size is not resampled.
    ///
    /// Refuses an empty image, and one so elongated that the resized longer side would pass
    /// 16,384 pixels (the decoder's limit).
    pub fn fit_image(&self, image: &DynamicImage) -> Result<Vec<u8>, String> {
        let (w, h) = image.dimensions();
        let target = self.resize.max(self.size) as u64;
        let (short, long) = (w.min(h) as u64, w.max(h) as u64);
        if short == 0 {
            return Err(format!("the image is empty ({w}×{h})"));
        }
        let long_new = (target * long / short).max(target);
        if long_new > crate::image_io::MAX_SIDE as u64 {
            return Err(format!(
                "a {w}×{h} image is too elongated: resizing its shorter side to {target} would make the \
                 longer {long_new} pixels, more than the limit of {}",
                crate::image_io::MAX_SIDE
            ));
        }
        let long_new = long_new as u32;
        let image = if self.channels == 1 {
            DynamicImage::ImageLuma8(luma_pil(image))
        } else {
            DynamicImage::ImageRgb8(image.to_rgb8())
        };
        let (nw, nh) = if w <= h {
            (target as u32, long_new)
        } else {
            (long_new, target as u32)
        };
        let resized = if (nw, nh) == (w, h) {
            image
        } else {
            image.resize_exact(nw, nh, FilterType::Triangle)
        };
        let offset = |side: u32| ((side - self.size as u32) as f64 / 2.0).round_ties_even() as u32;
        let cropped = resized.crop_imm(offset(nw), offset(nh), self.size as u32, self.size as u32);
        Ok(planar(&cropped, self.channels))
    }
}

/// PIL's `convert("L")`: L = (19595 R + 38470 G + 7471 B + 2¹⁵) >> 16 (ITU-R 601-2 luma);
/// gray images pass unchanged.
fn luma_pil(image: &DynamicImage) -> image::GrayImage {
    if let DynamicImage::ImageLuma8(gray) = image {
        return gray.clone();
    }
    let rgb = image.to_rgb8();
    image::GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let p = rgb.get_pixel(x, y);
        let l = (19595 * p[0] as u32 + 38470 * p[1] as u32 + 7471 * p[2] as u32 + 0x8000) >> 16;
        image::Luma([l as u8])
    })
}

/// An image's pixels as planar 8-bit channels: 1 (luma, as PIL) or 3 (RGB).
pub fn planar(image: &DynamicImage, channels: usize) -> Vec<u8> {
    if channels == 1 {
        return luma_pil(image).into_raw();
    }
    let rgb = image.to_rgb8();
    let (w, h) = rgb.dimensions();
    let n = (w * h) as usize;
    let mut out = vec![0u8; 3 * n];
    for (i, p) in rgb.pixels().enumerate() {
        for c in 0..3 {
            out[c * n + i] = p[c];
        }
    }
    out
}

/// Resizes every planar image of a data set held in memory to `size`×`size` (bilinear, as the
/// book's `transforms.Resize`), once, before training.
pub fn resize_planar(pixels: &[u8], channels: usize, height: usize, width: usize, size: usize) -> Vec<u8> {
    if (height, width) == (size, size) {
        return pixels.to_vec();
    }
    let mut out = Vec::with_capacity(pixels.len() / (height * width) * size * size);
    for plane in pixels.chunks_exact(height * width) {
        let img =
            image::GrayImage::from_raw(width as u32, height as u32, plane.to_vec()).expect("plane size");
        out.extend(imageops::resize(&img, size as u32, size as u32, FilterType::Triangle).into_raw());
    }
    debug_assert_eq!(out.len() % (channels * size * size), 0);
    out
}
