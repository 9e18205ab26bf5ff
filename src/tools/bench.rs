//! Timing a variant, as timm's `benchmark.py` does: examples per second, GFLOP/s and the
//! process's peak memory, for inference, a training step, or the training data pipeline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;

use crate::data::{Augment, Loader, LoaderOptions, Split, Transform};
use crate::error::{Error, Result};
use crate::model::DenseNet;
use crate::spec::VariantSpec;
use crate::tools::summary::summarize;
use crate::train::{seeded_varmap, Optimizer, OptimizerKind};

/// What to time.
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchMode {
    /// Eval-mode forward passes on plain tensors: no autograd graph.
    Infer,
    /// Forward, backward and an SGD step (Nesterov momentum 0.9, weight decay 1e-4).
    Train,
    /// The training split of a data set through the loader alone: decode, augment, batch.
    /// Its rate is the timed span's, not the median batch's.
    Data,
    /// Inference with a Grad-CAM map of each image's top-1 class at the last level: the
    /// forward pass and the head's backward.
    Gradcam,
}

/// One benchmark: `iters` timed iterations after `warmup` untimed ones, on random images
/// (`batch`, in_channels, `size`, `size`) and seeded weights.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// What to time.
    pub mode: BenchMode,
    /// Images per iteration.
    pub batch: usize,
    /// Square input side in pixels.
    pub size: usize,
    /// Timed iterations (at least 1).
    pub iters: usize,
    /// Untimed iterations first.
    pub warmup: usize,
    /// Train in the memory-efficient mode.
    pub memory_efficient: bool,
    /// Train with everything up to this `feature_info` level frozen ([`DenseNet::with_frozen`]:
    /// `features` for a head-only fine-tune).
    pub freeze: Option<String>,
    /// `Data` mode: the data set folder (as `train` takes it), its augmentation and workers.
    pub data: Option<DataBench>,
}

/// What the `Data` mode reads, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct DataBench {
    /// The data set folder; its training split is read.
    pub dir: PathBuf,
    /// The augmentation, as in training.
    pub augment: Augment,
    /// Loader workers (at least 1).
    pub workers: usize,
}

/// What a benchmark measured; the median iteration decides the rates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// The variant's name.
    pub variant: String,
    /// What was timed.
    pub mode: BenchMode,
    /// Images per iteration.
    pub batch: usize,
    /// Square input side in pixels.
    pub size: usize,
    /// Timed iterations.
    pub iters: usize,
    /// Whether training ran in the memory-efficient mode.
    pub memory_efficient: bool,
    /// The last frozen level of a fine-tune, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freeze: Option<String>,
    /// Images per second at the median iteration.
    pub examples_per_s: f64,
    /// At the slowest iteration.
    pub examples_per_s_min: f64,
    /// At the fastest iteration.
    pub examples_per_s_max: f64,
    /// Floating-point operations per second at the median, in units of 10⁹: two per
    /// multiply-add, three forward passes' worth for a training step.
    pub gflops: f64,
    /// The process's peak resident set in MiB (Linux `VmHWM`), 0 where unknown.
    pub peak_rss_mib: f64,
    /// The device, as candle names it.
    pub device: String,
}

/// Times `spec` as `config` says on `device`.
pub fn bench(spec: &VariantSpec, config: &BenchConfig, device: &Device) -> Result<BenchReport> {
    if config.iters == 0 || config.batch == 0 {
        return Err(Error::Spec {
            origin: spec.name.clone(),
            message: "a benchmark needs at least one iteration of at least one image".into(),
        });
    }
    if config.mode == BenchMode::Data {
        let data = config.data.as_ref().ok_or_else(|| Error::Spec {
            origin: spec.name.clone(),
            message: "the data benchmark needs a data set folder".into(),
        })?;
        let times = time_loader(spec, config, data)?;
        let mut report = report(spec, config, device, times.clone(), 0.0);
        // Batches finish in bursts as the workers' samples complete out of order: the rate is
        // that of the whole timed span, the slowest and fastest those of single batches.
        report.examples_per_s = (config.batch * times.len()) as f64 / times.iter().sum::<f64>();
        return Ok(report);
    }
    let mut sized = spec.clone();
    sized.set_input_size(config.size);
    sized.validate().map_err(|e| Error::Setting {
        field: "size".into(),
        value: config.size.to_string(),
        message: format!("is more than {} can take: {e}", spec.name),
    })?;
    let summary = summarize(spec, config.size)?;
    check_memory(spec, config, &summary)?;
    let macs = summary.macs as f64;
    let times = time_model(spec, config, device)?;
    Ok(report(spec, config, device, times, macs))
}

/// Seconds of each timed iteration of inference, a Grad-CAM or a training step.
fn time_model(spec: &VariantSpec, config: &BenchConfig, device: &Device) -> Result<Vec<f64>> {
    let varmap = seeded_varmap(spec, 0, device)?;
    let x = Tensor::randn(
        0f32,
        1.0,
        (
            config.batch,
            spec.architecture.in_channels,
            config.size,
            config.size,
        ),
        device,
    )?;
    let labels: Vec<u32> = (0..config.batch)
        .map(|i| (i % spec.architecture.num_classes) as u32)
        .collect();
    let y = Tensor::from_vec(labels, config.batch, device)?;
    let mut times = Vec::with_capacity(config.iters);
    let mut time = |i: usize, step: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let t = Instant::now();
        step()?;
        if i >= config.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
        Ok(())
    };
    if config.mode != BenchMode::Train {
        let model =
            DenseNet::new(spec, VarBuilder::from_varmap(&varmap, DType::F32, device))?.for_inference();
        let last = model.feature_info().len() - 1;
        for i in 0..config.warmup + config.iters {
            time(i, &mut || {
                if config.mode == BenchMode::Gradcam {
                    model
                        .grad_cam(&x, &crate::CamClass::Top1, last)?
                        .maps
                        .to_device(&Device::Cpu)?;
                } else {
                    model.forward_t(&x, false)?.to_device(&Device::Cpu)?;
                }
                Ok(())
            })?;
        }
    } else {
        let model = DenseNet::new(spec, VarBuilder::from_varmap(&varmap, DType::F32, device))?
            .with_frozen(config.freeze.as_deref())?
            .with_memory_efficient(config.memory_efficient);
        let mut opt = Optimizer::new(OptimizerKind::Sgd, &varmap, 0.9, true, 1e-4)
            .excluding(|name| model.is_frozen(name));
        for i in 0..config.warmup + config.iters {
            time(i, &mut || {
                let loss = candle_nn::loss::cross_entropy(&model.forward_t(&x, true)?, &y)?;
                model.run(|| opt.step(&loss.backward()?, 0.01))?;
                loss.to_scalar::<f32>()?;
                Ok(())
            })?;
        }
    }
    Ok(times)
}

/// The report of `times`, one per iteration, for a net of `macs` multiply-adds per image.
fn report(
    spec: &VariantSpec,
    config: &BenchConfig,
    device: &Device,
    mut times: Vec<f64>,
    macs: f64,
) -> BenchReport {
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let per_s = |t: f64| config.batch as f64 / t;
    let passes = if config.mode == BenchMode::Train { 3.0 } else { 1.0 };
    BenchReport {
        variant: spec.name.clone(),
        mode: config.mode,
        batch: config.batch,
        size: config.size,
        iters: config.iters,
        memory_efficient: config.memory_efficient,
        freeze: config.freeze.clone(),
        examples_per_s: per_s(median),
        examples_per_s_min: per_s(times[times.len() - 1]),
        examples_per_s_max: per_s(times[0]),
        gflops: 2.0 * macs * config.batch as f64 * passes / median / 1e9,
        peak_rss_mib: peak_rss_mib(),
        device: format!("{device:?}"),
    }
}

/// Seconds between consecutive batches of the loader on the training split of `data.dir`,
/// at the spec's preprocessing scaled to `config.size`, once `config.warmup` batches passed;
/// the split is read again from its start as often as the iterations need.
fn time_loader(spec: &VariantSpec, config: &BenchConfig, data: &DataBench) -> Result<Vec<f64>> {
    let dataset = Arc::new(crate::data::open(&data.dir, Split::Train)?);
    let mut spec = spec.clone();
    spec.set_input_size(config.size);
    let transform = Transform {
        resize: config.size,
        augment: data.augment,
        ..crate::infer::eval_transform(&spec)
    };
    let needed = (config.warmup + config.iters) * config.batch;
    let order: Vec<usize> = (0..needed).map(|i| i % dataset.len().max(1)).collect();
    let options = LoaderOptions {
        workers: data.workers.max(1),
        ..LoaderOptions::default()
    };
    let mut times = Vec::with_capacity(config.iters);
    let mut last = Instant::now();
    for (i, batch) in Loader::start(dataset, order, config.batch, transform, options).enumerate() {
        batch?;
        let now = Instant::now();
        if i >= config.warmup {
            times.push((now - last).as_secs_f64());
        }
        last = now;
    }
    Ok(times)
}

/// The process's peak resident set in MiB (Linux `VmHWM`), or 0 where unknown.
/// Refuses a benchmark whose input and stage outputs alone, a lower bound of what it holds,
/// pass the machine's memory: an allocation that large would abort the process.
fn check_memory(
    spec: &VariantSpec,
    config: &BenchConfig,
    summary: &crate::tools::summary::Summary,
) -> Result<()> {
    let Some(total) = memory_bytes() else {
        return Ok(());
    };
    let per_image: u128 = (spec.architecture.in_channels * config.size * config.size) as u128
        + summary
            .stages
            .iter()
            .map(|s| s.output_shape.iter().map(|&d| d as u128).product::<u128>())
            .sum::<u128>();
    let needed = per_image * config.batch as u128 * 4;
    if needed > total as u128 {
        let gib = |b: u128| b as f64 / (1u128 << 30) as f64;
        return Err(Error::Setting {
            field: "batch".into(),
            value: format!("{} at {}×{}", config.batch, config.size, config.size),
            message: format!(
                "needs at least {:.1} GiB for its input and stage outputs alone, more than this \
                 machine's {:.1} GiB: use a smaller batch or size",
                gib(needed),
                gib(total as u128)
            ),
        });
    }
    Ok(())
}

/// The machine's memory in bytes (Linux `MemTotal`), `None` where unknown.
fn memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = info.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    kb.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
