//! CIFAR-10 and CIFAR-100 binary batches.

use std::path::{Path, PathBuf};

use super::{data_error, Dataset, Samples, Split};
use crate::error::Result;

const PIXELS: usize = 3 * 32 * 32;

/// The files of a split and the bytes of label before each image (1 for CIFAR-10; 2 for
/// CIFAR-100, coarse then fine, of which the fine label is used).
fn files(dir: &Path, split: Split) -> Option<(Vec<PathBuf>, usize)> {
    let cifar10: Vec<PathBuf> = match split {
        Split::Train => (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).collect(),
        Split::Test => vec![dir.join("test_batch.bin")],
    };
    if cifar10.iter().all(|p| p.is_file()) {
        return Some((cifar10, 1));
    }
    let cifar100 = dir.join(match split {
        Split::Train => "train.bin",
        Split::Test => "test.bin",
    });
    cifar100.is_file().then(|| (vec![cifar100], 2))
}

/// True if `dir` holds CIFAR batches.
pub fn looks_like(dir: &Path) -> bool {
    files(dir, Split::Train).is_some() || files(dir, Split::Test).is_some()
}

/// Reads one split: images (N, 3, 32, 32) and labels.
pub fn open(dir: &Path, split: Split) -> Result<Dataset> {
    let (paths, label_bytes) = files(dir, split)
        .ok_or_else(|| data_error(dir, format!("no CIFAR batches for the {split:?} split")))?;
    let num_classes = if label_bytes == 1 { 10 } else { 100 };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in &paths {
        let bytes = std::fs::read(path).map_err(|e| data_error(path, e.to_string()))?;
        let (l, p) = parse_batch(&bytes, label_bytes, path)?;
        labels.extend(l);
        pixels.extend(p);
    }
    let classes = if num_classes == 10 {
        crate::spec::labels::builtin("cifar-10").expect("built-in list")
    } else {
        (0..num_classes).map(|i| format!("class{i}")).collect()
    };
    Ok(Dataset {
        samples: Samples::InMemory {
            pixels,
            channels: 3,
            height: 32,
            width: 32,
        },
        labels,
        classes,
    })
}

/// Parses one binary batch of records, each `label_bytes` of label (the last one is the class)
/// then a 3×32×32 planar image; `path` names it in errors. Returns the labels and the pixels.
pub fn parse_batch(bytes: &[u8], label_bytes: usize, path: &Path) -> Result<(Vec<u32>, Vec<u8>)> {
    let record = label_bytes + PIXELS;
    let num_classes = if label_bytes == 1 { 10 } else { 100 };
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(data_error(
            path,
            format!(
                "{} bytes is not a whole number of {record}-byte records",
                bytes.len()
            ),
        ));
    }
    let mut labels = Vec::with_capacity(bytes.len() / record);
    let mut pixels = Vec::with_capacity(bytes.len() / record * PIXELS);
    for r in bytes.chunks_exact(record) {
        let label = r[label_bytes - 1] as u32;
        if label >= num_classes {
            return Err(data_error(
                path,
                format!("label {label} is not a class of 0..{num_classes}"),
            ));
        }
        labels.push(label);
        pixels.extend_from_slice(&r[label_bytes..]);
    }
    Ok((labels, pixels))
}
