//! Class activation maps: where in the image the evidence for a class lies, as a map over a
//! feature level's positions.
//!
//! - Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
//!   Gradient-based Localization", ICCV 2017, arXiv:1610.02391): with A the level's map
//!   (N, K, h, w) and y_c the class's logit, αₖ = mean over (h, w) of ∂y_c/∂Aₖ, and the map is
//!   ReLU(Σₖ αₖ Aₖ). Any `features_only` level; earlier levels give finer maps.
//! - CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016,
//!   arXiv:1512.04150): Σₖ W[c, k] Aₖ on the final map, with W the classifier's weight. Exact
//!   for DenseNet's head (global average pool, then linear: the logit is the map's mean plus
//!   the bias), needs no backward pass, and has no ReLU. At the last level Grad-CAM equals
//!   ReLU(CAM) / (h·w).

use std::borrow::Cow;

use candle_core::{Tensor, Var};

use super::DenseNet;
use crate::error::{Error, Result};
use crate::ops::Mode;

/// How a class activation map weighs the channels of a feature map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum CamMethod {
    /// Grad-CAM: channels weighed by the spatial mean of the class logit's gradient, ReLU of
    /// the sum; any level.
    #[default]
    #[cfg_attr(feature = "cli", value(name = "gradcam"))]
    #[serde(rename = "gradcam")]
    GradCam,
    /// CAM: channels weighed by the classifier's row for the class; the last level only.
    #[serde(rename = "cam")]
    Cam,
}

impl CamMethod {
    /// The name used on the command line and in files: `gradcam` or `cam`.
    pub fn name(self) -> &'static str {
        match self {
            CamMethod::GradCam => "gradcam",
            CamMethod::Cam => "cam",
        }
    }
}

/// Which class each image's map is for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CamClass {
    /// Each image's most probable class.
    #[default]
    Top1,
    /// The same class for every image.
    Index(usize),
    /// One class per image, in batch order.
    PerImage(Vec<usize>),
}

/// The maps of a batch, and what they are for.
#[derive(Debug, Clone)]
pub struct ClassActivationMaps {
    /// (N, h, w), in the model's dtype, at the level's resolution: not normalised.
    pub maps: Tensor,
    /// The class each map is for.
    pub classes: Vec<usize>,
    /// The images' logits (N, classes).
    pub logits: Tensor,
    /// The level the maps are on, its index in [`DenseNet::feature_info`].
    pub level: usize,
}

impl DenseNet {
    /// Class activation maps of images (N, C, H, W) by `method`, for `class`, on the
    /// `features_only` level `level` (an index into [`DenseNet::feature_info`]; the last,
    /// `feature_info().len() - 1`, is the final map after `norm5` and its ReLU).
    ///
    /// Runs the forward pass in [`Mode::Inference`] on detached weights, and for Grad-CAM a
    /// backward pass from the level on (at the last level: the head's alone).
    ///
    /// Errors: a class out of range, a per-image list of the wrong length, a level out of
    /// range, CAM below the last level, a model without a classifier.
    pub fn class_activation_maps(
        &self,
        images: &Tensor,
        method: CamMethod,
        class: &CamClass,
        level: usize,
    ) -> Result<ClassActivationMaps> {
        let last = self.feature_info().len() - 1;
        if level > last {
            return Err(self.cam_error(format!(
                "level {level} asked, the levels are 0 to {last} ({})",
                self.level_names()
            )));
        }
        let Some(classifier) = self.classifier() else {
            return Err(self.cam_error("the model has no classifier (reset to 0 classes)".into()));
        };
        // Detached weights: only the level's map takes a gradient.
        let net = if self.eval_mode() == Mode::Inference {
            Cow::Borrowed(self)
        } else {
            Cow::Owned(self.for_inference())
        };
        let map = net.forward_to_level(images, level, false)?;
        match method {
            CamMethod::GradCam => {
                let map = Var::from_tensor(&map)?;
                let logits = net.forward_from_level(map.as_tensor(), level, Mode::Eval)?;
                let classes = self.cam_classes(class, &logits)?;
                let index = class_index(&classes, &logits)?;
                let score = logits.gather(&index, 1)?.sum_all()?;
                let grads = score.backward()?;
                let grad = grads
                    .get(map.as_tensor())
                    .expect("the logits depend on the level's map");
                let weights = grad.mean_keepdim(3)?.mean_keepdim(2)?;
                let maps = map.as_tensor().broadcast_mul(&weights)?.sum(1)?.relu()?.detach();
                Ok(ClassActivationMaps {
                    maps,
                    classes,
                    logits: logits.detach(),
                    level,
                })
            }
            CamMethod::Cam => {
                if level != last {
                    return Err(self.cam_error(format!(
                        "CAM weighs the final map's channels by the classifier's, so it exists at \
                         the last level ({}) only; level {} ({}) takes Grad-CAM",
                        self.feature_info()[last].name,
                        level,
                        self.feature_info()[level].name
                    )));
                }
                let logits = net.forward_head(&map, false)?;
                let classes = self.cam_classes(class, &logits)?;
                let index = class_index(&classes, &logits)?.squeeze(1)?;
                let weights = classifier.weight().index_select(&index, 0)?;
                let maps = map.broadcast_mul(&weights.unsqueeze(2)?.unsqueeze(3)?)?.sum(1)?;
                Ok(ClassActivationMaps {
                    maps,
                    classes,
                    logits,
                    level,
                })
            }
        }
    }

    /// Grad-CAM maps (N, h, w) on level `level`: see [`DenseNet::class_activation_maps`].
    pub fn grad_cam(&self, images: &Tensor, class: &CamClass, level: usize) -> Result<ClassActivationMaps> {
        self.class_activation_maps(images, CamMethod::GradCam, class, level)
    }

    /// CAM maps (N, h, w) on the final map: see [`DenseNet::class_activation_maps`].
    pub fn cam(&self, images: &Tensor, class: &CamClass) -> Result<ClassActivationMaps> {
        let last = self.feature_info().len() - 1;
        self.class_activation_maps(images, CamMethod::Cam, class, last)
    }

    /// The index in [`DenseNet::feature_info`] of the level named `name` (`stem`, `block1`,
    /// ...); the error lists the names.
    pub fn level_index(&self, name: &str) -> Result<usize> {
        self.feature_info()
            .iter()
            .position(|l| l.name == name)
            .ok_or_else(|| {
                self.cam_error(format!(
                    "no level `{name}`: the levels are {}",
                    self.level_names()
                ))
            })
    }

    fn level_names(&self) -> String {
        let names: Vec<&str> = self.feature_info().iter().map(|l| l.name.as_str()).collect();
        names.join(", ")
    }

    fn cam_error(&self, message: String) -> Error {
        Error::Cam {
            variant: self.spec().name.clone(),
            message,
        }
    }

    /// Each image's class under `class`, checked against the logits (N, classes).
    fn cam_classes(&self, class: &CamClass, logits: &Tensor) -> Result<Vec<usize>> {
        let (n, count) = logits.dims2()?;
        let classes = match class {
            CamClass::Top1 => logits
                .argmax(1)?
                .to_vec1::<u32>()?
                .into_iter()
                .map(|c| c as usize)
                .collect(),
            CamClass::Index(c) => vec![*c; n],
            CamClass::PerImage(list) if list.len() != n => {
                return Err(self.cam_error(format!("{} classes given for {n} images", list.len())))
            }
            CamClass::PerImage(list) => list.clone(),
        };
        if let Some(bad) = classes.iter().find(|&&c| c >= count) {
            return Err(self.cam_error(format!(
                "class {bad} asked, the model has {count} classes (0 to {})",
                count - 1
            )));
        }
        Ok(classes)
    }
}

/// The classes as a (N, 1) index tensor on the logits' device.
fn class_index(classes: &[usize], logits: &Tensor) -> Result<Tensor> {
    let index: Vec<u32> = classes.iter().map(|&c| c as u32).collect();
    Ok(Tensor::from_vec(index, (classes.len(), 1), logits.device())?)
}
