//! Turning 8-bit images into normalised float tensors, with the usual augmentations.

use image::{imageops, imageops::FilterType, DynamicImage, GenericImageView};
use rand::Rng;

use super::augment::{random_resized_crop_box, Augment, ColorNoise, CropBox};
use crate::error::{image_error, Result};
use crate::spec::VariantSpec;

/// Padding of the CIFAR recipe's random crop, in pixels.
const CROP_FLIP_PAD: usize = 4;

/// From an image to the network's input: (channels, size, size) floats.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    /// Output side in pixels.
    pub size: usize,
    /// Files only, without a resizing crop: the shorter side is resized to this before the
    /// centre `size` crop (256 for ImageNet's 224). In-memory data sets are resized straight to
    /// `size`.
    pub resize: usize,
    /// Output channels: 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Per-channel mean subtracted from pixels scaled to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by.
    pub std: Vec<f32>,
    /// The augmentation; [`Augment::None`] for evaluation and inference.
    pub augment: Augment,
}

impl Transform {
    /// A sample from a decoded image, normalised into `out` (channels × size × size), with the
    /// augmentation's draws from `rng`: for [`Augment::Imagenet`] and [`Augment::Fb`] a random
    /// resized crop of the whole image ([`random_resized_crop_box`], then a bilinear resize to
    /// `size`), a flip and for `Fb` the colour noise; otherwise [`Transform::fit_image`] then
    /// [`Transform::apply_planar`]. The message says why an image cannot be used.
    pub fn image_sample(&self, image: &DynamicImage, rng: &mut impl Rng, out: &mut Vec<f32>) -> Result<()> {
        if !self.augment.resizes_crops() {
            self.apply_planar(&self.fit_image(image)?, rng, out);
            return Ok(());
        }
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(image_error(format!("the image is empty ({w}×{h})")));
        }
        let image = self.to_channels(image);
        let b = random_resized_crop_box(w, h, rng);
        let crop = resized_crop(&image, b, self.size as u32)?;
        let crop = if rng.random_bool(0.5) { crop.fliph() } else { crop };
        let noise = (self.augment == Augment::Fb).then(|| ColorNoise::draw(rng));
        self.normalise(&planar(&crop, self.channels), noise.as_ref(), out);
        Ok(())
    }

    /// A sample from planar pixels held in memory (`channels` × `height` × `width`), into `out`
    /// as [`Transform::image_sample`] makes it; without a resizing crop, resized straight to
    /// `size` (as the book's `Resize`) and then [`Transform::apply_planar`].
    pub fn planar_sample(
        &self,
        pixels: &[u8],
        (channels, height, width): (usize, usize, usize),
        rng: &mut impl Rng,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        if self.augment.resizes_crops() {
            return self.image_sample(&planar_image(pixels, channels, height, width)?, rng, out);
        }
        let s = self.size;
        let sample = if (height, width) == (s, s) {
            std::borrow::Cow::Borrowed(pixels)
        } else {
            std::borrow::Cow::Owned(resize_planar(pixels, channels, height, width, s))
        };
        self.apply_planar(
            &convert_channels(&sample, channels, self.channels, s * s),
            rng,
            out,
        );
        Ok(())
    }

    /// Normalises planar 8-bit pixels (channels × size × size) into `out`; with the crop-flip
    /// augmentation, a random crop of the image padded with 4 zero pixels and a flip with
    /// probability ½ first.
    pub fn apply_planar(&self, pixels: &[u8], rng: &mut impl Rng, out: &mut Vec<f32>) {
        let s = self.size;
        let (dy, dx, flip) = if self.augment == Augment::CropFlip {
            let pad = CROP_FLIP_PAD;
            (
                rng.random_range(0..=2 * pad) as isize - pad as isize,
                rng.random_range(0..=2 * pad) as isize - pad as isize,
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

    /// Planar pixels scaled to [0, 1], with `noise` applied, then normalised, into `out`.
    fn normalise(&self, pixels: &[u8], noise: Option<&ColorNoise>, out: &mut Vec<f32>) {
        let mut planes: Vec<f32> = pixels.iter().map(|&v| v as f32 / 255.0).collect();
        if let Some(noise) = noise {
            noise.apply(&mut planes, self.channels);
        }
        let n = self.size * self.size;
        for (c, plane) in planes.chunks_exact(n).enumerate() {
            let (mean, std) = (self.mean[c], self.std[c]);
            out.extend(plane.iter().map(|v| (v - mean) / std));
        }
    }

    /// The image in the transform's channels: luma as PIL's `convert("L")`, or RGB.
    pub fn to_channels(&self, image: &DynamicImage) -> DynamicImage {
        if self.channels == 1 {
            DynamicImage::ImageLuma8(luma_pil(image))
        } else {
            DynamicImage::ImageRgb8(image.to_rgb8())
        }
    }

    /// torchvision's `Resize(resize)` then `CenterCrop(size)`, in the transform's channels, as
    /// planar 8-bit pixels: the shorter side becomes `resize` and the longer
    /// `floor(resize · long / short)`, bilinear with antialiasing; the crop offset is
    /// `round((side − size) / 2)`, ties to even. A color image for a 1-channel model is first
    /// converted to luma as PIL does. An image already of the target size is not resampled.
    ///
    /// Refuses an empty image, and one so elongated that the resized image would have more
    /// pixels than PIL opens (178,956,970).
    pub fn fit_image(&self, image: &DynamicImage) -> Result<Vec<u8>> {
        let (w, h) = image.dimensions();
        let fit = self.fit(w, h)?;
        let image = self.to_channels(image);
        let resized = if fit.resized == (w, h) {
            image
        } else {
            image.resize_exact(fit.resized.0, fit.resized.1, FilterType::Triangle)
        };
        let (left, top) = fit.crop_origin;
        let cropped = resized.crop_imm(left, top, self.size as u32, self.size as u32);
        Ok(planar(&cropped, self.channels))
    }

    /// Where [`Transform::fit_image`] takes its `size`×`size` crop from a `w`×`h` image, in the
    /// image's own pixels: (left, top, width, height), fractional. A heat map over the crop
    /// the network saw is drawn over this box.
    pub fn eval_crop_box(&self, w: u32, h: u32) -> Result<[f64; 4]> {
        let fit = self.fit(w, h)?;
        let (sx, sy) = (w as f64 / fit.resized.0 as f64, h as f64 / fit.resized.1 as f64);
        let (left, top) = fit.crop_origin;
        let size = self.size as f64;
        Ok([left as f64 * sx, top as f64 * sy, size * sx, size * sy])
    }

    /// The geometry of [`Transform::fit_image`] for a `w`×`h` image: the shorter side resized
    /// to `max(resize, size)`, then a centre crop, its offsets rounded as torchvision's
    /// `CenterCrop`.
    fn fit(&self, w: u32, h: u32) -> Result<Fit> {
        let target = self.resize.max(self.size) as u64;
        let (short, long) = (w.min(h) as u64, w.max(h) as u64);
        if short == 0 {
            return Err(image_error(format!("the image is empty ({w}×{h})")));
        }
        let long_new = (target * long / short).max(target);
        let (nw, nh) = if w <= h {
            (target, long_new)
        } else {
            (long_new, target)
        };
        if let Some(why) = crate::image_io::too_many_pixels(nw, nh) {
            return Err(image_error(format!(
                "a {w}×{h} image is too elongated: resizing its shorter side to {target} would make \
                 it {nw}×{nh}, {why}"
            )));
        }
        // Within PIL's limit, both sides fit in a u32.
        let (nw, nh) = (nw as u32, nh as u32);
        let offset = |side: u32| ((side - self.size as u32) as f64 / 2.0).round_ties_even() as u32;
        Ok(Fit {
            resized: (nw, nh),
            crop_origin: (offset(nw), offset(nh)),
        })
    }
}

/// [`Transform::fit`]'s answer: the resized size and where the crop starts in it.
struct Fit {
    resized: (u32, u32),
    crop_origin: (u32, u32),
}

/// torchvision's `F.resized_crop(image, top, left, height, width, [size, size], BILINEAR,
/// antialias=True)` on a PIL image: the box resized to `size`×`size` with the triangle filter
/// widened by the scale when shrinking, in 8-bit fixed point, as PIL's bilinear resize does
/// (`fast_image_resize`'s convolution, SIMD). Luma or RGB images;
/// others are converted to RGB first. The box must lie inside the image; the message says why
/// a resize failed.
pub fn resized_crop(image: &DynamicImage, b: CropBox, size: u32) -> Result<DynamicImage> {
    use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
    // Cut first, as PIL does: the filter then clamps at the box's edges instead of reading
    // the pixels beyond them.
    let crop = image.crop_imm(b.left, b.top, b.width, b.height);
    let crop = match crop {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => crop,
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    };
    let gray = matches!(crop, DynamicImage::ImageLuma8(_));
    let pixels = if gray { PixelType::U8 } else { PixelType::U8x3 };
    let mut out = Image::new(size, size, pixels);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new().resize(&crop, &mut out, &options).map_err(|e| {
        image_error(format!(
            "cannot resize a {}×{} crop to {size}×{size}: {e}",
            b.width, b.height
        ))
    })?;
    let raw = out.into_vec();
    let image = if gray {
        image::GrayImage::from_raw(size, size, raw).map(DynamicImage::ImageLuma8)
    } else {
        image::RgbImage::from_raw(size, size, raw).map(DynamicImage::ImageRgb8)
    };
    image.ok_or_else(|| image_error(format!("the resize did not give {size}×{size} pixels")))
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

/// Planar pixels (1 or 3 channels) as an image, for the crops that work on images.
fn planar_image(pixels: &[u8], channels: usize, height: usize, width: usize) -> Result<DynamicImage> {
    let n = height * width;
    let (w, h) = (width as u32, height as u32);
    let image = match channels {
        1 => image::GrayImage::from_raw(w, h, pixels[..n].to_vec()).map(DynamicImage::ImageLuma8),
        3 => {
            let interleaved = (0..n)
                .flat_map(|i| [pixels[i], pixels[n + i], pixels[2 * n + i]])
                .collect();
            image::RgbImage::from_raw(w, h, interleaved).map(DynamicImage::ImageRgb8)
        }
        _ => None,
    };
    image.ok_or_else(|| {
        image_error(format!(
            "{channels} channels of {width}×{height} pixels are not an image"
        ))
    })
}

/// Planar pixels from `from` to `to` channels: gray repeated to RGB, or RGB averaged (ITU-R 601
/// luma) to gray.
fn convert_channels(pixels: &[u8], from: usize, to: usize, plane: usize) -> std::borrow::Cow<'_, [u8]> {
    match (from, to) {
        (a, b) if a == b => std::borrow::Cow::Borrowed(pixels),
        (1, 3) => std::borrow::Cow::Owned(pixels.repeat(3)),
        (3, 1) => std::borrow::Cow::Owned(
            (0..plane)
                .map(|i| {
                    let (r, g, b) = (
                        pixels[i] as f32,
                        pixels[plane + i] as f32,
                        pixels[2 * plane + i] as f32,
                    );
                    (0.299 * r + 0.587 * g + 0.114 * b).round() as u8
                })
                .collect(),
        ),
        _ => std::borrow::Cow::Borrowed(pixels),
    }
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
