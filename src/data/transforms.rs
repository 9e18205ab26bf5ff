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

    /// Resizes the shorter side of an image to `resize` (bilinear, antialiased) and keeps the
    /// centre `size` square, in the transform's channels, as planar 8-bit pixels.
    pub fn fit_image(&self, image: &DynamicImage) -> Vec<u8> {
        let (w, h) = image.dimensions();
        let target = self.resize.max(self.size);
        let scale = target as f64 / w.min(h) as f64;
        let (nw, nh) = (
            ((w as f64 * scale).round() as u32).max(target as u32),
            ((h as f64 * scale).round() as u32).max(target as u32),
        );
        let resized = if (nw, nh) == (w, h) {
            image.clone()
        } else {
            image.resize_exact(nw, nh, FilterType::Triangle)
        };
        let (x0, y0) = ((nw - self.size as u32) / 2, (nh - self.size as u32) / 2);
        let cropped = resized.crop_imm(x0, y0, self.size as u32, self.size as u32);
        planar(&cropped, self.channels)
    }
}

/// An image's pixels as planar 8-bit channels: 1 (luma) or 3 (RGB).
pub fn planar(image: &DynamicImage, channels: usize) -> Vec<u8> {
    if channels == 1 {
        return image.to_luma8().into_raw();
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
        let img = image::GrayImage::from_raw(width as u32, height as u32, plane.to_vec()).expect("plane size");
        out.extend(imageops::resize(&img, size as u32, size as u32, FilterType::Triangle).into_raw());
    }
    debug_assert_eq!(out.len() % (channels * size * size), 0);
    out
}
