//! The class activation map flags of `infer` and `features`, and the overlays `infer --cam`
//! writes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use densenet_zoo::infer::heat_map;
use densenet_zoo::{CamClass, CamMethod, DenseNet};
use image::DynamicImage;

/// A final map with a side below this is too coarse to show where: Grad-CAM's default level
/// is then the coarsest of at least this side (DenseNet-121's final map at 224 is 7×7).
const MIN_DEFAULT_SIDE: usize = 7;

/// Which map: the class and the level (`features` names the method with `--layer`).
#[derive(Debug, Clone, clap::Args)]
pub struct CamTarget {
    /// Class index whose map to make, for every image [default: each image's top-1].
    #[arg(long, value_parser = super::zero_or_more, allow_negative_numbers = true)]
    pub cam_class: Option<usize>,
    /// Level the map is on: stem, block1 ... blockN (finer to coarser) [default: the last, the
    /// final feature map; for Grad-CAM, when that is under 7×7, the coarsest level of at least
    /// 7×7, said in a note].
    #[arg(long)]
    pub cam_level: Option<String>,
}

impl CamTarget {
    /// True when a flag of this group was given.
    pub fn given(&self) -> bool {
        self.cam_class.is_some() || self.cam_level.is_some()
    }

    /// The class and level index of `method`'s maps for `model`, and a note for the user when
    /// the level was chosen for them or is too coarse; the errors name the flag, what was asked
    /// and what the model has.
    pub fn resolve(
        &self,
        model: &DenseNet,
        method: CamMethod,
    ) -> anyhow::Result<(CamClass, usize, Option<String>)> {
        let variant = &model.spec().name;
        let classes = model.spec().architecture.num_classes;
        if let Some(k) = self.cam_class.filter(|&k| k >= classes) {
            anyhow::bail!(
                "--cam-class {k}: {variant} has {classes} classes (0 to {})",
                classes.saturating_sub(1)
            );
        }
        let class = self.cam_class.map_or(CamClass::Top1, CamClass::Index);
        let last = model.feature_info().len() - 1;
        let levels = level_sizes(model);
        let level = match &self.cam_level {
            Some(name) => model
                .level_index(name)
                .map_err(|_| anyhow::anyhow!("--cam-level {name}: {variant} has the levels {levels}"))?,
            None if method == CamMethod::Cam => last,
            None => default_level(model),
        };
        let name = &model.feature_info()[level].name;
        if method == CamMethod::Cam && level != last {
            anyhow::bail!(
                "CAM weighs the final map's channels by the classifier's, so it needs the last level \
                 ({}); --cam-level {name} takes Grad-CAM (gradcam)",
                model.feature_info()[last].name
            );
        }
        let side = side_of(model, level);
        let note = if self.cam_level.is_none() && level != last {
            Some(format!(
                "{variant}'s final map is {s}×{s} at its input size, too coarse to show where: \
                 Grad-CAM is drawn on {name} ({side}×{side}); --cam-level picks another ({levels})",
                s = side_of(model, last)
            ))
        } else if side < 4 {
            Some(format!(
                "the {name} map of {variant} is {side}×{side}, too coarse to show where ({levels})"
            ))
        } else {
            None
        };
        Ok((class, level, note))
    }

    /// What `--cam-class` asks, for files' metadata: `top1` or the index.
    pub fn class_name(&self) -> String {
        self.cam_class.map_or("top1".into(), |k| k.to_string())
    }
}

/// The side of level `level`'s map at the spec's input size.
fn side_of(model: &DenseNet, level: usize) -> usize {
    let crop = model.spec().pretrained_cfg.preprocess.crop;
    crop.div_ceil(model.feature_info()[level].reduction)
}

/// "stem 16×16, block1 8×8, ...": every level with its map's size.
fn level_sizes(model: &DenseNet) -> String {
    let sizes: Vec<String> = (0..model.feature_info().len())
        .map(|l| format!("{} {s}×{s}", model.feature_info()[l].name, s = side_of(model, l)))
        .collect();
    sizes.join(", ")
}

/// Grad-CAM's default level: the last, unless its map is under [`MIN_DEFAULT_SIDE`]; then the
/// coarsest level of at least that side (the stem when none is).
fn default_level(model: &DenseNet) -> usize {
    let last = model.feature_info().len() - 1;
    (0..=last)
        .rev()
        .find(|&l| side_of(model, l) >= MIN_DEFAULT_SIDE)
        .unwrap_or(0)
}

/// Writes `infer --cam` overlays into a folder, one PNG per image, named
/// `{image stem}.{method}.{class label}.png`; when that name is taken in this run (two images
/// of one name in different folders) or by an input, `{stem}-2...`, `{stem}-3...`.
pub struct OverlayWriter {
    dir: PathBuf,
    method: CamMethod,
    level: String,
    origin: String,
    /// The network's input side: the crop is resized to it.
    input_size: usize,
    /// Names written in this run, and the inputs' own paths: never overwritten.
    taken: HashSet<PathBuf>,
    /// Files of earlier runs replaced by this one's maps.
    pub replaced: usize,
}

/// What one overlay shows.
pub struct Shown<'a> {
    pub class: usize,
    pub label: &'a str,
    pub prob: f32,
}

impl OverlayWriter {
    /// Refuses a path that is a file, and a folder inside one of the input folders `inputs`
    /// (its maps would be read as images by the next run); the folder is made with the first
    /// map, so a run that draws none leaves none.
    pub fn new(
        dir: &Path,
        (inputs, files): (&[PathBuf], &[PathBuf]),
        method: CamMethod,
        model: &DenseNet,
        level: usize,
        origin: &str,
    ) -> anyhow::Result<Self> {
        if dir.exists() && !dir.is_dir() {
            anyhow::bail!("--cam {}: is a file; name a folder for the maps", dir.display());
        }
        let resolved = resolved(dir);
        for input in inputs.iter().filter(|i| i.is_dir()) {
            if resolved.starts_with(resolved_existing(input)) {
                anyhow::bail!(
                    "--cam {}: lies in the input folder {}, where the maps would be read as images \
                     next time; name a folder outside it",
                    dir.display(),
                    input.display()
                );
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            method,
            level: model.feature_info()[level].name.clone(),
            origin: origin.to_string(),
            input_size: model.spec().pretrained_cfg.preprocess.crop,
            taken: files.iter().map(|f| resolved_existing(f)).collect(),
            replaced: 0,
        })
    }

    /// Draws `map` ((h, w) values) over the crop of `image` that the network saw (`region`,
    /// from the eval transform) and writes it; returns the file's path.
    pub fn write(
        &mut self,
        input: &Path,
        image: &DynamicImage,
        region: [f64; 4],
        map: (&[f32], (usize, usize)),
        shown: Shown,
    ) -> anyhow::Result<PathBuf> {
        let stem = input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let name = |n: usize| {
            let stem = if n == 1 {
                stem.clone()
            } else {
                format!("{stem}-{n}")
            };
            self.dir
                .join(format!("{stem}.{}.{}.png", self.method.name(), slug(shown.label)))
        };
        // A folder of that name is passed over like a name taken.
        let path = (1..)
            .map(name)
            .find(|p| !self.taken.contains(&resolved(p)) && !p.is_dir())
            .expect("some suffix is free");
        self.taken.insert(resolved(&path));
        if path.exists() {
            self.replaced += 1;
        }
        if !self.dir.is_dir() {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| anyhow::anyhow!("--cam {}: {e}", self.dir.display()))?;
        }
        let fail = |e| anyhow::anyhow!("{}: {}", input.display(), super::images::image_problem(e));
        let overlay = heat_map::overlay(image, region, map.0, map.1).map_err(fail)?;
        let (_, _, cw, ch) = heat_map::crop_pixels((image.width(), image.height()), region).map_err(fail)?;
        let method = match self.method {
            CamMethod::GradCam => "Grad-CAM",
            CamMethod::Cam => "CAM",
        };
        let (h, w) = map.1;
        let text = [
            (
                "Title",
                format!("{method} of {} for {}", input.display(), shown.label),
            ),
            (
                "Description",
                format!(
                    "{method} on level {} ({h}×{w}) for class {} \"{}\", probability {:.4}, over \
                     the {cw}×{ch} region of the image that the network saw (at {s}×{s}); weights {}",
                    self.level,
                    shown.class,
                    shown.label,
                    shown.prob,
                    self.origin,
                    s = self.input_size
                ),
            ),
            ("Software", format!("densenet-zoo {}", env!("CARGO_PKG_VERSION"))),
        ];
        heat_map::write_png(&path, &overlay, &text)?;
        Ok(path)
    }
}

/// `path` made absolute with symbolic links resolved, as far as it exists (the rest appended).
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
    let mut out = existing.canonicalize().unwrap_or_else(|_| existing.to_path_buf());
    out.extend(rest.iter().rev());
    out
}

fn resolved_existing(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| resolved(path))
}

/// A class label as a file-name part: lower-case letters and digits, runs of anything else
/// as one `-` (`"tabby, tabby cat"` → `tabby-tabby-cat`).
fn slug(label: &str) -> String {
    let mut out = String::new();
    for c in label.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        "class".into()
    } else {
        out.chars().take(60).collect()
    }
}
