//! The class activation map flags of `infer` and `features`, and the overlays `infer --cam`
//! writes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use densenet_zoo::{heat_map, CamClass, CamMethod, DenseNet};
use image::DynamicImage;

/// Which map: the class and the level (`features` names the method with `--layer`).
#[derive(Debug, Clone, clap::Args)]
pub struct CamTarget {
    /// Class index whose map to make, for every image [default: each image's top-1].
    #[arg(long)]
    pub cam_class: Option<usize>,
    /// Level the map is on: stem, block1 ... blockN (finer to coarser) [default: the last, the
    /// final feature map].
    #[arg(long)]
    pub cam_level: Option<String>,
}

impl CamTarget {
    /// The class and level index for `model`; the error names the levels it has.
    pub fn resolve(&self, model: &DenseNet) -> anyhow::Result<(CamClass, usize)> {
        let class = self.cam_class.map_or(CamClass::Top1, CamClass::Index);
        let level = match &self.cam_level {
            Some(name) => model.level_index(name)?,
            None => model.feature_info().len() - 1,
        };
        Ok((class, level))
    }
}

/// Says so when a level's map is too coarse to show anything (the book's net at 32×32 ends
/// on 1×1), with the finer levels and their sizes.
pub fn note_coarse_level(model: &DenseNet, level: usize) {
    let crop = model.spec().pretrained_cfg.preprocess.crop;
    let sides: Vec<String> = model
        .feature_info()
        .iter()
        .map(|l| {
            let side = crop.div_ceil(l.reduction);
            format!("{} {side}×{side}", l.name)
        })
        .collect();
    let side = crop.div_ceil(model.feature_info()[level].reduction);
    if side < 4 {
        say!(
            "note: the {} map of {} at {crop}×{crop} is {side}×{side}, too coarse to show where; \
             --cam-level picks a finer one ({})",
            model.feature_info()[level].name,
            model.spec().name,
            sides.join(", ")
        );
    }
}

/// Writes `infer --cam` overlays into a folder, one PNG per image, named
/// `{image stem}.{method}.{class label}.png` (`-2`, `-3`, ... after the stem when two images
/// share it).
pub struct OverlayWriter {
    dir: PathBuf,
    method: CamMethod,
    level: String,
    origin: String,
    taken: HashMap<String, usize>,
}

/// What one overlay shows.
pub struct Shown<'a> {
    pub class: usize,
    pub label: &'a str,
    pub prob: f32,
}

impl OverlayWriter {
    /// Creates `dir` if needed; refuses a path that is a file.
    pub fn new(dir: &Path, method: CamMethod, level: &str, origin: &str) -> anyhow::Result<Self> {
        if dir.exists() && !dir.is_dir() {
            anyhow::bail!("--cam {}: is a file; name a folder for the maps", dir.display());
        }
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("--cam {}: {e}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            method,
            level: level.to_string(),
            origin: origin.to_string(),
            taken: HashMap::new(),
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
        let count = self.taken.entry(stem.clone()).or_insert(0);
        *count += 1;
        let stem = if *count == 1 {
            stem
        } else {
            format!("{stem}-{count}")
        };
        let name = format!("{stem}.{}.{}.png", self.method.name(), slug(shown.label));
        let path = self.dir.join(name);
        let overlay = heat_map::overlay(image, region, map.0, map.1);
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
                     the {:.0}×{:.0} crop the network saw; weights {}",
                    self.level, shown.class, shown.label, shown.prob, region[2], region[3], self.origin
                ),
            ),
            ("Software", format!("densenet-zoo {}", env!("CARGO_PKG_VERSION"))),
        ];
        heat_map::write_png(&path, &overlay, &text)?;
        Ok(path)
    }
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
