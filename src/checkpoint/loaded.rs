//! A checkpoint read into memory: its tensors under torchvision's names, what loading decided on
//! the user's behalf, and the spec it is read as.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::state_dict::{check_tensors, without_counters};
use super::{
    adapt, architecture_differences, nearest_builtin, preprocessing_source, source, spec_from_tensors,
    to_canonical, Metadata, ModelKind, NamingScheme, StateDictKey,
};
use crate::error::{Error, Result};
use crate::model::DenseNet;
use crate::spec::VariantSpec;

/// A checkpoint read into memory, its tensors renamed to torchvision's names.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Where it came from, for messages: a path or `hf:OWNER/REPO:FILE`.
    pub origin: String,
    /// The naming scheme the file used.
    pub scheme: NamingScheme,
    /// Every tensor, by canonical name (`num_batches_tracked` included where the file has it).
    pub tensors: HashMap<String, Tensor>,
    /// This crate's metadata, when the file was written by it.
    pub metadata: Option<Metadata>,
    /// Optimiser state saved with a training checkpoint (`optimizer.*` tensors), kept apart.
    pub optimizer: HashMap<String, Tensor>,
    /// What loading did on the user's behalf, one sentence each, for the user to see: the state
    /// dict read from a nested key, a prefix stripped, dtypes cast, the architecture read from
    /// the tensors or fitted to them.
    pub notices: Vec<String>,
}

impl Checkpoint {
    /// Reads a path or `hf:OWNER/REPO[:FILE]` (downloaded through the hub cache).
    pub fn open(source: &str, device: &Device) -> Result<Self> {
        Self::open_with(source, device, &StateDictKey::Model)
    }

    /// [`Checkpoint::open`], reading the state dict `key` names from a training checkpoint that
    /// holds several (timm's EMA copy, ...).
    pub fn open_with(source: &str, device: &Device, key: &StateDictKey) -> Result<Self> {
        match source::hub::HubFile::parse(source)? {
            Some(file) => {
                let path = file.fetch()?;
                let mut ckpt = Self::read_with(&path, device, key)?;
                ckpt.origin = file.to_string();
                Ok(ckpt)
            }
            None => Self::read_with(Path::new(source), device, key),
        }
    }

    /// Reads a safetensors file or a PyTorch `.pth` in either of `torch.save`'s formats (zip,
    /// or the legacy stream of files saved before PyTorch 1.6), its format decided by its bytes
    /// and its naming scheme by its names. Other formats (Keras, ONNX, TensorFlow, TorchScript,
    /// GGUF, NumPy, ...) are refused with their name and what to do instead.
    pub fn read(path: &Path, device: &Device) -> Result<Self> {
        Self::read_with(path, device, &StateDictKey::Model)
    }

    /// [`Checkpoint::read`], reading the state dict `key` names.
    pub fn read_with(path: &Path, device: &Device, key: &StateDictKey) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Checkpoint {
                path: path.display().to_string(),
                message: "no such file".into(),
            });
        }
        Self::from_raw(path.display().to_string(), source::read(path, device, key)?)
    }

    /// Parses safetensors bytes held in memory (such as the embedded default model).
    pub fn from_bytes(bytes: &[u8], origin: &str, device: &Device) -> Result<Self> {
        Self::from_raw(
            origin.to_string(),
            source::parse_safetensors(bytes, Path::new(origin), device)?,
        )
    }

    fn from_raw(origin: String, raw: source::RawCheckpoint) -> Result<Self> {
        if raw.header.as_ref().map(ModelKind::of) == Some(ModelKind::Tabular) {
            return Err(Error::Checkpoint {
                path: origin,
                message: "a tabular model, for rows of CSV files, not images: it predicts the rows \
                          of CSV files"
                    .into(),
            });
        }
        let mut notices = raw.notices;
        let canonical = to_canonical(raw.tensors);
        if let Some(prefix) = &canonical.stripped_prefix {
            notices.push(if canonical.without_prefix.is_empty() {
                format!("stripped the prefix `{prefix}` that every tensor name shares (a training wrapper's)")
            } else {
                format!(
                    "stripped the prefix `{prefix}` (a training wrapper's) from {} of {} tensor \
                     names; kept as they are: {}",
                    canonical.tensors.len() - canonical.without_prefix.len(),
                    canonical.tensors.len(),
                    first_items(&canonical.without_prefix, 5)
                )
            });
        }
        let mut tensors = HashMap::with_capacity(canonical.tensors.len());
        let mut optimizer = HashMap::new();
        let mut cast: Vec<(String, DType)> = Vec::new();
        for (name, t) in canonical.tensors {
            if name == "n_averaged" {
                notices.push(
                    "ignored n_averaged: the count of torch.optim.swa_utils.AveragedModel, not a weight"
                        .into(),
                );
                continue;
            }
            if name.starts_with("optimizer.") {
                optimizer.insert(name, t);
                continue;
            }
            let t = if matches!(t.dtype(), DType::F16 | DType::BF16 | DType::F64) {
                cast.push((name.clone(), t.dtype()));
                t.to_dtype(DType::F32)?
            } else {
                t
            };
            if tensors.insert(name.clone(), t).is_some() {
                return Err(Error::Checkpoint {
                    path: origin,
                    message: format!("two tensors map to {name}"),
                });
            }
        }
        if !cast.is_empty() {
            notices.push(cast_notice(&cast));
        }
        let metadata = match raw.header.as_ref().map(Metadata::from_map).transpose() {
            Ok(m) => m.flatten(),
            Err(message) => {
                return Err(Error::Checkpoint {
                    path: origin,
                    message: format!("bad metadata: {message}"),
                })
            }
        };
        Ok(Self {
            origin,
            scheme: canonical.scheme,
            tensors,
            metadata,
            optimizer,
            notices,
        })
    }

    /// True when the checkpoint's metadata names one class per output of `spec`'s classifier.
    pub fn records_class_names(&self, spec: &VariantSpec) -> bool {
        self.metadata
            .as_ref()
            .is_some_and(|m| m.classes.len() == spec.architecture.num_classes)
    }

    /// The class name of each of `spec`'s outputs: the names the file records when their
    /// number fits, else the spec's built-in list, else `class0`, `class1`, ...
    pub fn class_names(&self, spec: &VariantSpec) -> Vec<String> {
        match &self.metadata {
            Some(m) if self.records_class_names(spec) => m.classes.clone(),
            _ => crate::spec::labels::for_classes(
                spec.pretrained_cfg.labels.as_deref(),
                spec.architecture.num_classes,
            ),
        }
    }

    /// The spec to build, in this order: `variant` when given (a name or a JSON path), else
    /// the one in the metadata, else the built-in variant whose architecture the tensors have,
    /// else the architecture read from the tensors ([`spec_from_tensors`]). The number of
    /// classes comes from `classifier.weight`, and so do the input channels from `conv0` where
    /// timm's rule cannot adapt them ([`adapt`]); each such decision is added to
    /// [`Checkpoint::notices`]. When the tensors describe no DenseNet, the error says why and
    /// why the nearest built-in variant does not fit.
    pub fn spec(&mut self, variant: Option<&str>) -> Result<VariantSpec> {
        if let Some(v) = variant {
            let mut spec = VariantSpec::resolve(v)?;
            // The checkpoint's own spec, where it has one of this architecture, keeps what
            // training chose (its classes, input size and preprocessing).
            if let Some(m) = self
                .metadata
                .as_ref()
                .filter(|m| architecture_differences(&m.spec.architecture, &spec).is_empty())
            {
                if m.spec.architecture.transition_pool != spec.architecture.transition_pool {
                    self.notices.push(format!(
                        "--variant {v}: the checkpoint's own spec of that architecture is used, whose \
                         transitions pool by {} (its weights were trained so)",
                        m.spec.architecture.transition_pool.name()
                    ));
                }
                if m.spec.pretrained_cfg.preprocess != spec.pretrained_cfg.preprocess
                    || m.spec.architecture.num_classes != spec.architecture.num_classes
                {
                    self.notices.push(format!(
                        "--variant {v}: the checkpoint's own spec of that architecture is used, with its \
                         {} classes and preprocessing (resize {}, crop {})",
                        m.spec.architecture.num_classes,
                        m.spec.pretrained_cfg.preprocess.resize,
                        m.spec.pretrained_cfg.preprocess.crop
                    ));
                }
                return Ok(m.spec.clone());
            }
            let notices = self.fit_ends(&mut spec)?;
            self.notices.extend(notices);
            return Ok(spec);
        }
        if let Some(m) = &self.metadata {
            return Ok(m.spec.clone());
        }
        match spec_from_tensors(&self.tensors) {
            Ok(derived) => {
                let builtin = VariantSpec::builtin()
                    .into_iter()
                    .find(|b| architecture_differences(&derived.architecture, b).is_empty());
                let spec = match builtin {
                    Some(mut b) => {
                        if b.architecture.num_classes != derived.architecture.num_classes {
                            b.architecture.num_classes = derived.architecture.num_classes;
                            b.pretrained_cfg.labels = None;
                        }
                        b
                    }
                    None => {
                        let nearest = nearest_builtin(&derived.architecture);
                        self.notices.push(format!(
                            "the tensors match no built-in variant: the architecture is read \
                             from them; nearest built-in: {}, which differs in {}; input size \
                             and preprocessing as {}'s (resize {}, crop {})",
                            nearest.name,
                            architecture_differences(&derived.architecture, &nearest).join(", "),
                            preprocessing_source(&derived.architecture).name,
                            derived.pretrained_cfg.preprocess.resize,
                            derived.pretrained_cfg.preprocess.crop
                        ));
                        derived
                    }
                };
                self.check(&spec).map_err(|e| self.with_notices(e))?;
                Ok(spec)
            }
            Err(reason) => {
                let nearest = VariantSpec::builtin()
                    .into_iter()
                    .map(|mut candidate| {
                        let _ = self.fit_ends(&mut candidate);
                        let problems = match check_tensors(&candidate, &self.tensors, &self.origin, &[]) {
                            Err(Error::Checkpoint { message, .. }) => message,
                            _ => String::new(),
                        };
                        (problems.lines().count(), candidate.name, problems)
                    })
                    .min_by_key(|(count, ..)| *count)
                    .expect("there are built-in variants");
                // A near miss is worth listing; a file of another network is better shown by
                // its own names.
                let why = if nearest.0 <= 12 {
                    format!("the nearest built-in variant, {}, {}", nearest.1, nearest.2)
                } else {
                    let mut names: Vec<String> = self.tensors.keys().cloned().collect();
                    names.sort();
                    format!("its {} tensors are named {}", names.len(), first_items(&names, 6))
                };
                Err(self.with_notices(Error::Checkpoint {
                    path: self.origin.clone(),
                    message: format!(
                        "its tensors describe no DenseNet ({reason}) and it carries no spec; {why}"
                    ),
                }))
            }
        }
    }

    /// A refusal with what reading decided appended (a stripped prefix explains an unexpected
    /// tensor): the command line prints notices only for a checkpoint it goes on with.
    fn with_notices(&self, error: Error) -> Error {
        match error {
            Error::Checkpoint { path, message } if !self.notices.is_empty() => Error::Checkpoint {
                path,
                message: format!("{message}\nwhile reading it: {}", self.notices.join("; ")),
            },
            other => other,
        }
    }

    /// Takes the number of classes, and the input channels where [`adapt`] cannot convert
    /// them, from the tensors; returns a notice for each change.
    fn fit_ends(&self, spec: &mut VariantSpec) -> Result<Vec<String>> {
        let mut notices = Vec::new();
        if let Some(w) = self.tensors.get("classifier.weight").filter(|w| w.rank() == 2) {
            let classes = w.dim(0)?;
            if classes != spec.architecture.num_classes {
                notices.push(format!(
                    "{}: {classes} classes, as classifier.weight has (the variant has {})",
                    spec.name, spec.architecture.num_classes
                ));
                spec.architecture.num_classes = classes;
                spec.pretrained_cfg.labels = None;
            }
        }
        if let Some(w) = self
            .tensors
            .get("features.conv0.weight")
            .filter(|w| w.rank() == 4)
        {
            let channels = w.dim(1)?;
            if channels != spec.architecture.in_channels && channels != 3 {
                notices.push(format!(
                    "{}: {channels} input channel{}, as features.conv0.weight has (the variant \
                     has {})",
                    spec.name,
                    if channels == 1 { "" } else { "s" },
                    spec.architecture.in_channels
                ));
                spec.architecture.in_channels = channels;
                super::architecture::fit_preprocess_channels(spec);
            }
        }
        Ok(notices)
    }

    /// Fits the tensors to `spec` (timm's input-channel rule; with `new_classifier`, a
    /// classifier of another size is dropped) and returns notices for the user.
    pub fn adapt(&mut self, spec: &VariantSpec, new_classifier: bool) -> Result<Vec<String>> {
        adapt(&mut self.tensors, spec, new_classifier)
    }

    /// Checks the tensors against `spec` strictly; see [`check_tensors`].
    pub fn check(&self, spec: &VariantSpec) -> Result<()> {
        check_tensors(spec, &self.tensors, &self.origin, &[])
    }

    /// Builds the model for inference ([`DenseNet::for_inference`]): every tensor must be
    /// there, with the right shape.
    pub fn into_model(self, spec: &VariantSpec, device: &Device) -> Result<DenseNet> {
        self.check(spec)?;
        let tensors = without_counters(self.tensors)
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(device)?)))
            .collect::<candle_core::Result<HashMap<_, _>>>()?;
        Ok(DenseNet::new(spec, VarBuilder::from_tensors(tensors, DType::F32, device))?.for_inference())
    }

    /// Puts the tensors into `varmap` as trainable variables and builds the model from it;
    /// a classifier dropped by [`Checkpoint::adapt`] is initialised fresh.
    pub fn into_varmap(self, spec: &VariantSpec, varmap: &VarMap, device: &Device) -> Result<DenseNet> {
        let fresh = ["classifier.weight", "classifier.bias"];
        let allowed: Vec<&str> = fresh
            .into_iter()
            .filter(|n| !self.tensors.contains_key(*n))
            .collect();
        check_tensors(spec, &self.tensors, &self.origin, &allowed)?;
        {
            let mut data = varmap.data().lock().expect("varmap lock");
            for (name, t) in without_counters(self.tensors) {
                data.insert(name, Var::from_tensor(&t.to_device(device)?)?);
            }
        }
        DenseNet::new(spec, VarBuilder::from_varmap(varmap, DType::F32, device))
    }
}

/// One line for every tensor cast to float32, by source dtype: `cast 40 float16 tensors to
/// float32 (as torch's load_state_dict does)`.
fn cast_notice(cast: &[(String, DType)]) -> String {
    let mut counts: Vec<(DType, usize)> = Vec::new();
    for (_, dtype) in cast {
        match counts.iter_mut().find(|(d, _)| d == dtype) {
            Some((_, n)) => *n += 1,
            None => counts.push((*dtype, 1)),
        }
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(d, n)| format!("{n} {} tensor{}", torch_dtype(*d), if *n == 1 { "" } else { "s" }))
        .collect();
    format!(
        "cast {} to float32, as PyTorch's load_state_dict does",
        parts.join(" and ")
    )
}

fn torch_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::F64 => "float64",
        _ => "other",
    }
}

/// The first `n` items, comma-separated, and how many more there are.
fn first_items(items: &[String], n: usize) -> String {
    let mut out = items.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > n {
        out.push_str(&format!(" and {} more", items.len() - n));
    }
    out
}
