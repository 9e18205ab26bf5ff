//! `densenet-zoo infer IMAGES...`: top-k classes per image.

use std::path::PathBuf;

use candle_core::Tensor;
use densenet_zoo::infer::{open_image, probabilities, top_k_of, Pretrained};
use densenet_zoo::tools::device::parse_device;
use densenet_zoo::CamMethod;
use image::DynamicImage;

use super::cam::{CamTarget, OverlayWriter, Shown};
use super::images::{expand_inputs, image_problem};
use super::results::{json_line, report_error};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image files or folders (PNG, JPEG, BMP, GIF, WebP, TIFF) [default: the shipped examples];
    /// or CSV files of rows for a tabular model (--weights), whose predictions go to stdout as CSV.
    images: Vec<PathBuf>,
    /// Variant name or JSON spec [default: the checkpoint's].
    #[arg(long)]
    variant: Option<String>,
    /// Checkpoint: a path or hf:OWNER/REPO[:FILE] [default: the variant's published weights, or
    /// the embedded Fashion-MNIST model].
    #[arg(long)]
    weights: Option<String>,
    #[command(flatten)]
    read: super::weights::ReadArgs,
    /// How many classes to show per image [default: 5, or all when the model has fewer].
    #[arg(long, value_parser = super::at_least_one, allow_negative_numbers = true)]
    topk: Option<usize>,
    /// One JSON object per line and image (or CSV row).
    #[arg(long)]
    json: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = super::at_least_one, allow_negative_numbers = true)]
    batch_size: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Write each image's class activation map into this folder: the heat map over the crop
    /// the network saw, as IMAGE.METHOD.CLASS.png, the class and its probability in the PNG's
    /// text; with --json, each line gains the file's path as "cam".
    #[arg(long, value_name = "OUT_DIR")]
    cam: Option<PathBuf>,
    /// gradcam (Grad-CAM, any level) or cam (CAM, the last level only) [default: gradcam].
    #[arg(long, value_enum)]
    cam_method: Option<CamMethod>,
    #[command(flatten)]
    cam_target: CamTarget,
}

/// An input read for inference: the decoded image when its map is to be drawn, and the
/// preprocessed pixels; or why it could not be read.
type Prepared = Result<(Option<DynamicImage>, Vec<f32>), String>;

/// The Fashion-MNIST test images shipped with the crate, for `infer` with no argument.
fn shipped_examples() -> Vec<PathBuf> {
    vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/examples")]
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(dir) = &args.cam {
        densenet_zoo::checkpoint::check_folder(dir)?;
    }
    let device = parse_device(&args.device)?;
    // A tabular model reads every input as CSV, whatever its name; otherwise a `.csv` asks
    // for one.
    let tabular_weights = args
        .weights
        .as_deref()
        .is_some_and(|w| densenet_zoo::tabular::is_tabular_file(std::path::Path::new(w)));
    if tabular_weights && !args.images.is_empty() {
        return infer_tabular(&args, &device);
    }
    if let Some(csv) = args.images.iter().find(|p| super::tabular::is_csv(p)) {
        anyhow::ensure!(
            args.weights.is_some(),
            "{} is a CSV file: pass the tabular model that predicts it, --weights RUN/model.safetensors",
            csv.display()
        );
        return infer_tabular(&args, &device);
    }
    if args.cam.is_none() && (args.cam_target.given() || args.cam_method.is_some()) {
        anyhow::bail!(
            "--cam-method, --cam-class and --cam-level choose the map that --cam OUT_DIR writes: pass --cam"
        );
    }
    let method = args.cam_method.unwrap_or_default();
    let pretrained = Pretrained::open_with(
        super::weights::source(args.weights.as_deref(), args.variant.as_deref()),
        args.read.options(args.variant.as_deref(), &device),
    )?;
    for notice in pretrained.notices() {
        say!("note: {notice}");
    }
    let model = pretrained.net();
    let spec = model.spec().clone();
    let classes = spec.architecture.num_classes;
    if let Some(k) = args.topk.filter(|&k| k > classes) {
        say!(
            "note: --topk {k}: {} has {classes} classes; all {classes} are shown",
            pretrained.origin()
        );
    }
    let topk = args.topk.unwrap_or(5);
    let transform = pretrained.transform();
    let target = match &args.cam {
        Some(_) => {
            let (class, level, note) = args.cam_target.resolve(model, method)?;
            if let Some(note) = note {
                say!("note: {note}");
            }
            Some((class, level))
        }
        None => None,
    };
    let inputs = if args.images.is_empty() {
        shipped_examples()
    } else {
        args.images.clone()
    };
    let (files, arg_failures) = expand_inputs(&inputs);
    let mut cam = match (&args.cam, target) {
        (Some(dir), Some((class, level))) => {
            let writer =
                OverlayWriter::new(dir, (&inputs, &files), method, model, level, pretrained.origin())?;
            Some((writer, class, level))
        }
        _ => None,
    };
    // The overlay shows the image as the network saw it: gray for a one-channel net.
    let gray = spec.architecture.in_channels == 1;
    let total = files.len() + arg_failures.len();
    let mut failed = arg_failures.len();
    let mut written = 0;
    for (path, error) in &arg_failures {
        report_error(path, error, args.json)?;
    }
    let bar = super::progress::images_bar(files.len(), "classifying");
    for chunk in files.chunks(args.batch_size) {
        // The decoded image is kept only to draw its map on.
        let prepared: Vec<Prepared> = chunk
            .iter()
            .map(|path| {
                let image = open_image(path).map_err(image_problem)?;
                let pixels = pretrained.prepare(&image).map_err(image_problem)?;
                let shown = match gray {
                    true => DynamicImage::ImageLuma8(image.to_luma8()),
                    false => image,
                };
                Ok((cam.is_some().then_some(shown), pixels))
            })
            .collect();
        let images: Vec<Vec<f32>> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok().map(|(_, pixels)| pixels.clone()))
            .collect();
        // The logits, and with --cam each image's map (h, w) and class.
        let (logits, maps) = if images.is_empty() {
            (None, None)
        } else {
            let x = pretrained.batch(&images)?;
            match &cam {
                Some((_, class, level)) => {
                    let m = model.class_activation_maps(&x, method, class, *level)?;
                    (Some(m.logits), Some((m.maps, m.classes)))
                }
                None => (Some(model.forward_t(&x, false)?), None),
            }
        };
        let probs = match &logits {
            Some(l) => probabilities(l)?,
            None => Vec::new(),
        };
        let predictions = top_k_of(&probs, pretrained.classes(), topk);
        let mut predictions = predictions.into_iter();
        // The position among the images that were read, in the logits and maps.
        let mut index = 0;
        // One line per input, in the order given, failures in their place; the bar steps
        // aside for them.
        bar.suspend(|| -> anyhow::Result<()> {
            for (path, prepared) in chunk.iter().zip(&prepared) {
                let image = match prepared {
                    Err(e) => {
                        failed += 1;
                        report_error(path, e, args.json)?;
                        continue;
                    }
                    Ok((image, _)) => image,
                };
                let top = predictions.next().expect("one prediction per prepared image");
                if probs[index].iter().any(|p| !p.is_finite()) {
                    // A diverged model: no class stands out, and none is made up.
                    failed += 1;
                    index += 1;
                    let why = "the model's outputs for it are not finite (NaN or infinite): its \
                               weights overflow on this image";
                    report_error(path, why, args.json)?;
                    continue;
                }
                let cam_path = match (&mut cam, &maps, image) {
                    (Some((writer, _, level)), Some((maps, classes)), Some(image)) => {
                        let class = classes[index];
                        let label = pretrained.classes().get(class).map_or("class", String::as_str);
                        let shown = Shown {
                            class,
                            label,
                            prob: probs[index][class],
                        };
                        let map = maps.get(index)?;
                        let (h, w) = map.dims2()?;
                        let region = transform
                            .eval_crop_box(image.width(), image.height())
                            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                        let values = plane(&map)?;
                        if values.iter().all(|&v| v == values[0]) {
                            say!(
                                "note: {}: the map is flat ({}) at {}: no position stands out for {label}",
                                path.display(),
                                values[0],
                                model.feature_info()[*level].name
                            );
                        }
                        written += 1;
                        Some(writer.write(path, image, region, (&values, (h, w)), shown)?)
                    }
                    _ => None,
                };
                index += 1;
                if args.json {
                    out!("{}", json_line(path, &top, cam_path.as_deref()))?;
                } else {
                    let shown: Vec<String> =
                        top.iter().map(|p| format!("{} {:.3}", p.label, p.prob)).collect();
                    let map = cam_path.map_or(String::new(), |p| format!("; map {}", p.display()));
                    out!("{}: {}{map}", path.display(), shown.join(", "))?;
                }
            }
            Ok(())
        })?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if let Some((writer, _, _)) = cam.as_ref().filter(|(w, _, _)| w.replaced > 0) {
        say!(
            "note: {} map{} replaced files of the same name left in the folder by an earlier run",
            writer.replaced,
            if writer.replaced == 1 { "" } else { "s" }
        );
    }
    match (&args.cam, args.json, written) {
        (Some(_), false, 0) => say!("no class activation map was drawn: no input was classified"),
        (Some(dir), false, _) => say!(
            "wrote {written} class activation map{} ({}) to {}",
            if written == 1 { "" } else { "s" },
            method.name(),
            dir.display()
        ),
        _ => {}
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {total} inputs could not be classified");
    }
    Ok(())
}

/// A map (h, w) as f32 values, row-major.
fn plane(map: &Tensor) -> anyhow::Result<Vec<f32>> {
    Ok(map
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Predicts CSV files' rows with a tabular checkpoint (`--weights`, checked by the caller);
/// the image flags are refused by name.
fn infer_tabular(args: &Args, device: &candle_core::Device) -> anyhow::Result<()> {
    let weights = args.weights.as_deref().expect("the caller checked --weights");
    if !densenet_zoo::tabular::is_tabular_file(std::path::Path::new(weights)) {
        // Its error says what the file is instead.
        densenet_zoo::tabular::TabularModel::load(std::path::Path::new(weights), device)?;
    }
    let image = |p: &std::path::Path| {
        p.is_dir()
            || p.extension().is_some_and(|e| {
                let e = e.to_string_lossy().to_ascii_lowercase();
                densenet_zoo::data::IMAGE_EXTENSIONS.contains(&e.as_str())
            })
    };
    if let Some(other) = args.images.iter().find(|p| image(p)) {
        anyhow::bail!(
            "{} is an image or a folder, and {weights} a tabular model: it predicts rows of CSV files",
            other.display()
        );
    }
    let image_only = [
        ("--variant", args.variant.is_some()),
        ("--cam", args.cam.is_some()),
        ("--cam-method", args.cam_method.is_some()),
        ("--cam-class/--cam-level", args.cam_target.given()),
    ];
    if let Some((flag, _)) = image_only.iter().find(|(_, given)| *given) {
        anyhow::bail!("{flag} is for images; a CSV file is predicted by its --weights model alone");
    }
    super::tabular::infer(&args.images, std::path::Path::new(weights), args.json, device)
}
