//! `densenet-zoo check-device`: the PyTorch fixtures on a device against the CPU and PyTorch.

use std::path::PathBuf;

use densenet_zoo::tools::device::parse_device;
use densenet_zoo::tools::device_check::{check_fixture, Comparison};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The device to check: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// The folder of fixtures (CASE.json + CASE.safetensors from make_fixtures.py).
    #[arg(long, default_value = "tests/fixtures")]
    fixtures: PathBuf,
    /// Fixtures to run.
    #[arg(long, num_args = 1.., default_values = ["tiny_bottleneck", "tiny_cifar", "tiny_plain", "d2l"])]
    cases: Vec<String>,
    /// Largest relative error accepted.
    #[arg(long, default_value_t = 1e-4, value_parser = super::positive, allow_negative_numbers = true)]
    tolerance: f64,
    /// Print every comparison as one JSON line.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let mut all: Vec<Comparison> = Vec::new();
    for case in &args.cases {
        let rows = check_fixture(&args.fixtures, case, &device)?;
        if args.json {
            for r in &rows {
                out!("{}", serde_json::to_string(r)?)?;
            }
        } else {
            let worst = |f: fn(&Comparison) -> f64| {
                rows.iter()
                    .max_by(|a, b| f(a).total_cmp(&f(b)))
                    .map(|r| format!("{:.2e} ({})", f(r), r.quantity))
                    .unwrap_or_default()
            };
            out!(
                "{case}: {} quantities on {device:?}; worst vs CPU {}; worst vs PyTorch {}",
                rows.len(),
                worst(|r| r.vs_cpu),
                worst(|r| r.vs_pytorch)
            )?;
        }
        all.extend(rows);
    }
    let failed: Vec<String> = all
        .iter()
        .filter(|r| !(r.vs_cpu <= args.tolerance && r.vs_pytorch <= args.tolerance))
        .map(|r| {
            format!(
                "{} {}: {:.2e} vs CPU, {:.2e} vs PyTorch",
                r.case, r.quantity, r.vs_cpu, r.vs_pytorch
            )
        })
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} quantities differ by more than {:e}:\n  {}",
            failed.len(),
            all.len(),
            args.tolerance,
            failed.join("\n  ")
        );
    }
    say!("all {} quantities within {:e}", all.len(), args.tolerance);
    Ok(())
}
