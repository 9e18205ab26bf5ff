//! An ImageFolder tree: `train/` and `val/`, one sub-folder per class.

use std::path::Path;

use super::{data_error, Dataset, Samples, Split};
use crate::error::Result;

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"];

/// Lists one split: classes are the sub-folders of `train/` (sorted, as torchvision does),
/// samples every image file under them.
pub fn open(dir: &Path, split: Split) -> Result<Dataset> {
    let split_dir = dir.join(match split {
        Split::Train => "train",
        Split::Test => "val",
    });
    let class_root = if dir.join("train").is_dir() {
        dir.join("train")
    } else {
        split_dir.clone()
    };
    let mut classes: Vec<String> = read_dir(&class_root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(data_error(
            &class_root,
            "no class folders: expected one sub-folder per class".into(),
        ));
    }
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = split_dir.join(class);
        if !class_dir.is_dir() {
            continue;
        }
        let mut images: Vec<_> = read_dir(&class_dir)?
            .into_iter()
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str()))
            })
            .collect();
        images.sort();
        labels.extend(std::iter::repeat_n(label as u32, images.len()));
        files.extend(images);
    }
    if files.is_empty() {
        return Err(data_error(
            &split_dir,
            "no images (PNG, JPEG, ...) in any class folder".into(),
        ));
    }
    Ok(Dataset {
        samples: Samples::Files(files),
        labels,
        classes,
    })
}

fn read_dir(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| data_error(dir, e.to_string()))?;
    Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
}
