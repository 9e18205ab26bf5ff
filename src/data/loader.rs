//! Worker threads that decode and augment samples ahead of the compute, and the batches they
//! make, in order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};

use super::augment::sample_rng;
use super::{data_error, shard, Dataset, Samples, Shard, Transform};
use crate::error::{Error, Result};

/// A sample, or the file it came from and why it could not be used.
type SampleResult = std::result::Result<Vec<f32>, (PathBuf, String)>;

/// Batches prepared ahead of the one being consumed: bounded, so memory stays bounded.
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
    /// The part of each batch this loader makes (data-parallel training); the default, whole
    /// batches.
    pub shard: Shard,
}

impl Default for LoaderOptions {
    /// Seed 0, from the first batch, one worker per core, errors end the epoch.
    fn default() -> Self {
        Self {
            epoch_seed: 0,
            first_batch: 0,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            skip_bad_images: false,
            shard: Shard::default(),
        }
    }
}

/// Iterates over batches of `dataset` in `order`, in order, from samples that a pool of worker
/// threads makes a bounded number ahead (at most three batches and one sample per worker past
/// the batch being consumed). Every random draw of a sample comes from its position in the
/// epoch ([`sample_rng`]), so the batches do not depend on the number of workers, and a batch
/// size changes only how samples are grouped. Dropping the loader stops the workers.
pub struct Loader {
    shared: Arc<Shared>,
    results: Receiver<(usize, SampleResult)>,
    /// Samples received ahead of the batch being assembled, by job.
    ready: HashMap<usize, SampleResult>,
    /// Each job's sample: its index in `dataset` and its position in the epoch's order.
    jobs: Arc<Vec<Job>>,
    /// Where each batch's jobs end, from the first batch made.
    batch_ends: Vec<usize>,
    dataset: Arc<Dataset>,
    transform: Arc<Transform>,
    skip_bad_images: bool,
    /// The next batch, an index into `batch_ends`.
    next_batch: usize,
    /// Set after an error: the iteration is over.
    failed: bool,
}

/// One sample to make.
#[derive(Debug, Clone, Copy)]
struct Job {
    /// Its index in the data set.
    index: usize,
    /// Its position in the epoch's order, which seeds its random draws.
    position: usize,
}

/// What the workers and the consumer share: the next job to hand out, the jobs consumed, and
/// whether to stop; workers wait on `wake` while they are as far ahead as allowed.
struct Shared {
    state: Mutex<Progress>,
    wake: Condvar,
    /// How many jobs past the consumed ones a worker may start.
    ahead: usize,
}

struct Progress {
    next_job: usize,
    consumed: usize,
    stop: bool,
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

    /// Starts `options.workers` threads on batches of `batch_size` samples taken from `order`
    /// (positions in `dataset`), from batch `options.first_batch` on, of each batch the rows of
    /// `options.shard`.
    pub fn start(
        dataset: Arc<Dataset>,
        order: Vec<usize>,
        batch_size: usize,
        transform: Transform,
        options: LoaderOptions,
    ) -> Self {
        let batch_size = batch_size.max(1);
        let workers = options.workers.max(1);
        let Shard { rank, world_size } = options.shard;
        let (mut jobs, mut batch_ends) = (Vec::new(), Vec::new());
        let first = (options.first_batch * batch_size).min(order.len());
        for start in (first..order.len()).step_by(batch_size) {
            let rows = shard(batch_size.min(order.len() - start), rank, world_size);
            jobs.extend((start + rows.start..start + rows.end).map(|position| Job {
                index: order[position],
                position,
            }));
            batch_ends.push(jobs.len());
        }
        let jobs = Arc::new(jobs);
        let shared = Arc::new(Shared {
            state: Mutex::new(Progress {
                next_job: 0,
                consumed: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            ahead: PREFETCH * batch_size + workers,
        });
        let transform = Arc::new(transform);
        let (sender, results) = channel();
        // One thread per worker, no more than there are samples; should the system refuse a
        // thread, those started do the work.
        for started in 0..workers.min(jobs.len().max(1)) {
            let (shared, jobs, dataset, transform, sender) = (
                shared.clone(),
                jobs.clone(),
                dataset.clone(),
                transform.clone(),
                sender.clone(),
            );
            let worker = std::thread::Builder::new()
                .name("data worker".into())
                .spawn(move || {
                    while let Some(job) = shared.next_job(jobs.len()) {
                        let Job { index, position } = jobs[job];
                        let mut rng = sample_rng(options.epoch_seed, position);
                        let result = sample(&dataset, index, &transform, &mut rng);
                        if sender.send((job, result)).is_err() {
                            return;
                        }
                    }
                });
            if worker.is_err() && started > 0 {
                break;
            }
        }
        Self {
            shared,
            results,
            ready: HashMap::new(),
            jobs,
            batch_ends,
            dataset,
            transform,
            skip_bad_images: options.skip_bad_images,
            next_batch: 0,
            failed: false,
        }
    }
}

impl Shared {
    /// The next job for a worker, once it is within reach of the consumer; `None` when every
    /// job is handed out or the loader is gone.
    fn next_job(&self, total: usize) -> Option<usize> {
        let mut state = self.state.lock().expect("loader lock");
        loop {
            if state.stop || state.next_job >= total {
                return None;
            }
            if state.next_job < state.consumed + self.ahead {
                state.next_job += 1;
                return Some(state.next_job - 1);
            }
            state = self.wake.wait(state).expect("loader lock");
        }
    }

    fn set(&self, change: impl FnOnce(&mut Progress)) {
        change(&mut self.state.lock().expect("loader lock"));
        self.wake.notify_all();
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next_batch >= self.batch_ends.len() {
            return None;
        }
        let start = self.next_batch.checked_sub(1).map_or(0, |b| self.batch_ends[b]);
        let end = self.batch_ends[self.next_batch];
        while (start..end).any(|job| !self.ready.contains_key(&job)) {
            let Ok((job, result)) = self.results.recv() else {
                // Only a worker that panicked leaves a job without a result.
                self.failed = true;
                return Some(Err(Error::Training(
                    "a data worker stopped before its samples were made".into(),
                )));
            };
            self.ready.insert(job, result);
        }
        let samples = (start..end).map(|job| self.ready.remove(&job).expect("received"));
        let batch = collect_batch(
            &self.dataset,
            &self.jobs[start..end],
            samples,
            &self.transform,
            self.skip_bad_images,
        );
        self.next_batch += 1;
        self.failed = batch.is_err();
        let failed = self.failed;
        self.shared.set(|p| {
            p.consumed = end;
            p.stop |= failed;
        });
        Some(batch)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shared.set(|p| p.stop = true);
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
            .map_err(|e| (PathBuf::from(format!("sample {i}")), e.to_string()))?;
        }
        Samples::Files(files) => {
            let path = &files[i];
            let image = crate::image_io::open_image(path).map_err(|m| (path.clone(), m))?;
            t.image_sample(&image, rng, &mut out)
                .map_err(|e| (path.clone(), e.to_string()))?;
        }
    }
    Ok(out)
}

/// The next `chunk.len()` samples as a batch: the first failure ends it with the file's error,
/// or with `skip_bad`, the failures are left out and listed.
fn collect_batch(
    dataset: &Dataset,
    chunk: &[Job],
    samples: impl Iterator<Item = SampleResult>,
    t: &Transform,
    skip_bad: bool,
) -> Result<Batch> {
    let mut batch = Batch {
        images: Vec::with_capacity(chunk.len() * t.channels * t.size * t.size),
        labels: Vec::with_capacity(chunk.len()),
        skipped: Vec::new(),
    };
    for (job, sample) in chunk.iter().zip(samples) {
        match sample {
            Ok(pixels) => {
                batch.images.extend(pixels);
                batch.labels.push(dataset.labels[job.index]);
            }
            Err((path, message)) if skip_bad => batch.skipped.push((path, message)),
            Err((path, message)) => return Err(data_error(&path, message)),
        }
    }
    Ok(batch)
}
