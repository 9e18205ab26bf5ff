//! Heat maps over images: a class activation map (h, w), upsampled bilinearly to the part of
//! the image the network saw, normalised to [0, 1], coloured by viridis (matplotlib's
//! perceptually uniform map, through `colorous`) and blended over the image; written as PNG
//! with what it shows in the file's text chunks.

use std::path::Path;

use image::{imageops, DynamicImage, RgbImage};

use crate::error::{image_error, Error, Result};

/// The heat map's weight in the blend; the image keeps the rest.
pub const HEAT_WEIGHT: f32 = 0.5;

/// An overlay's shorter side is at least this many pixels: smaller crops (a 28×28
/// Fashion-MNIST image) are scaled up first, so that the map can be seen.
pub const MIN_SIDE: u32 = 256;

/// `map` (h·w values, row-major) resized to (out_h, out_w), bilinear with half-pixel centres
/// and clamped edges, as PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` and
/// OpenCV's `cv2.resize` upsample (`fast_image_resize`'s bilinear convolution on f32 pixels;
/// values are not clamped). Panics when `map` does not hold h·w values or a side is 0.
pub fn upsample(map: &[f32], (h, w): (usize, usize), (out_h, out_w): (u32, u32)) -> Vec<f32> {
    use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
    assert_eq!(
        map.len(),
        h * w,
        "upsample: {} values for a {h}×{w} map",
        map.len()
    );
    let bytes = map.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let plane = Image::from_vec_u8(w as u32, h as u32, bytes, PixelType::F32).expect("h·w f32 values");
    let mut out = Image::new(out_w, out_h, PixelType::F32);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&plane, &mut out, &options)
        .expect("an f32 plane resizes to any size");
    out.buffer()
        .chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// `values` rescaled to [0, 1] by their minimum and maximum; all zero when they are equal.
pub fn normalise(values: &[f32]) -> Vec<f32> {
    let (lo, hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let range = hi - lo;
    values
        .iter()
        .map(|&v| if range > 0.0 { (v - lo) / range } else { 0.0 })
        .collect()
}

/// An overlay's shorter side is at most this many pixels: larger crops (a 12,000×8,000 photo's)
/// are scaled down first.
pub const MAX_SIDE: u32 = 1024;

/// The pixels of `image` (`width`×`height`) that the box `region` = [left, top, width,
/// height] covers, rounded: (left, top, width, height), at least 1×1, inside the image. The
/// message says why a region cannot be used (not finite, empty, outside the image).
pub fn crop_pixels((width, height): (u32, u32), region: [f64; 4]) -> Result<(u32, u32, u32, u32)> {
    if width == 0 || height == 0 {
        return Err(image_error(format!("the image is empty ({width}×{height})")));
    }
    if region.iter().any(|v| !v.is_finite()) || region[2] <= 0.0 || region[3] <= 0.0 {
        return Err(image_error(format!(
            "the region {region:?} is not a box of positive size"
        )));
    }
    let (x0, y0) = (region[0].round().max(0.0), region[1].round().max(0.0));
    let (x1, y1) = (
        (region[0] + region[2]).round().min(width as f64),
        (region[1] + region[3]).round().min(height as f64),
    );
    if x0 >= x1 || y0 >= y1 {
        return Err(image_error(format!(
            "the region {region:?} lies outside the {width}×{height} image"
        )));
    }
    Ok((x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32))
}

/// The heat map `map` ((h, w) finite values of any range) over the box `region` = [left, top,
/// width, height] of `image` (in its pixels, as [`Transform::eval_crop_box`] gives for the crop
/// the network saw): the box cut out ([`crop_pixels`]) and scaled to between [`MIN_SIDE`] and
/// [`MAX_SIDE`] pixels on its shorter side when outside them, the map upsampled to it,
/// normalised, coloured by viridis and blended with weight [`HEAT_WEIGHT`].
///
/// The message says what is wrong: a map of other than h·w values or with a side of 0, a
/// value that is not finite, a region [`crop_pixels`] refuses.
///
/// [`Transform::eval_crop_box`]: crate::data::Transform::eval_crop_box
pub fn overlay(
    image: &DynamicImage,
    region: [f64; 4],
    map: &[f32],
    (h, w): (usize, usize),
) -> Result<RgbImage> {
    if h == 0 || w == 0 || map.len() != h * w {
        return Err(image_error(format!("{} values for a {h}×{w} map", map.len())));
    }
    if let Some(v) = map.iter().find(|v| !v.is_finite()) {
        return Err(image_error(format!("the map holds {v}")));
    }
    let (left, top, width, height) = crop_pixels((image.width(), image.height()), region)?;
    let mut view = image.crop_imm(left, top, width, height).to_rgb8();
    let short = width.min(height);
    let scale = if short < MIN_SIDE {
        MIN_SIDE as f64 / short as f64
    } else if short > MAX_SIDE {
        MAX_SIDE as f64 / short as f64
    } else {
        1.0
    };
    if scale != 1.0 {
        let (sw, sh) = (
            ((width as f64 * scale).round() as u32).max(1),
            ((height as f64 * scale).round() as u32).max(1),
        );
        view = imageops::resize(&view, sw, sh, imageops::FilterType::Triangle);
    }
    let heat = normalise(&upsample(map, (h, w), (view.height(), view.width())));
    for (pixel, &t) in view.pixels_mut().zip(&heat) {
        let c = colorous::VIRIDIS.eval_continuous(t as f64);
        for (channel, colour) in pixel.0.iter_mut().zip([c.r, c.g, c.b]) {
            *channel = ((1.0 - HEAT_WEIGHT) * *channel as f32 + HEAT_WEIGHT * colour as f32).round() as u8;
        }
    }
    Ok(view)
}

/// Writes `image` as a PNG at `path` (through a temporary file and a rename), with each
/// (keyword, text) of `text` as an iTXt chunk (UTF-8): PNG's standard keywords are `Title`,
/// `Description`, `Software`, `Comment`.
pub fn write_png(path: &Path, image: &RgbImage, text: &[(&str, String)]) -> Result<()> {
    let io = |source: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let png_error = |e: png::EncodingError| io(std::io::Error::other(e.to_string()));
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, image.width(), image.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    for (keyword, value) in text {
        encoder
            .add_itxt_chunk((*keyword).to_string(), value.clone())
            .map_err(png_error)?;
    }
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(image.as_raw()).map_err(png_error)?;
    writer.finish().map_err(png_error)?;
    crate::output::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_maps_and_regions_are_refused_with_the_reason() {
        let image = DynamicImage::ImageRgb8(RgbImage::new(40, 30));
        let whole = [0.0, 0.0, 40.0, 30.0];
        let err = |r: Result<RgbImage>| r.unwrap_err().to_string();
        assert!(err(overlay(&image, whole, &[0.0; 3], (2, 2))).contains("3 values for a 2×2 map"));
        assert!(err(overlay(&image, whole, &[f32::NAN; 4], (2, 2))).contains("NaN"));
        assert!(err(overlay(&image, [f64::NAN, 0.0, 4.0, 4.0], &[0.0; 4], (2, 2))).contains("positive size"));
        assert!(err(overlay(&image, [50.0, 0.0, 4.0, 4.0], &[0.0; 4], (2, 2))).contains("outside"));
        let empty = DynamicImage::ImageRgb8(RgbImage::new(0, 0));
        assert!(err(overlay(&empty, whole, &[0.0; 4], (2, 2))).contains("empty"));
        // A huge crop is drawn at MAX_SIDE on its shorter side.
        let big = DynamicImage::ImageRgb8(RgbImage::new(3000, 2000));
        let out = overlay(&big, [0.0, 0.0, 3000.0, 2000.0], &[0.0; 4], (2, 2)).unwrap();
        assert_eq!(out.dimensions(), (1536, MAX_SIDE));
    }

    #[test]
    fn upsampling_matches_pytorch_bilinear_with_half_pixel_centres() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=4,
        // mode="bilinear", align_corners=False)
        let want = [
            0.0, 0.25, 0.75, 1.0, //
            0.5, 0.75, 1.25, 1.5, //
            1.5, 1.75, 2.25, 2.5, //
            2.0, 2.25, 2.75, 3.0,
        ];
        let got = upsample(&[0.0, 1.0, 2.0, 3.0], (2, 2), (4, 4));
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn normalising_spans_zero_to_one_and_a_flat_map_is_zero() {
        assert_eq!(normalise(&[2.0, 4.0, 3.0]), vec![0.0, 1.0, 0.5]);
        assert_eq!(normalise(&[1.5, 1.5]), vec![0.0, 0.0]);
    }

    #[test]
    fn the_hot_end_is_drawn_where_the_map_peaks() {
        let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(300, 300, image::Rgb([128, 128, 128])));
        // A 2×2 map whose bottom-right cell is hot, over the whole image.
        let out = overlay(&image, [0.0, 0.0, 300.0, 300.0], &[0.0, 0.0, 0.0, 1.0], (2, 2)).unwrap();
        assert_eq!(out.dimensions(), (300, 300));
        let hot = colorous::VIRIDIS.eval_continuous(1.0);
        let cold = colorous::VIRIDIS.eval_continuous(0.0);
        let blend = |c: u8| ((128.0 + c as f32) / 2.0).round() as u8;
        assert_eq!(
            out.get_pixel(299, 299).0,
            [blend(hot.r), blend(hot.g), blend(hot.b)]
        );
        assert_eq!(
            out.get_pixel(0, 0).0,
            [blend(cold.r), blend(cold.g), blend(cold.b)]
        );
    }
}
