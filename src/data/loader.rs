//! A background thread that decodes, augments and batches samples ahead of the compute.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::transforms::resize_planar;
use super::{data_error, Dataset, Samples, Transform};
use crate::error::Result;

/// Batches prepared ahead of the compute: bounded, so memory stays bounded.
const PREFETCH: usize = 3;

/// One batch: images (N, C, S, S) as floats and class indices (N).
#[derive(Debug, Clone)]
pub struct Batch {
    /// N·C·S·S normalised pixels, image after image, planar.
    pub images: Vec<f32>,
    /// N class indices.
    pub labels: Vec<u32>,
}

/// Iterates over batches of `dataset` in `order`, produced by a background thread.
/// Dropping it stops the worker: its next send fails and it returns.
pub struct Loader {
    receiver: Receiver<Result<Batch>>,
}

impl Loader {
    /// Starts the worker: batches of `batch_size` samples taken from `order`, from batch
    /// `first_batch` on. Batch k's augmentation draws from a generator seeded with `seed` and k,
    /// so any batch is reproducible on its own, and a run resumed mid-epoch sees the same data.
    pub fn new(
        dataset: Arc<Dataset>,
        order: Vec<usize>,
        batch_size: usize,
        transform: Transform,
        seed: u64,
        first_batch: usize,
    ) -> Self {
        let (sender, receiver) = sync_channel(PREFETCH);
        std::thread::spawn(move || {
            for (k, chunk) in order.chunks(batch_size.max(1)).enumerate().skip(first_batch) {
                let mut rng = StdRng::seed_from_u64(seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let batch = make_batch(&dataset, chunk, &transform, &mut rng);
                let stop = batch.is_err();
                if sender.send(batch).is_err() || stop {
                    return;
                }
            }
        });
        Self { receiver }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.receiver.recv().ok()
    }
}

fn make_batch(dataset: &Dataset, indices: &[usize], t: &Transform, rng: &mut StdRng) -> Result<Batch> {
    let mut images = Vec::with_capacity(indices.len() * t.channels * t.size * t.size);
    let mut labels = Vec::with_capacity(indices.len());
    for &i in indices {
        match &dataset.samples {
            Samples::InMemory {
                pixels,
                channels,
                height,
                width,
            } => {
                let n = channels * height * width;
                let sample = &pixels[i * n..(i + 1) * n];
                let sample = if (*height, *width) == (t.size, t.size) {
                    std::borrow::Cow::Borrowed(sample)
                } else {
                    std::borrow::Cow::Owned(resize_planar(sample, *channels, *height, *width, t.size))
                };
                let sample = convert_channels(&sample, *channels, t.channels, t.size * t.size);
                t.apply_planar(&sample, rng, &mut images);
            }
            Samples::Files(files) => {
                let path = &files[i];
                let image = crate::image_io::open_image(path).map_err(|m| data_error(path, m))?;
                let pixels = t.fit_image(&image).map_err(|m| data_error(path, m))?;
                t.apply_planar(&pixels, rng, &mut images);
            }
        }
        labels.push(dataset.labels[i]);
    }
    Ok(Batch { images, labels })
}

/// Planar pixels from `from` to `to` channels: gray repeated to RGB, or RGB averaged (ITU-R 601
/// luma) to gray.
fn convert_channels(pixels: &[u8], from: usize, to: usize, plane: usize) -> std::borrow::Cow<'_, [u8]> {
    match (from, to) {
        (a, b) if a == b => std::borrow::Cow::Borrowed(pixels),
        (1, 3) => std::borrow::Cow::Owned(pixels.repeat(3)),
        (3, 1) => std::borrow::Cow::Owned(
            (0..plane)
                .map(|i| {
                    let (r, g, b) = (
                        pixels[i] as f32,
                        pixels[plane + i] as f32,
                        pixels[2 * plane + i] as f32,
                    );
                    (0.299 * r + 0.587 * g + 0.114 * b).round() as u8
                })
                .collect(),
        ),
        _ => std::borrow::Cow::Borrowed(pixels),
    }
}
