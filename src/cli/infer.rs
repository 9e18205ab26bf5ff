//! `densenet-zoo infer IMAGES...`: top-k classes per image.

use std::path::PathBuf;

use densenet_zoo::device::parse_device;
use densenet_zoo::infer::{batch, eval_transform, load, preprocess_file, top_k};

use super::images::expand_inputs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image files or folders (PNG, JPEG, BMP, GIF, WebP, TIFF) [default: the shipped examples].
    images: Vec<PathBuf>,
    /// Variant name or JSON spec [default: the checkpoint's].
    #[arg(long)]
    variant: Option<String>,
    /// Checkpoint: a path or hf:OWNER/REPO[:FILE] [default: the variant's published weights, or
    /// the embedded Fashion-MNIST model].
    #[arg(long)]
    weights: Option<String>,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    topk: usize,
    /// One JSON object per line and image.
    #[arg(long)]
    json: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// The Fashion-MNIST test images shipped with the crate, for `infer` with no argument.
fn shipped_examples() -> Vec<PathBuf> {
    vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/examples")]
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let loaded = load(args.weights.as_deref(), args.variant.as_deref(), &device)?;
    for notice in &loaded.notices {
        say!("note: {notice}");
    }
    let spec = loaded.model.spec().clone();
    let transform = eval_transform(&spec);
    let inputs = if args.images.is_empty() {
        shipped_examples()
    } else {
        args.images.clone()
    };
    let (files, arg_failures) = expand_inputs(&inputs);
    let total = files.len() + arg_failures.len();
    let mut failed = arg_failures.len();
    for (path, error) in &arg_failures {
        report_error(path, error, args.json)?;
    }
    for chunk in files.chunks(args.batch_size.max(1)) {
        let prepared: Vec<Result<Vec<f32>, String>> = chunk
            .iter()
            .map(|path| preprocess_file(path, &transform))
            .collect();
        let images: Vec<Vec<f32>> = prepared.iter().filter_map(|p| p.as_ref().ok().cloned()).collect();
        let mut predictions = if images.is_empty() {
            Vec::new()
        } else {
            let logits = loaded
                .model
                .forward_t(&batch(&images, &transform, &device)?, false)?;
            top_k(&logits, &loaded.classes, args.topk)?
        }
        .into_iter();
        // One line per input, in the order given, failures in their place.
        for (path, pixels) in chunk.iter().zip(&prepared) {
            match pixels {
                Err(e) => {
                    failed += 1;
                    report_error(path, e, args.json)?;
                }
                Ok(_) => {
                    let top = predictions.next().expect("one prediction per prepared image");
                    if args.json {
                        out!("{}", json_line(path, &top))?;
                    } else {
                        let shown: Vec<String> =
                            top.iter().map(|p| format!("{} {:.3}", p.label, p.prob)).collect();
                        out!("{}: {}", path.display(), shown.join(", "))?;
                    }
                }
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {total} inputs could not be classified");
    }
    Ok(())
}
/// `{"path": "...", "top": [{"index": 3, "label": "Dress", "prob": 0.91}, ...]}`: the contracted
/// form, its keys in this order and spaced like it.
fn json_line(path: &std::path::Path, top: &[densenet_zoo::infer::Prediction]) -> String {
    let items: Vec<String> = top
        .iter()
        .map(|p| {
            let prob = serde_json::to_string(&p.prob).unwrap_or_else(|_| "null".into());
            format!(
                "{{\"index\": {}, \"label\": {}, \"prob\": {prob}}}",
                p.index,
                json_string(&p.label)
            )
        })
        .collect();
    let path = json_string(&path.display().to_string());
    format!("{{\"path\": {path}, \"top\": [{}]}}", items.join(", "))
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// An input that could not be classified: a JSON line on stdout with `--json`, else a line on
/// stderr.
fn report_error(path: &std::path::Path, error: &str, json: bool) -> anyhow::Result<()> {
    if json {
        let (path, error) = (json_string(&path.display().to_string()), json_string(error));
        out!("{{\"path\": {path}, \"error\": {error}}}")?;
    } else {
        say!("{}: {error}", path.display());
    }
    Ok(())
}
