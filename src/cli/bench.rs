//! `densenet-zoo bench`: examples per second, GFLOP/s and peak memory of inference or a
//! training step, like timm's `benchmark.py`.

use std::time::Instant;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use densenet_zoo::checkpoint::varmap_tensors;
use densenet_zoo::device::parse_device;
use densenet_zoo::summary::summarize;
use densenet_zoo::train::{seeded_varmap, Optimizer, OptimizerKind};
use densenet_zoo::{DenseNet, VariantSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Eval-mode forward passes, no autograd graph.
    Infer,
    /// Forward, backward and an SGD step (momentum 0.9, weight decay 1e-4).
    Train,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Variant name or JSON spec.
    #[arg(long, default_value = "121")]
    variant: String,
    /// What to time.
    #[arg(long, value_enum, default_value = "infer")]
    mode: Mode,
    /// Images per iteration.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Square input side [default: the variant's].
    #[arg(long)]
    size: Option<usize>,
    /// Timed iterations.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Train in the memory-efficient mode (BN-ReLU recomputed in the backward pass).
    #[arg(long)]
    memory_efficient: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The process's peak resident set in MiB (Linux `VmHWM`), or 0 where unknown.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let spec = VariantSpec::resolve(&args.variant)?;
    let size = args.size.unwrap_or(spec.input_size);
    let macs = summarize(&spec, size)?.macs as f64;
    let varmap = seeded_varmap(&spec, 0, &device)?;
    let x = Tensor::randn(0f32, 1.0, (args.batch, spec.in_channels, size, size), &device)?;
    let labels: Vec<u32> = (0..args.batch).map(|i| (i % spec.num_classes) as u32).collect();
    let y = Tensor::from_vec(labels, args.batch, &device)?;
    let mut times = Vec::with_capacity(args.iters);
    match args.mode {
        Mode::Infer => {
            // Plain tensors: inference records no graph.
            let model = DenseNet::new(
                &spec,
                VarBuilder::from_tensors(varmap_tensors(&varmap), DType::F32, &device),
            )?;
            drop(varmap);
            for i in 0..args.warmup + args.iters {
                let t = Instant::now();
                model.forward_t(&x, false)?.to_device(&candle_core::Device::Cpu)?;
                if i >= args.warmup {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
        Mode::Train => {
            let model = DenseNet::new(&spec, VarBuilder::from_varmap(&varmap, DType::F32, &device))?
                .with_memory_efficient(args.memory_efficient);
            let mut opt = Optimizer::new(OptimizerKind::Sgd, &varmap, 0.9, true, 1e-4);
            for i in 0..args.warmup + args.iters {
                let t = Instant::now();
                let loss = candle_nn::loss::cross_entropy(&model.forward_t(&x, true)?, &y)?;
                opt.step(&loss.backward()?, 0.01)?;
                loss.to_scalar::<f32>()?;
                if i >= args.warmup {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let per_s = |t: f64| args.batch as f64 / t;
    // A training step costs about three forward passes (forward, input and weight gradients).
    let flops = 2.0 * macs * args.batch as f64 * if args.mode == Mode::Train { 3.0 } else { 1.0 };
    let report = serde_json::json!({
        "variant": spec.name,
        "mode": if args.mode == Mode::Train { "train" } else { "infer" },
        "batch": args.batch,
        "size": size,
        "iters": args.iters,
        "memory_efficient": args.memory_efficient,
        "examples_per_s": per_s(median),
        "examples_per_s_min": per_s(*times.last().expect("iters > 0")),
        "examples_per_s_max": per_s(times[0]),
        "gflops": flops / median / 1e9,
        "peak_rss_mib": peak_rss_mib(),
        "device": format!("{device:?}"),
    });
    if args.json {
        out!("{report}")?;
    } else {
        out!(
            "{} {}{} batch {} at {size}: {:.2} examples/s (min {:.2}, max {:.2}), {:.1} GFLOP/s, peak RSS {:.0} MiB",
            spec.name,
            report["mode"].as_str().unwrap_or(""),
            if args.memory_efficient { " (memory-efficient)" } else { "" },
            args.batch,
            report["examples_per_s"].as_f64().unwrap_or(0.0),
            report["examples_per_s_min"].as_f64().unwrap_or(0.0),
            report["examples_per_s_max"].as_f64().unwrap_or(0.0),
            report["gflops"].as_f64().unwrap_or(0.0),
            report["peak_rss_mib"].as_f64().unwrap_or(0.0),
        )?;
    }
    Ok(())
}
