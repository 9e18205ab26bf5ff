//! Decoding image files safely: the format is read from the bytes, not the name, and
//! dimensions are checked before any pixel memory is allocated.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageReader, Limits};

/// Largest width or height accepted.
pub const MAX_SIDE: u32 = 16_384;
/// Largest decoded allocation accepted, in bytes.
pub const MAX_ALLOC: u64 = 1 << 30;

/// Opens and decodes an image, refusing files that are not images and images larger than
/// [`MAX_SIDE`] on a side; the message says which.
pub fn open_image(path: &Path) -> Result<DynamicImage, String> {
    decode_image(std::fs::read(path).map_err(|e| e.to_string())?)
}

/// [`open_image`] on bytes held in memory.
pub fn decode_image(bytes: Vec<u8>) -> Result<DynamicImage, String> {
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
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| format!("cannot decode {format:?}: {e}"))
}

/// True when a JPEG's data ends with its end-of-image marker (FF D9), padding after it aside.
fn ends_with_jpeg_end_marker(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes[..end].ends_with(&[0xFF, 0xD9])
}
