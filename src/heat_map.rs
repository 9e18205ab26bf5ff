//! Heat maps over images: a class activation map (h, w), upsampled bilinearly to the part of
//! the image the network saw, normalised to [0, 1], coloured by viridis (matplotlib's
//! perceptually uniform map, through `colorous`) and blended over the image; written as PNG
//! with what it shows in the file's text chunks.

use std::path::Path;

use image::{imageops, DynamicImage, RgbImage};

use crate::error::{Error, Result};

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

/// The heat map `map` ((h, w) values of any range) over the box `region` = [left, top, width,
/// height] of `image` (in its pixels, as [`Transform::eval_crop_box`] gives for the crop the
/// network saw): the box cut out (scaled up to [`MIN_SIDE`] on its shorter side when smaller),
/// the map upsampled to it, normalised, coloured by viridis and blended with weight
/// [`HEAT_WEIGHT`].
///
/// [`Transform::eval_crop_box`]: crate::data::Transform::eval_crop_box
pub fn overlay(image: &DynamicImage, region: [f64; 4], map: &[f32], (h, w): (usize, usize)) -> RgbImage {
    let (iw, ih) = (image.width(), image.height());
    let clamp = |v: f64, max: u32| (v.round().max(0.0) as u32).min(max);
    let (left, top) = (clamp(region[0], iw - 1), clamp(region[1], ih - 1));
    let width = clamp(region[2], iw - left).max(1);
    let height = clamp(region[3], ih - top).max(1);
    let mut view = image.crop_imm(left, top, width, height).to_rgb8();
    let short = width.min(height);
    if short < MIN_SIDE {
        let scale = MIN_SIDE as f64 / short as f64;
        let (sw, sh) = (
            (width as f64 * scale).round() as u32,
            (height as f64 * scale).round() as u32,
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
    view
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
    crate::checkpoint::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let out = overlay(&image, [0.0, 0.0, 300.0, 300.0], &[0.0, 0.0, 0.0, 1.0], (2, 2));
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
