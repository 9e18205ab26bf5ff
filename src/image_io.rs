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
    let format = image::guess_format(&bytes).map_err(|_| {
        "not an image: its bytes match no known format (PNG, JPEG, BMP, GIF, WebP, TIFF)".to_string()
    })?;
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
