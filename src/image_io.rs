//! Decoding image files safely: the format is read from the bytes, not the name, and the
//! number of pixels is checked against PIL's limit before any pixel memory is allocated.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageReader, Limits};

/// The most pixels an image may have: PIL's own limit (`Image.MAX_IMAGE_PIXELS` × 2, above
/// which it raises `DecompressionBombError`; it warns above 89,478,485). What PIL opens, this
/// opens, whatever the sides: a 17000×3000 panorama, a 1×100000 strip.
pub const MAX_PIXELS: u64 = 178_956_970;
/// The decoders' allocation limit, in bytes: [`MAX_PIXELS`] at 16 bytes a pixel (RGBA in
/// 32-bit floats, the widest format a decoder produces).
const MAX_ALLOC: u64 = MAX_PIXELS * 16;

/// Opens and decodes an image, refusing files that are not images and images of more than
/// [`MAX_PIXELS`] pixels; the message says which, with the size and the limit.
pub(crate) fn open_image(path: &Path) -> Result<DynamicImage, String> {
    decode_image(std::fs::read(path).map_err(|e| e.to_string())?)
}

/// [`open_image`] on bytes held in memory.
pub(crate) fn decode_image(bytes: Vec<u8>) -> Result<DynamicImage, String> {
    if bytes.is_empty() {
        return Err("not an image: the file is empty (0 bytes)".into());
    }
    let format = image::guess_format(&bytes).map_err(|_| {
        "not an image: its bytes match no known format (PNG, JPEG, BMP, GIF, WebP, TIFF, PPM/PGM)".to_string()
    })?;
    // The JPEG decoder fills a cut file's missing rows in and says nothing; Pillow refuses
    // such a file ("image file is truncated"), and so do we.
    if format == image::ImageFormat::Jpeg && !ends_with_jpeg_end_marker(&bytes) {
        return Err("cannot decode Jpeg: the file is truncated (no end-of-image marker)".into());
    }
    let cannot = |e: image::ImageError| format!("cannot decode {format:?}: {e}");
    let (w, h) = ImageReader::with_format(Cursor::new(&bytes), format)
        .into_dimensions()
        .map_err(cannot)?;
    if let Some(why) = too_many_pixels(w as u64, h as u64) {
        return Err(format!("cannot decode {format:?}: {w}×{h} is {why}"));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::no_limits();
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    reader.decode().map_err(cannot)
}

/// For a `w`×`h` image of more than [`MAX_PIXELS`] pixels, why it is refused: "179,560,000
/// pixels, more than the 178,956,970 that PIL opens (its DecompressionBombError limit)".
pub fn too_many_pixels(w: u64, h: u64) -> Option<String> {
    (w * h > MAX_PIXELS).then(|| {
        format!(
            "{} pixels, more than the {} that PIL opens (its DecompressionBombError limit)",
            grouped(w * h),
            grouped(MAX_PIXELS)
        )
    })
}

/// 178956970 → "178,956,970".
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// True when a JPEG's data ends with its end-of-image marker (FF D9), padding after it aside.
fn ends_with_jpeg_end_marker(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes[..end].ends_with(&[0xFF, 0xD9])
}
