//! A data set split: samples, labels and class names.

use std::path::PathBuf;

/// Which half of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training images.
    Train,
    /// The held-out test (or validation) images.
    Test,
}

/// Where the pixels are.
#[derive(Debug, Clone)]
pub enum Samples {
    /// Decoded 8-bit images, each `channels × height × width`, planar, one after another.
    InMemory {
        /// All pixels.
        pixels: Vec<u8>,
        /// Channels per image (1 or 3).
        channels: usize,
        /// Image height.
        height: usize,
        /// Image width.
        width: usize,
    },
    /// Image files, decoded when loaded.
    Files(Vec<PathBuf>),
}

/// One split of a data set.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The pixels.
    pub samples: Samples,
    /// Class index per sample.
    pub labels: Vec<u32>,
    /// Class names, by index.
    pub classes: Vec<String>,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the split has no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}
