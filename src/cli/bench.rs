//! `densenet-zoo bench`: examples per second, GFLOP/s and peak memory of inference or a
//! training step, like timm's `benchmark.py`.

use densenet_zoo::bench::{bench, BenchConfig, BenchMode};
use densenet_zoo::device::parse_device;
use densenet_zoo::VariantSpec;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Variant name or JSON spec.
    #[arg(long, default_value = "121")]
    variant: String,
    /// What to time.
    #[arg(long, value_enum, default_value = "infer")]
    mode: BenchMode,
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

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let spec = VariantSpec::resolve(&args.variant)?;
    let config = BenchConfig {
        mode: args.mode,
        batch: args.batch,
        size: args.size.unwrap_or(spec.input_size()),
        iters: args.iters,
        warmup: args.warmup,
        memory_efficient: args.memory_efficient,
    };
    let r = bench(&spec, &config, &device)?;
    if args.json {
        out!("{}", serde_json::to_string(&r)?)?;
    } else {
        out!(
            "{} {}{} batch {} at {}: {:.2} examples/s (min {:.2}, max {:.2}), {:.1} GFLOP/s, peak RSS {:.0} MiB",
            r.variant,
            if r.mode == BenchMode::Train { "train" } else { "infer" },
            if r.memory_efficient { " (memory-efficient)" } else { "" },
            r.batch,
            r.size,
            r.examples_per_s,
            r.examples_per_s_min,
            r.examples_per_s_max,
            r.gflops,
            r.peak_rss_mib,
        )?;
    }
    Ok(())
}
