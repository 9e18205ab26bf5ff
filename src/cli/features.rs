//! `densenet-zoo features IMAGES... --out feats.safetensors`: embeddings and feature maps.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::Tensor;
use densenet_zoo::checkpoint::{write_safetensors_with, Metadata};
use densenet_zoo::data::{self, Dataset, Samples};
use densenet_zoo::infer::Pretrained;
use densenet_zoo::tools::device::parse_device;
use densenet_zoo::{CamClass, CamMethod, FeatureInfo};

use super::cam::CamTarget;
use super::images::expand_inputs;

/// What `--layer` names: the pooled embedding (N, F) before the classifier, the logits
/// (N, classes), a `features_only` level by its `feature_info` name (`stem`, the stem before
/// its pool; `block1` ... `blockN`, each dense block's output, the last after `norm5` + ReLU),
/// or a class activation map (N, h, w) by its method (`gradcam`, `cam`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Layer {
    Pooled,
    Logits,
    /// Index into `features_only`'s levels.
    Level(usize),
    Cam(CamMethod),
}

/// Resolves a `--layer` name against the model's levels.
fn parse_layer(name: &str, levels: &[FeatureInfo], variant: &str) -> anyhow::Result<Layer> {
    match name {
        "pooled" => Ok(Layer::Pooled),
        "logits" => Ok(Layer::Logits),
        "gradcam" => Ok(Layer::Cam(CamMethod::GradCam)),
        "cam" => Ok(Layer::Cam(CamMethod::Cam)),
        _ => levels
            .iter()
            .position(|l| l.name == name)
            .map(Layer::Level)
            .ok_or_else(|| {
                let names: Vec<&str> = levels.iter().map(|l| l.name.as_str()).collect();
                anyhow::anyhow!(
                    "--layer {name}: {variant} has the levels pooled, logits, {}, and the maps gradcam, cam",
                    names.join(", ")
                )
            }),
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image files or folders (every image under a folder, at any depth); one folder of class
    /// sub-folders is read as an ImageFolder, and its labels are written too.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Output .safetensors: one tensor per level, one row per image in the order given.
    #[arg(long)]
    out: PathBuf,
    /// Level to write: pooled, logits, stem, block1 ... blockN (one per dense block), or a class
    /// activation map (N, h, w): gradcam, cam (with `{name}_classes`, the class of each map);
    /// repeat for several [default: pooled].
    #[arg(long = "layer")]
    layers: Vec<String>,
    #[command(flatten)]
    cam_target: CamTarget,
    /// Variant name or JSON spec [default: the checkpoint's].
    #[arg(long)]
    variant: Option<String>,
    /// Checkpoint: a path or hf:OWNER/REPO[:FILE] [default: as for infer].
    #[arg(long)]
    weights: Option<String>,
    #[command(flatten)]
    read: super::weights::ReadArgs,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = super::at_least_one, allow_negative_numbers = true)]
    batch_size: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// The images to embed: one folder laid out as an ImageFolder (class sub-folders) is read as
/// torchvision's `ImageFolder` reads it, and its labels come back too; anything else is
/// expanded by [`expand_inputs`], and any argument that cannot be read is an error.
fn list_images(inputs: &[PathBuf]) -> anyhow::Result<(Vec<PathBuf>, Option<Dataset>)> {
    if let [dir] = inputs {
        if data::is_image_folder(dir) {
            let folder = data::image_folder(dir)?;
            say!(
                "note: {} read as an ImageFolder: {} images of {} classes (written as the tensor labels, their \
                 names as densenet_zoo.label_names)",
                dir.display(),
                folder.len(),
                folder.classes.len()
            );
            let files = match &folder.samples {
                Samples::Files(files) => files.clone(),
                Samples::InMemory { .. } => unreachable!("an ImageFolder lists files"),
            };
            return Ok((files, Some(folder)));
        }
    }
    let (files, failures) = expand_inputs(inputs);
    if let Some((path, e)) = failures.first() {
        anyhow::bail!("{}: {e}", path.display());
    }
    Ok((files, None))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    densenet_zoo::checkpoint::check_file(&args.out)?;
    let device = parse_device(&args.device)?;
    let pretrained = Pretrained::open_with(
        super::weights::source(args.weights.as_deref(), args.variant.as_deref()),
        args.read.options(args.variant.as_deref(), &device),
    )?;
    for notice in pretrained.notices() {
        say!("note: {notice}");
    }
    let model = pretrained.net();
    let mut names: Vec<String> = Vec::new();
    for name in &args.layers {
        // A level named twice is written once.
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    if names.is_empty() {
        names.push("pooled".into());
    }
    let layers = names
        .iter()
        .map(|n| parse_layer(n, model.feature_info(), &model.spec().name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Each map's class and level, checked before any image is read.
    let mut targets: HashMap<CamMethod, (CamClass, usize)> = HashMap::new();
    let mut notes: Vec<String> = Vec::new();
    for layer in &layers {
        if let Layer::Cam(method) = *layer {
            let (class, level, note) = args.cam_target.resolve(model, method)?;
            targets.insert(method, (class, level));
            if let Some(note) = note.filter(|n| !notes.contains(n)) {
                notes.push(note);
            }
        }
    }
    for note in &notes {
        say!("note: {note}");
    }
    if targets.is_empty() && args.cam_target.given() {
        anyhow::bail!(
            "--cam-class and --cam-level choose the maps of --layer gradcam and --layer cam: pass either"
        );
    }
    let mut cam_classes: HashMap<Layer, Vec<i64>> = HashMap::new();
    let (files, labelled) = list_images(&args.images)?;
    let mut rows: HashMap<Layer, Vec<Tensor>> = HashMap::new();
    let bar = super::progress::images_bar(files.len(), "embedding");
    pretrained
        .batches(args.batch_size)
        .on_batch(|p| bar.set_position(p.done as u64))
        .for_each(&files, |_, x| {
            let levels = pretrained.features(x)?;
            let last = levels.last().expect("at least one level").clone();
            for &layer in &layers {
                let t = match layer {
                    Layer::Pooled => model.forward_head(&last, true)?,
                    Layer::Logits => model.forward_head(&last, false)?,
                    Layer::Level(i) => levels[i].clone(),
                    Layer::Cam(method) => {
                        let (class, level) = &targets[&method];
                        let maps = model.class_activation_maps(x, method, class, *level)?;
                        let classes = cam_classes.entry(layer).or_default();
                        classes.extend(maps.classes.iter().map(|&c| c as i64));
                        maps.maps
                    }
                };
                rows.entry(layer).or_default().push(t);
            }
            Ok(())
        })?;
    bar.finish_and_clear();
    let mut tensors = Vec::new();
    for (name, layer) in names.iter().zip(&layers) {
        if let Some(parts) = rows.get(layer) {
            if !tensors.iter().any(|(n, _): &(String, Tensor)| n == name) {
                tensors.push((name.clone(), Tensor::cat(parts, 0)?));
                if let Some(classes) = cam_classes.get(layer) {
                    let classes = Tensor::new(classes.as_slice(), &candle_core::Device::Cpu)?;
                    tensors.push((format!("{name}_classes"), classes));
                }
            }
        }
    }
    // The names of the model's outputs (the logits' columns): the checkpoint's, or --labels.
    let mut record = Metadata::for_spec(model.spec());
    record.classes = pretrained.classes().to_vec();
    let mut metadata = record.to_map();
    if let Some(folder) = labelled {
        let labels: Vec<i64> = folder.labels.iter().map(|&l| l as i64).collect();
        tensors.push(("labels".into(), Tensor::new(labels, &candle_core::Device::Cpu)?));
        // The names of the labels' values; `densenet_zoo.classes` names the model's outputs.
        metadata.insert(
            "densenet_zoo.label_names".into(),
            serde_json::to_string(&folder.classes)?,
        );
    }
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    metadata.insert("densenet_zoo.files".into(), serde_json::to_string(&names)?);
    metadata.insert("densenet_zoo.weights".into(), pretrained.origin().to_string());
    if !targets.is_empty() {
        // {"gradcam": {"level": "block4", "class": "top1"}, ...}
        let maps: serde_json::Map<String, serde_json::Value> = targets
            .iter()
            .map(|(method, (_, level))| {
                let level = &model.feature_info()[*level].name;
                let what = serde_json::json!({"level": level, "class": args.cam_target.class_name()});
                (method.name().to_string(), what)
            })
            .collect();
        metadata.insert("densenet_zoo.cam".into(), serde_json::to_string(&maps)?);
    }
    write_safetensors_with(&args.out, &tensors, Some(metadata))?;
    say!(
        "wrote {} ({} image{}; {})",
        args.out.display(),
        files.len(),
        if files.len() == 1 { "" } else { "s" },
        tensors
            .iter()
            .map(|(n, t)| format!("{n} {:?}", t.dims()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
