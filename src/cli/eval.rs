//! `densenet-zoo eval`: top-1, top-5 and loss of a checkpoint on a data set's test split.

use std::path::PathBuf;
use std::sync::Arc;

use densenet_zoo::checkpoint::Checkpoint;
use densenet_zoo::data::{self, Split, DEFAULT_DATA};
use densenet_zoo::infer::eval_transform;
use densenet_zoo::spec::labels;
use densenet_zoo::tools::device::parse_device;
use densenet_zoo::train::evaluate;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Checkpoint: a path or hf:OWNER/REPO[:FILE].
    #[arg(long)]
    weights: String,
    /// Data set folder (its test split, or val/ for class folders).
    #[arg(long, default_value = DEFAULT_DATA)]
    data: PathBuf,
    /// Variant name or JSON spec [default: the checkpoint's].
    #[arg(long)]
    variant: Option<String>,
    /// Images per batch.
    #[arg(long, default_value_t = 256, value_parser = super::at_least_one, allow_negative_numbers = true)]
    batch_size: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Leave out an image that cannot be decoded, with a note, instead of stopping.
    #[arg(long)]
    skip_bad_images: bool,
    #[command(flatten)]
    state_dict: super::weights::StateDictArgs,
    /// Class names, one per line (or JSON), for a checkpoint that records none [default: the
    /// checkpoint's]; their count must be the classifier's.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    // A tabular net is refused as such before the file is read.
    if let Some(v) = &args.variant {
        densenet_zoo::Variant::resolve_image(v)?;
    }
    let mut ckpt = Checkpoint::open_with(&args.weights, &device, &args.state_dict.key())?;
    let spec = ckpt.spec(args.variant.as_deref())?;
    for notice in &ckpt.notices {
        say!("note: {notice}");
    }
    let model_classes = match &args.labels {
        Some(file) => labels::fit(labels::read_file(file)?, spec.architecture.num_classes, file)?,
        None => ckpt.class_names(&spec),
    };
    let model = ckpt.into_model(&spec, &device)?;
    let test = Arc::new(data::open(&args.data, Split::Test)?);
    anyhow::ensure!(
        test.classes.len() == spec.architecture.num_classes,
        "{} has {} classes but {} has {} outputs: its labels cannot be scored against them",
        args.data.display(),
        test.classes.len(),
        args.weights,
        spec.architecture.num_classes
    );
    if test.classes != model_classes {
        let pairs: Vec<String> = test
            .classes
            .iter()
            .zip(&model_classes)
            .filter(|(a, b)| a != b)
            .take(3)
            .map(|(a, b)| format!("{a} → {b}"))
            .collect();
        say!(
            "note: the data's class names differ from the model's; classes are matched by sorted \
             position ({}, ...)",
            pairs.join(", ")
        );
    }
    let result = evaluate(
        &model,
        test,
        &eval_transform(&spec),
        args.batch_size,
        &device,
        args.skip_bad_images,
        &mut |path, message| say!("note: skipped {}: {message}", path.display()),
        Default::default(),
    )?;
    if result.non_finite > 0 {
        say!(
            "note: the model's outputs are not finite (NaN or infinite) for {} of the {} images: \
             they count as misses, and make the loss NaN; the model has diverged",
            result.non_finite,
            result.samples
        );
    }
    if args.json {
        out!(
            "{}",
            serde_json::json!({
                "weights": args.weights, "data": args.data, "variant": spec.name,
                "top1": result.top1, "top5": result.top5, "loss": result.loss, "samples": result.samples,
            })
        )?;
    } else {
        out!(
            "{} on {}: top-1 {:.4}, top-5 {:.4}, loss {:.4} ({} images)",
            args.weights,
            args.data.display(),
            result.top1,
            result.top5,
            result.loss,
            result.samples
        )?;
    }
    Ok(())
}
