//! The training loop: epochs of SGD over a data set, a metrics line and two checkpoints per
//! epoch, exact resume, and a clean stop on Ctrl-C or a non-finite loss.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{curves_svg, evaluate, seeded_varmap, top_k_hits, EpochMetrics, Optimizer, Schedule};
use crate::checkpoint::{
    is_temporary, state_dict, varmap_tensors, write_atomic, write_safetensors, Checkpoint, Metadata,
};
use crate::data::{self, Dataset, Loader, Split, Transform};
use crate::error::{Error, Result};
use crate::model::DenseNet;
use crate::spec::{Recipe, VariantSpec};

/// Everything a run is configured by; saved in its checkpoints, so `--resume` needs no flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The variant, with the number of classes and input size it is trained with.
    pub spec: VariantSpec,
    /// Data set folder (IDX, CIFAR batches or ImageFolder).
    pub data: PathBuf,
    /// Epochs, batch size, optimiser, schedule and augmentation.
    pub recipe: Recipe,
    /// Epochs of linear warmup.
    pub warmup_epochs: usize,
    /// Square input side the images are resized to.
    pub image_size: usize,
    /// Seed for the initial weights, the shuffling and the augmentation.
    pub seed: u64,
    /// Recompute each dense layer's first batch norm and ReLU in the backward pass instead of
    /// storing them ([`DenseNet::with_memory_efficient`]): less memory, same numbers.
    #[serde(default)]
    pub memory_efficient: bool,
}

/// Where a run's weights start from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Start {
    /// Continue from `OUT/last.safetensors` exactly.
    pub resume: bool,
    /// A checkpoint to fine-tune from (path or `hf:`), adapted to the spec (new classifier,
    /// input channels); `None` with `resume` false: new weights from the seed.
    pub weights: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every epoch ran.
    Finished,
    /// Ctrl-C: the state was saved to `last.safetensors`, and `--resume` goes on from there.
    Interrupted,
}

/// A run's progress, saved in `last.safetensors` with the model and optimiser.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    /// Epochs completed.
    epoch: usize,
    /// Batches completed of the next epoch (a Ctrl-C stop).
    batch: usize,
    /// Sums over those batches: loss × samples, correct, samples, seconds.
    partial: (f64, usize, usize, f64),
    /// Optimiser steps so far (also every batch norm's `num_batches_tracked`).
    steps: u64,
    /// Best test accuracy so far.
    best_test_acc: f64,
    /// Wall seconds of the run before this session.
    wall_s: f64,
    /// One entry per completed epoch.
    metrics: Vec<EpochMetrics>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The checkpoint `--resume` reads, in `out`.
pub fn last_checkpoint(out: &Path) -> PathBuf {
    out.join("last.safetensors")
}

/// Reads the configuration saved in `out`'s last checkpoint.
pub fn saved_config(out: &Path) -> Result<TrainConfig> {
    let ckpt = Checkpoint::read(&last_checkpoint(out), &Device::Cpu)?;
    let training = ckpt.metadata.and_then(|m| m.training).ok_or_else(|| {
        Error::Training(format!(
            "{} holds no training state",
            last_checkpoint(out).display()
        ))
    })?;
    serde_json::from_value(training["config"].clone())
        .map_err(|e| Error::Training(format!("{}: bad config: {e}", last_checkpoint(out).display())))
}

/// Trains as `config` says, writing `metrics.jsonl`, `last.safetensors`, `best.safetensors`
/// and `curves.svg` into `out`, from new weights, a checkpoint to fine-tune, or (resuming)
/// exactly where `out/last.safetensors` stopped.
pub fn train(config: &TrainConfig, out: &Path, start: &Start, device: &Device) -> Result<Outcome> {
    let resume = start.resume;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    remove_temporary_files(out);
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    INTERRUPTED.store(false, Ordering::SeqCst);

    config.recipe.validate().map_err(Error::Training)?;
    let spec = &config.spec;
    spec.check_input_size(config.image_size)
        .map_err(|message| Error::Spec {
            origin: spec.name.clone(),
            message,
        })?;
    let train_set = Arc::new(data::open(&config.data, Split::Train)?);
    let test_set = Arc::new(data::open(&config.data, Split::Test)?);
    check_classes(&train_set, spec, &config.data)?;
    let classes = train_set.classes.clone();
    let transform = |augment: bool| Transform {
        size: config.image_size,
        resize: config.image_size,
        channels: spec.in_channels,
        mean: spec.preprocess.mean.clone(),
        std: spec.preprocess.std.clone(),
        augment,
        pad: 4,
    };

    let (varmap, optimizer_state, mut progress) = if resume {
        let ckpt = Checkpoint::read(&last_checkpoint(out), device)?;
        let training = ckpt.metadata.as_ref().and_then(|m| m.training.clone());
        let progress = training
            .and_then(|t| serde_json::from_value::<Progress>(t["progress"].clone()).ok())
            .ok_or_else(|| Error::Training(format!("{} holds no training progress", ckpt.origin)))?;
        let state = ckpt.optimizer.clone();
        let varmap = VarMap::new();
        ckpt.into_varmap(spec, &varmap, device)?;
        let at_batch = if progress.batch > 0 {
            format!(", batch {}", progress.batch)
        } else {
            String::new()
        };
        // A kill between the metrics line and the checkpoint of an epoch would leave a line the
        // checkpoint does not know: the checkpoint is the truth.
        let lines: String = progress
            .metrics
            .iter()
            .map(|m| serde_json::to_string(m).expect("metrics serialise") + "\n")
            .collect();
        write_atomic(&out.join("metrics.jsonl"), lines.as_bytes())?;
        eprintln!(
            "resuming from {} after epoch {}{at_batch}",
            last_checkpoint(out).display(),
            progress.epoch
        );
        (varmap, state, progress)
    } else {
        let varmap = match &start.weights {
            Some(weights) => {
                let mut ckpt = Checkpoint::open(weights, device)?;
                for notice in ckpt.adapt(spec, true)? {
                    eprintln!("note: {notice}");
                }
                let varmap = VarMap::new();
                ckpt.into_varmap(spec, &varmap, device)?;
                varmap
            }
            None => seeded_varmap(spec, config.seed, device)?,
        };
        let _ = std::fs::remove_file(out.join("metrics.jsonl"));
        (varmap, Default::default(), Progress::default())
    };
    let r = &config.recipe;
    let mut optimizer = Optimizer::new(r.optimizer, &varmap, r.momentum, r.nesterov, r.weight_decay);
    optimizer.load_state(&optimizer_state, progress.steps);
    let model = DenseNet::new(
        spec,
        candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, device),
    )?
    .with_memory_efficient(config.memory_efficient);
    let schedule = Schedule {
        kind: r.schedule,
        base_lr: r.lr,
        epochs: r.epochs,
        warmup_epochs: config.warmup_epochs,
        milestones: r.milestones.clone(),
    };
    let batches_per_epoch = train_set.len().div_ceil(r.batch_size);
    let started = Instant::now();
    // Seconds of the run before this session (a resume), plus this session's.
    let wall_before = progress.wall_s;
    let wall = || wall_before + started.elapsed().as_secs_f64();

    while progress.epoch < r.epochs {
        let epoch = progress.epoch;
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(
            config.seed ^ (epoch as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F),
        ));
        let epoch_seed = config
            .seed
            .wrapping_add(epoch as u64)
            .wrapping_mul(0xE703_7ED1_A0B4_28DB);
        let bar = progress_bar(batches_per_epoch as u64, epoch + 1, r.epochs);
        bar.set_position(progress.batch as u64);
        let (mut loss_sum, mut correct, mut seen, mut train_s) = progress.partial;
        let loader = Loader::new(
            train_set.clone(),
            order,
            r.batch_size,
            transform(r.augment),
            epoch_seed,
            progress.batch,
        );
        let mut lr = schedule.lr(epoch as f64);
        for batch in loader {
            let batch = batch?;
            let step_start = Instant::now();
            let n = batch.labels.len();
            let s = config.image_size;
            let x = Tensor::from_vec(batch.images, (n, spec.in_channels, s, s), device)?;
            let y = Tensor::from_vec(batch.labels.clone(), n, device)?;
            lr = schedule.lr(epoch as f64 + progress.batch as f64 / batches_per_epoch as f64);
            let logits = model.forward_t(&x, true)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let loss_value = loss.to_scalar::<f32>()? as f64;
            if !loss_value.is_finite() {
                bar.abandon();
                return Err(Error::Training(format!(
                    "the loss is {loss_value} at epoch {}, batch {}: stopped; the last good checkpoint is {} \
                     (try a lower --lr)",
                    epoch + 1,
                    progress.batch + 1,
                    last_checkpoint(out).display()
                )));
            }
            let grads = loss.backward()?;
            optimizer.step(&grads, lr)?;
            progress.steps += 1;
            loss_sum += loss_value * n as f64;
            correct += top_k_hits(&logits.detach(), &batch.labels)?.0;
            seen += n;
            train_s += step_start.elapsed().as_secs_f64();
            progress.batch += 1;
            bar.set_message(format!(
                "loss {:.3}, {:.0} ex/s",
                loss_sum / seen as f64,
                seen as f64 / train_s
            ));
            bar.inc(1);
            if INTERRUPTED.load(Ordering::SeqCst) && progress.batch < batches_per_epoch {
                bar.abandon();
                progress.partial = (loss_sum, correct, seen, train_s);
                progress.wall_s = wall();
                save_model(
                    &last_checkpoint(out),
                    config,
                    &classes,
                    &varmap,
                    &progress,
                    Some(&optimizer),
                )?;
                eprintln!(
                    "interrupted: saved {} at epoch {}, batch {}; --resume continues from there",
                    last_checkpoint(out).display(),
                    epoch + 1,
                    progress.batch
                );
                return Ok(Outcome::Interrupted);
            }
        }
        bar.finish_and_clear();
        // On detached weights: evaluation records no graph.
        let eval_model = DenseNet::new(
            spec,
            candle_nn::VarBuilder::from_tensors(varmap_tensors(&varmap), candle_core::DType::F32, device),
        )?;
        let test = evaluate(
            &eval_model,
            test_set.clone(),
            &transform(false),
            r.batch_size,
            device,
        )?;
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_acc: test.top1,
            examples_per_s: seen as f64 / train_s.max(1e-9),
            wall_s: wall(),
            lr,
        };
        println!("{}", metrics.line());
        append_line(
            &out.join("metrics.jsonl"),
            &serde_json::to_string(&metrics).expect("metrics serialise"),
        )?;
        progress.epoch += 1;
        progress.batch = 0;
        progress.partial = Default::default();
        progress.wall_s = metrics.wall_s;
        progress.metrics.push(metrics.clone());
        if metrics.test_acc > progress.best_test_acc || progress.epoch == 1 {
            progress.best_test_acc = progress.best_test_acc.max(metrics.test_acc);
            save_model(
                &out.join("best.safetensors"),
                config,
                &classes,
                &varmap,
                &progress,
                None,
            )?;
        }
        save_model(
            &last_checkpoint(out),
            config,
            &classes,
            &varmap,
            &progress,
            Some(&optimizer),
        )?;
        write_atomic(&out.join("curves.svg"), curves_svg(&progress.metrics).as_bytes())?;
    }
    Ok(Outcome::Finished)
}

/// Removes the temporary files of checkpoint writes that a killed run left in `out`.
fn remove_temporary_files(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(is_temporary) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The data must have exactly one class per classifier output: fewer would train outputs that
/// no image teaches and label them with names the data does not have.
fn check_classes(dataset: &Dataset, spec: &VariantSpec, dir: &Path) -> Result<()> {
    let max_label = dataset.labels.iter().copied().max().unwrap_or(0) as usize;
    if dataset.classes.len() != spec.num_classes || max_label >= spec.num_classes {
        return Err(Error::Training(format!(
            "{} has {} classes but {} has {} outputs: pass --num-classes {}",
            dir.display(),
            dataset.classes.len(),
            spec.name,
            spec.num_classes,
            dataset.classes.len()
        )));
    }
    Ok(())
}

fn progress_bar(len: u64, epoch: usize, epochs: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "epoch {epoch}/{epochs} [{{bar:30}}] {{pos}}/{{len}} {{msg}} eta {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Writes the model (and the optimiser's state, for `last`) with metadata that makes the file
/// usable alone: spec, classes, preprocessing, and the training facts.
fn save_model(
    path: &Path,
    config: &TrainConfig,
    classes: &[String],
    varmap: &VarMap,
    p: &Progress,
    optimizer: Option<&Optimizer>,
) -> Result<()> {
    let spec = &config.spec;
    let mut tensors = state_dict(spec, &varmap_tensors(varmap))?;
    for (name, t) in tensors.iter_mut() {
        if name.ends_with("num_batches_tracked") {
            *t = Tensor::new(p.steps as i64, &Device::Cpu)?;
        }
    }
    if let Some(o) = optimizer {
        tensors.extend(o.state());
    }
    let mut metadata = Metadata::for_spec(spec);
    metadata.classes = classes.to_vec();
    let last = p.metrics.last();
    metadata.training = Some(serde_json::json!({
        "epoch": p.epoch,
        "test_acc": last.map(|m| m.test_acc),
        "best_test_acc": p.best_test_acc,
        "data": config.data,
        "config": config,
        "progress": p,
    }));
    write_safetensors(path, &tensors, Some(&metadata))
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    writeln!(f, "{line}").map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
