//! `densenet-zoo bench`: examples per second, GFLOP/s and peak memory of inference, a
//! training step or the training data pipeline, like timm's `benchmark.py`.

use std::path::PathBuf;

use densenet_zoo::data::Augment;
use densenet_zoo::tools::bench::{bench, BenchConfig, BenchMode, DataBench};
use densenet_zoo::tools::device::parse_device;
use densenet_zoo::Variant;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Variant name or JSON spec.
    #[arg(long, default_value = "121")]
    variant: String,
    /// What to time.
    #[arg(long, value_enum, default_value = "infer")]
    mode: BenchMode,
    /// Images per iteration.
    #[arg(long, default_value_t = 1, value_parser = super::at_least_one, allow_negative_numbers = true)]
    batch: usize,
    /// Square input side [default: the variant's].
    #[arg(long, value_parser = super::at_least_one, allow_negative_numbers = true)]
    size: Option<usize>,
    /// Timed iterations.
    #[arg(long, default_value_t = 10, value_parser = super::at_least_one, allow_negative_numbers = true)]
    iters: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 2, value_parser = super::zero_or_more, allow_negative_numbers = true)]
    warmup: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Train in the memory-efficient mode (BN-ReLU recomputed in the backward pass).
    #[arg(long)]
    memory_efficient: bool,
    /// `--mode train`: freeze everything up to this level, as `train --freeze` (features: only
    /// the classifier trains).
    #[arg(long, value_name = "LEVEL")]
    freeze: Option<String>,
    /// `--mode data`: the data set folder, as `train --data` takes it; its training split is read.
    #[arg(long)]
    data: Option<PathBuf>,
    /// `--mode data`: loader workers; 0 or no flag: one per core.
    #[arg(long, value_parser = super::zero_or_more, allow_negative_numbers = true)]
    workers: Option<usize>,
    /// `--mode data`: the augmentation [default: the variant's recipe's].
    #[arg(long, value_enum)]
    augment: Option<Augment>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let spec = Variant::resolve_image(&args.variant)?;
    anyhow::ensure!(
        args.freeze.is_none() || args.mode == BenchMode::Train,
        "--freeze is for --mode train"
    );
    let config = BenchConfig {
        mode: args.mode,
        batch: args.batch,
        size: args.size.unwrap_or(spec.input_size()),
        iters: args.iters,
        warmup: args.warmup,
        memory_efficient: args.memory_efficient,
        freeze: args.freeze.clone(),
        data: match (args.mode, &args.data) {
            (BenchMode::Data, Some(dir)) => Some(DataBench {
                dir: dir.clone(),
                augment: args.augment.unwrap_or(spec.recipe.augment),
                workers: match args.workers {
                    Some(n) if n > 0 => n,
                    _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
                },
            }),
            (BenchMode::Data, None) => anyhow::bail!("--mode data needs --data DIR"),
            _ if args.data.is_some() || args.workers.is_some() || args.augment.is_some() => {
                anyhow::bail!("--data, --workers and --augment are for --mode data")
            }
            _ => None,
        },
    };
    let r = bench(&spec, &config, &device)?;
    if args.json {
        out!("{}", serde_json::to_string(&r)?)?;
    } else {
        out!(
            "{} {}{} batch {} at {}: {:.2} examples/s (min {:.2}, max {:.2}), {}peak RSS {:.0} MiB",
            r.variant,
            serde_json::to_value(r.mode)?.as_str().unwrap_or("?"),
            match (r.memory_efficient, &r.freeze) {
                (true, _) => " (memory-efficient)".to_string(),
                (false, Some(level)) => format!(" (frozen to {level})"),
                (false, None) => String::new(),
            },
            r.batch,
            r.size,
            r.examples_per_s,
            r.examples_per_s_min,
            r.examples_per_s_max,
            // The loader alone does no arithmetic worth counting.
            match r.mode {
                BenchMode::Data => String::new(),
                _ => format!("{:.1} GFLOP/s, ", r.gflops),
            },
            r.peak_rss_mib,
        )?;
    }
    Ok(())
}
