//! Data sets, the training augmentations, and the loader whose workers feed training and
//! evaluation.
//!
//! Three formats, detected from the folder's contents:
//! - IDX (MNIST, Fashion-MNIST), gzipped or not: `train-images-idx3-ubyte[.gz]`, ...;
//! - CIFAR-10 / CIFAR-100 binary batches: `data_batch_{1..5}.bin` + `test_batch.bin`, or
//!   `train.bin` + `test.bin`;
//! - an ImageFolder tree: `train/` and `val/`, one sub-folder per class, read as torchvision's
//!   `ImageFolder` reads it (images found at any depth, torchvision's extensions).

pub mod augment;
pub mod cifar;
mod dataset;
mod folder;
pub mod idx;
mod loader;
mod shard;
mod transforms;

pub use augment::Augment;
pub use dataset::{Dataset, Samples, Split};
pub use folder::{has_image_extension, image_folder, images_under, is_image_folder, IMAGE_EXTENSIONS};
pub use loader::{Batch, Loader, LoaderOptions};
pub use shard::{shard, Shard};
pub use transforms::{eval_transform, resized_crop, Transform};

use std::path::Path;

use crate::error::{Error, Result};

/// Where Debian's `dataset-fashion-mnist` package puts the official Fashion-MNIST files.
pub const DEFAULT_DATA: &str = "/usr/share/datasets/fashion-mnist";

/// Opens the `split` of the data set in `dir`, whatever its format. For the test split, `dir`
/// may also be one folder of class folders (`imagenet/val`), read as torchvision's
/// `ImageFolder(dir)`.
pub fn open(dir: &Path, split: Split) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(data_error(dir, "no such folder".into()));
    }
    if idx::looks_like(dir) {
        idx::open(dir, split)
    } else if cifar::looks_like(dir) {
        cifar::open(dir, split)
    } else if dir.join("train").is_dir() || dir.join("val").is_dir() {
        folder::open(dir, split)
    } else if split == Split::Test && folder::is_image_folder(dir) {
        // `eval --data imagenet/val`: the folder of classes itself, as `ImageFolder(root)`.
        folder::image_folder(dir)
    } else if folder::is_image_folder(dir) {
        Err(data_error(
            dir,
            "a folder of class folders, but training needs two splits: DIR/train/CLASS/... and \
             DIR/val/CLASS/... (as torchvision's ImageNet layout)"
                .into(),
        ))
    } else {
        Err(data_error(
            dir,
            "not a data set: expected IDX files (train-images-idx3-ubyte[.gz], ...), CIFAR binary batches \
             (data_batch_1.bin, ... or train.bin), or train/ and val/ class folders"
                .into(),
        ))
    }
}

pub(crate) fn data_error(path: &Path, message: String) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        message,
    }
}
