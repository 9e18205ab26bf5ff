//! `densenet-zoo summary`: shapes, parameters and multiply-adds per stage.

use densenet_zoo::tools::summary::{grouped, summarize};
use densenet_zoo::Variant;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Variant name (d2l, 121, densenet169, bc-100-12, ...) or a path to a JSON spec.
    #[arg(long, default_value = "d2l")]
    variant: String,
    /// Square input side in pixels [default: the variant's].
    #[arg(long, value_parser = super::at_least_one, allow_negative_numbers = true)]
    input_size: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let spec = Variant::resolve_image(&args.variant)?;
    let summary = summarize(&spec, args.input_size.unwrap_or(spec.input_size()))?;
    if args.json {
        out!("{}", serde_json::to_string(&summary)?)?;
        return Ok(());
    }
    let pool = spec.architecture.transition_pool;
    out!(
        "{} at {}×{}×{} ({}){}",
        summary.variant,
        spec.architecture.in_channels,
        summary.input_size,
        summary.input_size,
        spec.description,
        if pool.is_avg() {
            String::new()
        } else {
            format!("; transitions {}-pool", pool.name())
        }
    )?;
    out!(
        "{:<14} {:>18} {:>14} {:>18}",
        "stage",
        "output",
        "params",
        "mult-adds"
    )?;
    for stage in &summary.stages {
        let shape = stage
            .output_shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("×");
        out!(
            "{:<14} {:>18} {:>14} {:>18}",
            stage.name,
            shape,
            grouped(stage.params),
            grouped(stage.macs)
        )?;
    }
    out!(
        "{:<14} {:>18} {:>14} {:>18}",
        "total",
        "",
        grouped(summary.params),
        grouped(summary.macs)
    )?;
    Ok(())
}
