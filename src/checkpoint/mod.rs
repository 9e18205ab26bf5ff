//! Checkpoints: safetensors in and out, every naming scheme users have, strict loading that
//! names every problem, and the Hugging Face hub.
//!
//! ```no_run
//! use candle_core::Device;
//! use densenet_zoo::checkpoint::Checkpoint;
//!
//! // A path (safetensors, or a .pth in either of torch.save's formats) or `hf:OWNER/REPO[:FILE]`.
//! let mut ckpt = Checkpoint::open("hf:timm/densenet121.tv_in1k", &Device::Cpu)?;
//! let spec = ckpt.spec(None)?;            // from the metadata, else from the tensor shapes
//! for notice in &ckpt.notices {           // what loading cast, stripped or decided
//!     eprintln!("note: {notice}");
//! }
//! let model = ckpt.into_model(&spec, &Device::Cpu)?;
//! # Ok::<(), densenet_zoo::Error>(())
//! ```

mod adapt;
mod architecture;
mod expected;
mod file;
mod foreign;
pub mod hub;
mod metadata;
mod names;
mod pth;
mod pth_guard;

pub use crate::output::{is_temporary, write_atomic};
pub use adapt::{adapt, adapt_input_conv};
pub use architecture::{architecture_differences, nearest_builtin, preprocessing_source, spec_from_tensors};
pub(crate) use expected::record_tensors;
pub use expected::{expected_tensors, expected_tensors_with_init, is_buffer, TensorSpec};
pub use file::{kind_of_file, write_safetensors, write_safetensors_with};
pub use metadata::{Metadata, ModelKind, PreprocessRecord, TABULAR_SPEC};
pub use names::{canonical_to_d2l, canonical_to_d2l_current, to_canonical, Canonical, NamingScheme};
pub use pth::StateDictKey;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

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
        match hub::HubFile::parse(source)? {
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
        Self::from_raw(path.display().to_string(), file::read(path, device, key)?)
    }

    /// Parses safetensors bytes held in memory (such as the embedded default model).
    pub fn from_bytes(bytes: &[u8], origin: &str, device: &Device) -> Result<Self> {
        Self::from_raw(
            origin.to_string(),
            file::parse_safetensors(bytes, Path::new(origin), device)?,
        )
    }

    fn from_raw(origin: String, raw: file::RawCheckpoint) -> Result<Self> {
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

    /// The class name of each of `spec`'s outputs: the names the file records when their
    /// number fits, else the spec's built-in list, else `class0`, `class1`, ...
    pub fn class_names(&self, spec: &VariantSpec) -> Vec<String> {
        match &self.metadata {
            Some(m) if m.classes.len() == spec.architecture.num_classes => m.classes.clone(),
            _ => crate::labels::for_classes(
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
                architecture::fit_preprocess_channels(spec);
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

fn without_counters(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect()
}

/// Checks that `tensors` are exactly the tensors of `spec`: every name present with its shape
/// and dtype F32, and nothing else (`num_batches_tracked` entries are accepted and ignored;
/// names in `may_miss` may be absent), and, if so, that every value is finite. One error names
/// `origin` and lists every missing tensor, every unexpected one, every shape or dtype mismatch,
/// or every tensor holding NaN or infinite values.
pub fn check_tensors(
    spec: &VariantSpec,
    tensors: &HashMap<String, Tensor>,
    origin: &str,
    may_miss: &[&str],
) -> Result<()> {
    let expected = expected_tensors(spec)?;
    let mut problems = Vec::new();
    for t in &expected {
        match tensors.get(&t.name) {
            None if may_miss.contains(&t.name.as_str()) => {}
            None => problems.push(format!("missing tensor {} {:?}", t.name, t.shape)),
            Some(found) if found.dims() != t.shape.as_slice() => problems.push(format!(
                "tensor {}: expected shape {:?}, found {:?}",
                t.name,
                t.shape,
                found.dims()
            )),
            Some(found) if found.dtype() != DType::F32 => problems.push(format!(
                "tensor {}: expected dtype F32, found {:?}",
                t.name,
                found.dtype()
            )),
            Some(_) => {}
        }
    }
    let known: HashSet<&str> = expected.iter().map(|t| t.name.as_str()).collect();
    let mut unexpected: Vec<&String> = tensors
        .keys()
        .filter(|k| !known.contains(k.as_str()) && !k.ends_with("num_batches_tracked"))
        .collect();
    unexpected.sort();
    problems.extend(unexpected.into_iter().map(|k| format!("unexpected tensor {k}")));
    if problems.is_empty() {
        // Only a checkpoint that fits is worth scanning: a NaN or infinite weight makes every
        // output NaN, so it is refused too.
        for t in &expected {
            if let Some(found) = tensors.get(&t.name) {
                let values = found.flatten_all()?.to_vec1::<f32>()?;
                let bad = values.iter().filter(|v| !v.is_finite()).count();
                if bad > 0 {
                    problems.push(format!(
                        "tensor {}: {bad} of {} values are NaN or infinite",
                        t.name,
                        values.len()
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Checkpoint {
            path: origin.to_string(),
            message: format!(
                "does not fit variant {} ({} problem{}):\n  {}",
                spec.name,
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                first_lines(&problems.join("\n  "), 20)
            ),
        })
    }
}

/// The state dict to write for `spec`: every expected tensor from `tensors` in torchvision's
/// order, plus a `num_batches_tracked` (int64 scalar) after each batch norm's running variance,
/// as torchvision's `state_dict()` has them, taken from `tensors` or else 0.
pub fn state_dict(spec: &VariantSpec, tensors: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for t in expected_tensors(spec)? {
        let tensor = tensors.get(&t.name).ok_or_else(|| Error::Checkpoint {
            path: spec.name.clone(),
            message: format!("missing tensor {}", t.name),
        })?;
        out.push((t.name.clone(), tensor.clone()));
        if let Some(norm) = t.name.strip_suffix(".running_var") {
            let name = format!("{norm}.num_batches_tracked");
            let counter = match tensors.get(&name) {
                Some(c) => c.to_dtype(DType::I64)?.reshape(())?,
                None => Tensor::new(0i64, &Device::Cpu)?,
            };
            out.push((name, counter));
        }
    }
    Ok(out)
}

/// The state dict of `spec` ([`state_dict`]) under the names of `scheme`: torchvision's, or
/// the book's first or current edition, which need the book's layout (plain layers, the
/// ImageNet stem, conv biases). torchvision's legacy names are read, never written.
pub fn export_state_dict(
    spec: &VariantSpec,
    tensors: &HashMap<String, Tensor>,
    scheme: NamingScheme,
) -> Result<Vec<(String, Tensor)>> {
    let canonical = state_dict(spec, tensors)?;
    let refuse = |message: String| Error::Spec {
        origin: spec.name.clone(),
        message,
    };
    let book = spec.architecture.has_book_layout();
    match scheme {
        NamingScheme::Torchvision => Ok(canonical),
        NamingScheme::TorchvisionLegacy => Err(refuse(
            "torchvision's legacy names are read, not written: torchvision loads its current ones".into(),
        )),
        NamingScheme::D2l | NamingScheme::D2lCurrent if !book => Err(refuse(
            "the book's names need its layout (plain layers, ImageNet stem, conv biases)".into(),
        )),
        NamingScheme::D2l => canonical_to_d2l(canonical, &spec.architecture.block_config).map_err(refuse),
        NamingScheme::D2lCurrent => canonical_to_d2l_current(canonical).map_err(refuse),
    }
}

/// Builds `spec` for inference from a map of canonical-named tensors, refusing any mismatch.
pub fn model_from_tensors(
    spec: &VariantSpec,
    tensors: HashMap<String, Tensor>,
    origin: &str,
    device: &Device,
) -> Result<DenseNet> {
    Checkpoint {
        origin: origin.to_string(),
        scheme: NamingScheme::Torchvision,
        tensors,
        metadata: None,
        optimizer: HashMap::new(),
        notices: Vec::new(),
    }
    .into_model(spec, device)
}

/// The tensors of a `VarMap` (parameters and running statistics), by name, detached: they share
/// the variables' storage, and a model built on them records no autograd graph.
pub fn varmap_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
        .collect()
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

/// The first `n` lines of `text`, and how many more there are.
fn first_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= n {
        return text.to_string();
    }
    format!("{}\n  ... and {} more", lines[..n].join("\n"), lines.len() - n)
}
