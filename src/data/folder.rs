//! An ImageFolder tree: `train/` and `val/`, one sub-folder per class, read as torchvision's
//! `datasets.ImageFolder` reads it (torchvision/datasets/folder.py): classes are the
//! sub-folders in sorted order, and a class's images are every file with one of torchvision's
//! image extensions anywhere under its folder, in the order of `sorted(os.walk(...))` with each
//! folder's files sorted. One deliberate difference, for files nobody means as data: hidden
//! folders and files (a leading `.`: `.ipynb_checkpoints`, macOS's `._x.jpg`) are skipped,
//! where torchvision takes them (as a class, or as an image that then fails to decode).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::{data_error, Dataset, Samples, Split};
use crate::error::Result;

/// torchvision's `IMG_EXTENSIONS`, compared without regard to case.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp"];

/// Lists one split: torchvision's `ImageFolder` on `train/` or `val/`. `val/` must have
/// the classes of `train/` (when there is one), or its labels would mean other classes.
/// Errors name the folder: no class folder, a class folder holding no image, `val/` classes
/// that differ from `train/`'s.
pub fn open(dir: &Path, split: Split) -> Result<Dataset> {
    let split_dir = dir.join(match split {
        Split::Train => "train",
        Split::Test => "val",
    });
    let train_dir = dir.join("train");
    if split == Split::Test && train_dir.is_dir() && split_dir.is_dir() {
        let (train, val) = (class_folders(&train_dir)?, class_folders(&split_dir)?);
        if train != val {
            let missing: Vec<&String> = train.iter().filter(|c| !val.contains(c)).collect();
            let extra: Vec<&String> = val.iter().filter(|c| !train.contains(c)).collect();
            let mut differences = Vec::new();
            if !missing.is_empty() {
                differences.push(format!("missing here: {missing:?}"));
            }
            if !extra.is_empty() {
                differences.push(format!("not in train: {extra:?}"));
            }
            return Err(data_error(
                &split_dir,
                format!(
                    "its classes differ from {}'s ({}): its labels would mean other classes",
                    train_dir.display(),
                    differences.join("; ")
                ),
            ));
        }
    }
    if !split_dir.is_dir() {
        let test = dir.join("test");
        let hint = if split == Split::Test && test.is_dir() {
            format!("; {} exists: torchvision's layout names it val/", test.display())
        } else {
            String::new()
        };
        return Err(data_error(
            &split_dir,
            format!("no such folder: an image-folder data set has train/ and val/, one sub-folder per class in each{hint}"),
        ));
    }
    image_folder(&split_dir)
}

/// torchvision's `ImageFolder(root)`: the classes are `root`'s sub-folders (sorted, hidden
/// ones skipped), the samples every image under each. Errors name the folder: no class
/// folder, or a class folder holding no image.
pub fn image_folder(root: &Path) -> Result<Dataset> {
    let classes = class_folders(root)?;
    if classes.is_empty() {
        return Err(data_error(
            root,
            "no class folders: expected one sub-folder per class".into(),
        ));
    }
    labelled_images(root, classes)
}

/// The images under `root/CLASS` for each of `classes`, labelled by the class's index.
fn labelled_images(root: &Path, classes: Vec<String>) -> Result<Dataset> {
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = root.join(class);
        let images = images_under(&class_dir)?;
        if images.is_empty() {
            return Err(data_error(
                &class_dir,
                format!(
                    "a class folder without any image ({} files)",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            ));
        }
        labels.extend(std::iter::repeat_n(label as u32, images.len()));
        files.extend(images);
    }
    Ok(Dataset {
        samples: Samples::Files(files),
        labels,
        classes,
    })
}

/// True for a folder laid out as an ImageFolder: sub-folders (not hidden) and no image of its
/// own beside them.
pub fn is_image_folder(dir: &Path) -> bool {
    let Ok(entries) = read_dir(dir) else {
        return false;
    };
    let visible: Vec<&PathBuf> = entries.iter().filter(|p| !is_hidden(p)).collect();
    visible.iter().any(|p| p.is_dir()) && !visible.iter().any(|p| p.is_file() && has_image_extension(p))
}

/// The class names of a split's folder: its sub-folders (links to folders too), sorted,
/// hidden ones skipped.
fn class_folders(dir: &Path) -> Result<Vec<String>> {
    let mut classes: Vec<String> = read_dir(dir)?
        .into_iter()
        .filter(|p| p.is_dir() && !is_hidden(p))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    classes.sort();
    Ok(classes)
}

/// Every image file under `dir`, at any depth, in torchvision's order: folders sorted by their
/// whole path (as `sorted(os.walk(dir, followlinks=True))` sorts them), the files in each sorted
/// by name. Hidden files and folders are skipped; a link back to a folder already walked is
/// not followed twice.
pub fn images_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut folders = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(folder) = todo.pop() {
        let real = std::fs::canonicalize(&folder).map_err(|e| data_error(&folder, e.to_string()))?;
        if !seen.insert(real) {
            continue;
        }
        let mut files = Vec::new();
        for entry in read_dir(&folder)? {
            if is_hidden(&entry) {
                continue;
            }
            if entry.is_dir() {
                todo.push(entry);
            } else if has_image_extension(&entry) && entry.is_file() {
                files.push(entry);
            }
        }
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        folders.push((folder, files));
    }
    folders.sort_by(|(a, _), (b, _)| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    Ok(folders.into_iter().flat_map(|(_, files)| files).collect())
}

/// True for a name with one of torchvision's image extensions, in any case.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(OsStr::to_str)
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| data_error(dir, e.to_string()))?;
    Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
}
