//! The IDX format of MNIST and Fashion-MNIST, gzipped or not.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{data_error, Dataset, Samples, Split};
use crate::error::Result;

/// Largest IDX file accepted, after decompression: 1 GiB.
const MAX_BYTES: u64 = 1 << 30;

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

fn stems(split: Split) -> (&'static str, &'static str) {
    match split {
        Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
}

/// True if `dir` holds IDX files.
pub fn looks_like(dir: &Path) -> bool {
    find(dir, "train-images-idx3-ubyte").is_some() || find(dir, "t10k-images-idx3-ubyte").is_some()
}

/// Reads one split: images (N, 1, 28, 28) and labels, with Fashion-MNIST's class names when
/// the folder name says fashion, else the digits.
pub fn open(dir: &Path, split: Split) -> Result<Dataset> {
    let (images_stem, labels_stem) = stems(split);
    let images_path = find(dir, images_stem)
        .ok_or_else(|| data_error(dir, format!("no {images_stem}[.gz] in this folder")))?;
    let labels_path = find(dir, labels_stem)
        .ok_or_else(|| data_error(dir, format!("no {labels_stem}[.gz] in this folder")))?;
    let (dims, pixels) = read(&images_path, 3)?;
    let (label_dims, labels) = read(&labels_path, 1)?;
    if dims[0] != label_dims[0] {
        return Err(data_error(
            &labels_path,
            format!(
                "{} labels for {} images in {}",
                label_dims[0],
                dims[0],
                images_path.display()
            ),
        ));
    }
    if let Some(bad) = labels.iter().find(|&&l| l > 9) {
        return Err(data_error(
            &labels_path,
            format!("label {bad} is not a class of 0..9"),
        ));
    }
    let fashion = dir.to_string_lossy().to_ascii_lowercase().contains("fashion");
    let classes = if fashion {
        crate::spec::labels::builtin("fashion-mnist").expect("built-in list")
    } else {
        (0..10).map(|d| d.to_string()).collect()
    };
    Ok(Dataset {
        samples: Samples::InMemory {
            pixels,
            channels: 1,
            height: dims[1],
            width: dims[2],
        },
        labels: labels.into_iter().map(u32::from).collect(),
        classes,
    })
}

/// Reads an unsigned-byte IDX file of `rank` dimensions: its dimensions and data, checking the
/// magic number and that the data is exactly as long as the dimensions say.
pub fn read(path: &Path, rank: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let file = std::fs::File::open(path).map_err(|e| data_error(path, e.to_string()))?;
    decode(std::io::BufReader::new(file), rank, path)
}

/// [`read`] on bytes from any reader, gzipped or not, never holding more than 1 GiB of them;
/// `path` names them in errors. Returns the dimensions and the `product(dims)` data bytes.
pub fn decode(mut reader: impl Read, rank: usize, path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let fail = |m: String| data_error(path, m);
    let mut raw = Vec::new();
    let mut head = [0u8; 2];
    reader
        .read_exact(&mut head)
        .map_err(|_| fail("empty or truncated file".into()))?;
    let chained = std::io::Cursor::new(head).chain(reader);
    let mut limited: Box<dyn Read> = if head == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(chained).take(MAX_BYTES + 1))
    } else {
        Box::new(chained.take(MAX_BYTES + 1))
    };
    limited
        .read_to_end(&mut raw)
        .map_err(|e| fail(format!("cannot decompress: {e}")))?;
    if raw.len() as u64 > MAX_BYTES {
        return Err(fail(format!("larger than the limit of {MAX_BYTES} bytes")));
    }
    let header = 4 + 4 * rank;
    if raw.len() < header {
        return Err(fail(format!(
            "truncated: {} bytes, the header alone takes {header}",
            raw.len()
        )));
    }
    let expected_magic = [0, 0, 0x08, rank as u8];
    if raw[..4] != expected_magic {
        return Err(fail(format!(
            "wrong magic number {:02x?}: expected {expected_magic:02x?} (unsigned bytes, {rank} dimensions)",
            &raw[..4]
        )));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| u32::from_be_bytes(raw[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let count = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match count {
        Some(n) if n == raw.len() - header => Ok((dims, raw.split_off(header))),
        _ => Err(fail(format!(
            "the header says {dims:?} = {} values, but {} follow",
            count.map_or("too many".to_string(), |n| n.to_string()),
            raw.len() - header
        ))),
    }
}
