//! Workers that decode, augment and batch samples ahead of the compute.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use rayon::prelude::*;

use super::augment::sample_rng;
use super::{data_error, Dataset, Samples, Transform};
use crate::error::{Error, Result};

/// A sample, or the file it came from and why it could not be used.
type SampleResult = std::result::Result<Vec<f32>, (PathBuf, String)>;

/// Batches prepared ahead of the compute: bounded, so memory stays bounded.
const PREFETCH: usize = 3;

/// One batch: images (N, C, S, S) as floats and class indices (N).
#[derive(Debug, Clone)]
pub struct Batch {
    /// N·C·S·S normalised pixels, image after image, planar.
    pub images: Vec<f32>,
    /// N class indices.
    pub labels: Vec<u32>,
    /// Files left out of the batch with [`LoaderOptions::skip_bad_images`], each with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// How a [`Loader`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderOptions {
    /// The epoch's seed: sample i of the order draws from [`sample_rng`]`(epoch_seed, i)`.
    pub epoch_seed: u64,
    /// The batch to start from (a run resumed mid-epoch).
    pub first_batch: usize,
    /// Threads that decode and augment, each producing whole samples; at least 1.
    pub workers: usize,
    /// Leave out (and report in [`Batch::skipped`]) a file that cannot be decoded, instead of
    /// ending the epoch with its error.
    pub skip_bad_images: bool,
}

impl Default for LoaderOptions {
    /// Seed 0, from the first batch, one worker per core, errors end the epoch.
    fn default() -> Self {
        Self {
            epoch_seed: 0,
            first_batch: 0,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            skip_bad_images: false,
        }
    }
}

/// Iterates over batches of `dataset` in `order`, in order, produced by a pool of workers a
/// bounded number of batches ahead. Every random draw of a sample comes from its position in
/// the epoch ([`sample_rng`]), so the batches do not depend on the number of workers, and a
/// batch size changes only how samples are grouped. Dropping the loader stops the workers.
pub struct Loader {
    receiver: Receiver<Result<Batch>>,
}

impl Loader {
    /// [`Loader::start`] with `seed` as the epoch's seed, from batch `first_batch`, one worker
    /// per core.
    pub fn new(
        dataset: Arc<Dataset>,
        order: Vec<usize>,
        batch_size: usize,
        transform: Transform,
        seed: u64,
        first_batch: usize,
    ) -> Self {
        let options = LoaderOptions {
            epoch_seed: seed,
            first_batch,
            ..LoaderOptions::default()
        };
        Self::start(dataset, order, batch_size, transform, options)
    }

    /// Starts the workers on batches of `batch_size` samples taken from `order` (positions in
    /// `dataset`), from batch `options.first_batch` on. Several batches are prepared at once
    /// when one batch has fewer samples than twice the workers.
    pub fn start(
        dataset: Arc<Dataset>,
        order: Vec<usize>,
        batch_size: usize,
        transform: Transform,
        options: LoaderOptions,
    ) -> Self {
        let (sender, receiver) = sync_channel(PREFETCH);
        let batch_size = batch_size.max(1);
        let workers = options.workers.max(1);
        std::thread::spawn(move || {
            let pool = match rayon::ThreadPoolBuilder::new().num_threads(workers).build() {
                Ok(pool) => pool,
                Err(e) => {
                    let _ = sender.send(Err(Error::Training(format!("data workers: {e}"))));
                    return;
                }
            };
            let per_round = (2 * workers).div_ceil(batch_size).max(1);
            let batches: Vec<(usize, &[usize])> = order
                .chunks(batch_size)
                .enumerate()
                .skip(options.first_batch)
                .collect();
            for round in batches.chunks(per_round) {
                let jobs: Vec<(usize, usize)> = round
                    .iter()
                    .flat_map(|&(k, chunk)| {
                        chunk
                            .iter()
                            .enumerate()
                            .map(move |(j, &i)| (k * batch_size + j, i))
                    })
                    .collect();
                let samples: Vec<SampleResult> = pool.install(|| {
                    jobs.par_iter()
                        .map(|&(position, i)| {
                            let mut rng = sample_rng(options.epoch_seed, position);
                            sample(&dataset, i, &transform, &mut rng)
                        })
                        .collect()
                });
                let mut samples = samples.into_iter();
                for &(_, chunk) in round {
                    let batch =
                        collect_batch(&dataset, chunk, &mut samples, &transform, options.skip_bad_images);
                    let stop = batch.is_err();
                    if sender.send(batch).is_err() || stop {
                        return;
                    }
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

/// One sample of `dataset`, transformed; a file's error comes with its path.
fn sample(dataset: &Dataset, i: usize, t: &Transform, rng: &mut rand::rngs::StdRng) -> SampleResult {
    let mut out = Vec::with_capacity(t.channels * t.size * t.size);
    match &dataset.samples {
        Samples::InMemory {
            pixels,
            channels,
            height,
            width,
        } => {
            let n = channels * height * width;
            t.planar_sample(
                &pixels[i * n..(i + 1) * n],
                (*channels, *height, *width),
                rng,
                &mut out,
            )
            .map_err(|m| (PathBuf::from(format!("sample {i}")), m))?;
        }
        Samples::Files(files) => {
            let path = &files[i];
            let image = crate::image_io::open_image(path).map_err(|m| (path.clone(), m))?;
            t.image_sample(&image, rng, &mut out)
                .map_err(|m| (path.clone(), m))?;
        }
    }
    Ok(out)
}

/// The next `chunk.len()` samples as a batch: the first failure ends it with the file's error,
/// or with `skip_bad`, the failures are left out and listed.
fn collect_batch(
    dataset: &Dataset,
    chunk: &[usize],
    samples: &mut impl Iterator<Item = SampleResult>,
    t: &Transform,
    skip_bad: bool,
) -> Result<Batch> {
    let mut batch = Batch {
        images: Vec::with_capacity(chunk.len() * t.channels * t.size * t.size),
        labels: Vec::with_capacity(chunk.len()),
        skipped: Vec::new(),
    };
    for (&i, sample) in chunk.iter().zip(samples) {
        match sample {
            Ok(pixels) => {
                batch.images.extend(pixels);
                batch.labels.push(dataset.labels[i]);
            }
            Err((path, message)) if skip_bad => batch.skipped.push((path, message)),
            Err((path, message)) => return Err(data_error(&path, message)),
        }
    }
    Ok(batch)
}
