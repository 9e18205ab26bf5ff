//! PyTorch `.pth` files, read without executing any pickle code, in both of `torch.save`'s
//! formats (torch/serialization.py):
//! - the zip container (PyTorch 1.6 and later): `ARCHIVE/data.pkl` holds the object, with each
//!   storage a persistent id, and `ARCHIVE/data/KEY` each storage's raw bytes;
//! - the legacy stream (every file saved before 2020, `_use_new_zipfile_serialization=False`,
//!   and torchvision's published DenseNet weights): five pickles one after another (the magic
//!   number 0x1950a86a20f9469cfc6c, the protocol version 1001, a `sys_info` dict, the object,
//!   the sorted list of storage keys), then each storage in that order as its element count
//!   (int64, little-endian) followed by its raw bytes.
//!
//! Pickles are parsed by candle's pickle machine (protocol 2, `torch.save`'s default) after
//! [`pth_guard`](super::pth_guard) has checked every length in them against the bytes that
//! follow; tensors are then cut from their storages here, with their offsets, shapes and
//! strides checked against the storage's length.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

use super::pth_guard::{check_container, scan_pickle};

/// The first bytes of a legacy file: PROTO 2 and the magic number as a 10-byte LONG1. Files
/// saved with another `pickle_protocol` are recognised by [`is_legacy`] too.
const LEGACY_MAGIC: [u8; 12] = [
    0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

/// The legacy format's protocol version (`PROTOCOL_VERSION` in torch/serialization.py).
const LEGACY_VERSION: i64 = 1001;

/// Keys under which training scripts nest the state dict, most specific first: `state_dict`
/// (Lightning, timm's training checkpoints), `model_state_dict` (PyTorch's tutorials),
/// `model`, `net`, `network`, `module`, then timm's exponential moving average.
const NESTING_KEYS: &[&str] = &[
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "network",
    "module",
    "state_dict_ema",
    "model_ema",
];

/// True for a zip container (`PK\x03\x04`), the format of `torch.save` since PyTorch 1.6.
pub(super) fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// True when `bytes` begin with the legacy format's magic-number pickle, in any protocol.
pub(super) fn is_legacy(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(32)];
    head.first() == Some(&0x80) && head.windows(LEGACY_MAGIC.len()).any(|w| w == LEGACY_MAGIC)
}

/// The tensors of a `.pth` file, in the file's own names, with notices for the user.
pub(super) struct PthContents {
    /// Every tensor of the state dict that was read, in file order.
    pub tensors: Vec<(String, Tensor)>,
    /// What the reader decided on the user's behalf (which nested dict it read).
    pub notices: Vec<String>,
}

/// Reads the state dict of a `.pth` file in either format (`is_zip` or `is_legacy` must hold):
/// the top-level dict if it holds tensors, else the dict nested under one of
/// [`NESTING_KEYS`] (or the only nested dict holding tensors). Errors are plain sentences
/// without the file's name.
pub(super) fn read(bytes: &[u8], device: &Device, key: &StateDictKey) -> Result<PthContents, String> {
    let (root, storages) = if is_zip(bytes) {
        read_zip(bytes)?
    } else {
        read_legacy(bytes)?
    };
    let (entries, notices) = select_state_dict(root, key)?;
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let Some(tensor) = TensorRef::from_object(&value) else {
            continue;
        };
        let tensor = tensor.map_err(|m| format!("tensor {name}: {m}"))?;
        let t = tensor
            .materialise(&storages, device)
            .map_err(|m| format!("tensor {name}: {m}"))?;
        tensors.push((name, t));
    }
    if tensors.is_empty() {
        return Err("no tensors found in its state dict".into());
    }
    Ok(PthContents { tensors, notices })
}

/// Each storage's raw bytes, by key.
type Storages = HashMap<String, Vec<u8>>;

fn parse_pickle(pickle: &[u8], what: &str) -> Result<Object, String> {
    let protocol = match pickle {
        [0x80, p, ..] => *p,
        _ => 2,
    };
    if protocol > 3 {
        return Err(format!(
            "{what}: pickle protocol {protocol} is not supported (torch.save's default, 2, is): \
             save it again with `torch.save(torch.load(PATH), NEW_PATH)`"
        ));
    }
    let mut stack = Stack::empty();
    stack
        .read_loop(&mut Cursor::new(pickle))
        .map_err(|e| format!("{what}: {e}"))?;
    stack.finalize().map_err(|e| format!("{what}: {e}"))
}

fn read_zip(bytes: &[u8]) -> Result<(Object, Storages), String> {
    check_container(bytes)?;
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| e.to_string())?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let pickle_name = names
        .iter()
        .find(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .ok_or("a zip file without data.pkl: not a torch.save file")?
        .clone();
    let archive = pickle_name.trim_end_matches("data.pkl").to_string();
    if let Ok(mut order) = zip.by_name(&format!("{archive}byteorder")) {
        let mut text = String::new();
        let _ = (&mut order).take(16).read_to_string(&mut text);
        if text.trim() == "big" {
            return Err("saved on a big-endian machine, which is not supported".into());
        }
    }
    let read_entry = |zip: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str| -> Result<Vec<u8>, String> {
        let mut entry = zip.by_name(name).map_err(|e| format!("{name}: {e}"))?;
        let mut out = Vec::with_capacity(entry.size().min(bytes.len() as u64) as usize);
        (&mut entry)
            .take(bytes.len() as u64)
            .read_to_end(&mut out)
            .map_err(|e| format!("{name}: {e}"))?;
        Ok(out)
    };
    let root = parse_pickle(&read_entry(&mut zip, &pickle_name)?, &pickle_name)?;
    let mut storages = Storages::new();
    for id in persistent_ids(&root) {
        if let std::collections::hash_map::Entry::Vacant(slot) = storages.entry(id.key) {
            let data = read_entry(&mut zip, &format!("{archive}data/{}", slot.key()))?;
            slot.insert(data);
        }
    }
    Ok((root, storages))
}

fn read_legacy(bytes: &[u8]) -> Result<(Object, Storages), String> {
    // The magic number is a LONG1 of 10 bytes, wider than the pickle machine's integers:
    // its pickle is checked by its bytes (`is_legacy` found them) and skipped.
    let magic_end = bytes
        .windows(LEGACY_MAGIC.len())
        .position(|w| w == LEGACY_MAGIC)
        .map(|at| at + LEGACY_MAGIC.len())
        .filter(|&end| bytes.get(end) == Some(&b'.'))
        .ok_or("magic number: not followed by the end of its pickle")?;
    let mut at = magic_end + 1;
    let mut next_pickle = |what: &str| -> Result<&[u8], String> {
        let rest = &bytes[at..];
        let len = scan_pickle(rest).map_err(|m| format!("{what}: {m}"))?;
        at += len;
        Ok(&rest[..len])
    };
    match parse_pickle(next_pickle("protocol version")?, "protocol version")? {
        Object::Int(v) if v as i64 == LEGACY_VERSION => {}
        other => {
            return Err(format!(
                "legacy protocol version {other:?}, expected {LEGACY_VERSION}"
            ))
        }
    }
    let sys_info = parse_pickle(next_pickle("sys_info")?, "sys_info")?;
    if dict_get(&sys_info, "little_endian") == Some(&Object::Bool(false)) {
        return Err("saved on a big-endian machine, which is not supported".into());
    }
    let root = parse_pickle(next_pickle("the saved object")?, "the saved object")?;
    let keys = match parse_pickle(next_pickle("storage keys")?, "storage keys")? {
        Object::List(keys) => keys
            .into_iter()
            .map(|k| String::try_from(k).map_err(|k| format!("storage key {k:?} is not a string")))
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(format!("storage keys: expected a list, found {other:?}")),
    };
    let element_sizes: HashMap<String, usize> = persistent_ids(&root)
        .into_iter()
        .map(|id| (id.key, id.storage.size))
        .collect();
    let mut storages = Storages::new();
    for key in keys {
        let size = *element_sizes
            .get(&key)
            .ok_or_else(|| format!("storage {key} is listed but no tensor uses it"))?;
        let header = bytes
            .get(at..at + 8)
            .ok_or_else(|| format!("storage {key}: the file ends at byte {}", bytes.len()))?;
        let count = u64::from_le_bytes(header.try_into().expect("8 bytes"));
        at += 8;
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(size))
            .filter(|&len| len <= bytes.len() - at)
            .ok_or_else(|| {
                format!(
                    "storage {key} claims {count} elements of {size} bytes, but {} bytes remain",
                    bytes.len() - at
                )
            })?;
        storages.insert(key, bytes[at..at + len].to_vec());
        at += len;
    }
    Ok((root, storages))
}

/// The value of `key` in a pickled dict.
fn dict_get<'a>(obj: &'a Object, key: &str) -> Option<&'a Object> {
    match obj {
        Object::Dict(items) => items
            .iter()
            .find(|(k, _)| matches!(k, Object::Unicode(s) if s == key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// The `(name, value)` items of a dict whose keys are strings.
fn string_items(items: Vec<(Object, Object)>) -> Items {
    items
        .into_iter()
        .filter_map(|(k, v)| String::try_from(k).ok().map(|k| (k, v)))
        .collect()
}

fn holds_tensors(items: &[(Object, Object)]) -> bool {
    items.iter().any(|(_, v)| TensorRef::from_object(v).is_some())
}

/// A pickled dict's items under string keys.
type Items = Vec<(String, Object)>;

/// Which state dict to read from a training checkpoint that holds several (timm's
/// `state_dict` and `state_dict_ema`, a script's `model` and `teacher`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StateDictKey {
    /// The model's own: the top level when it holds tensors, else the first of `state_dict`,
    /// `model_state_dict`, `model`, `net`, `network`, `module`, then timm's `state_dict_ema`
    /// and `model_ema`, else the only dict of tensors.
    #[default]
    Model,
    /// The exponential moving average of the weights, as timm's
    /// `load_checkpoint(use_ema=True)` chooses it: `state_dict_ema`, else `model_ema`; refused
    /// when the file has neither.
    Ema,
    /// The dict under this key; `a.b` reads `b` inside `a`.
    Key(String),
}

/// How deep dicts of tensors are looked for under the top level (`model.ema.module` is 3).
const MAX_DEPTH: usize = 4;

/// The dict of tensors to read from the saved object, as `key` asks, and a notice when it was
/// nested.
fn select_state_dict(root: Object, key: &StateDictKey) -> Result<(Items, Vec<String>), String> {
    let items = match root {
        Object::Dict(items) => string_items(items),
        Object::Build { .. } | Object::Reduce { .. } => {
            return Err(
                "holds a pickled Python object (a whole model?), not a state dict: save \
                 model.state_dict() instead"
                    .into(),
            )
        }
        other => return Err(format!("holds {}, not a state dict", kind_of(&other))),
    };
    // Every dict of tensors under the top level, by dotted path, outermost first.
    let mut nested: Vec<(String, Vec<(Object, Object)>)> = Vec::new();
    collect_tensor_dicts(&items, "", MAX_DEPTH, &mut nested);
    let paths: Vec<&str> = nested.iter().map(|(k, _)| k.as_str()).collect();
    let found = || match paths.as_slice() {
        [] => "it holds no dict of tensors under a key".to_string(),
        paths => format!("its dicts of tensors are under {}", paths.join(", ")),
    };
    let chosen = match key {
        StateDictKey::Model if is_state_dict(&items) => return Ok((items, Vec::new())),
        StateDictKey::Model => NESTING_KEYS
            .iter()
            .find_map(|want| paths.iter().position(|k| k == want))
            .or(if nested.len() == 1 { Some(0) } else { None }),
        StateDictKey::Ema => Some(
            ["state_dict_ema", "model_ema"]
                .iter()
                .find_map(|want| paths.iter().position(|k| k == want))
                .ok_or_else(|| {
                    format!(
                        "has no EMA copy of the weights (state_dict_ema or model_ema): {}",
                        found()
                    )
                })?,
        ),
        StateDictKey::Key(path) => {
            return match value_at(&items, path) {
                Some(Object::Dict(inner)) if holds_tensors(&inner) => Ok((
                    string_items(inner),
                    vec![format!("read the state dict under `{path}`")],
                )),
                Some(Object::Dict(_)) => Err(format!("`{path}` is a dict without tensors: {}", found())),
                Some(other) => Err(format!(
                    "`{path}` holds {}, not a state dict: {}",
                    kind_of(&other),
                    found()
                )),
                None => Err(format!("has no key `{path}`: {}", found())),
            }
        }
    };
    let Some(index) = chosen else {
        return Err(if nested.is_empty() {
            format!("no tensors found (looked at the top level and the dicts under it, {MAX_DEPTH} deep)")
        } else {
            format!(
                "holds several dicts of tensors ({}) and none under a known key ({}): save the \
                 model's state dict alone, or name the key to read",
                paths.join(", "),
                NESTING_KEYS.join(", ")
            )
        });
    };
    let others: Vec<String> = paths
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, k)| match *k {
            "state_dict_ema" | "model_ema" => format!("{k}, timm's EMA of the weights, which use_ema reads"),
            k => k.to_string(),
        })
        .collect();
    let mut notice = format!("read the state dict under `{}`", paths[index]);
    if !others.is_empty() {
        notice.push_str(&format!(" (also present, not read: {})", others.join("; ")));
    }
    let (_, inner) = nested.into_iter().nth(index).expect("chosen index");
    Ok((string_items(inner), vec![notice]))
}

/// Every dict of tensors among `items`' values and the dicts under them, down to `depth`
/// levels, by dotted path from the top (`model.ema.module`).
fn collect_tensor_dicts(
    items: &Items,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, Vec<(Object, Object)>)>,
) {
    if depth == 0 {
        return;
    }
    for (k, v) in items {
        if let Object::Dict(inner) = v {
            let path = match prefix {
                "" => k.clone(),
                p => format!("{p}.{k}"),
            };
            if holds_tensors(inner) {
                out.push((path.clone(), inner.clone()));
            }
            collect_tensor_dicts(&string_items(inner.clone()), &path, depth - 1, out);
        }
    }
}

/// True when these items (the top level) are the state dict itself.
fn is_state_dict(items: &Items) -> bool {
    items.iter().any(|(_, v)| TensorRef::from_object(v).is_some())
}

/// The value under `path` in `items`: the key as written, else its dotted parts one level each.
fn value_at(items: &Items, path: &str) -> Option<Object> {
    if let Some((_, v)) = items.iter().find(|(k, _)| k == path) {
        return Some(v.clone());
    }
    let (first, rest) = path.split_once('.')?;
    match items.iter().find(|(k, _)| k == first).map(|(_, v)| v)? {
        Object::Dict(inner) => value_at(&string_items(inner.clone()), rest),
        _ => None,
    }
}

fn kind_of(obj: &Object) -> &'static str {
    match obj {
        Object::List(_) => "a list",
        Object::Tuple(_) => "a tuple",
        Object::Unicode(_) => "a string",
        Object::Int(_) | Object::Long(_) => "a number",
        Object::None => "None",
        _ => "an object",
    }
}

/// A storage's element type, from its class in the persistent id (`torch.FloatStorage`, ...).
#[derive(Debug, Clone, Copy)]
struct StorageType {
    /// PyTorch's name of the element type, for messages.
    name: &'static str,
    /// Bytes per element.
    size: usize,
    /// candle's type, where candle has one.
    dtype: Option<DType>,
}

impl StorageType {
    fn from_class(class: &str) -> Option<Self> {
        let (name, size, dtype) = match class {
            "FloatStorage" => ("float32", 4, Some(DType::F32)),
            "DoubleStorage" => ("float64", 8, Some(DType::F64)),
            "HalfStorage" => ("float16", 2, Some(DType::F16)),
            "BFloat16Storage" => ("bfloat16", 2, Some(DType::BF16)),
            "LongStorage" => ("int64", 8, Some(DType::I64)),
            "IntStorage" => ("int32", 4, Some(DType::I32)),
            "ShortStorage" => ("int16", 2, Some(DType::I16)),
            "ByteStorage" => ("uint8", 1, Some(DType::U8)),
            "CharStorage" => ("int8", 1, None),
            "BoolStorage" => ("bool", 1, None),
            "ComplexFloatStorage" => ("complex64", 8, None),
            "ComplexDoubleStorage" => ("complex128", 16, None),
            _ => return None,
        };
        Some(Self { name, size, dtype })
    }
}

/// A storage as a persistent id names it: `('storage', torch.FloatStorage, key, location,
/// numel[, view_metadata])`; a legacy view `(view_key, offset, size)` starts `offset` elements in.
#[derive(Debug, Clone)]
struct StorageId {
    key: String,
    storage: StorageType,
    view_offset: usize,
}

impl StorageId {
    fn from_object(obj: &Object) -> Result<Self, String> {
        let Object::Tuple(fields) = obj else {
            return Err(format!("storage id {obj:?} is not a tuple"));
        };
        let (class, key) = match fields.as_slice() {
            [Object::Unicode(tag), Object::Class { class_name, .. }, Object::Unicode(key), ..]
                if tag == "storage" =>
            {
                (class_name, key)
            }
            _ => return Err(format!("unknown storage id {fields:?}")),
        };
        let storage =
            StorageType::from_class(class).ok_or_else(|| format!("unknown storage type {class}"))?;
        let view_offset = match fields.get(5) {
            Some(Object::Tuple(view)) => view.get(1).and_then(as_usize).ok_or("bad storage view")?,
            _ => 0,
        };
        Ok(Self {
            key: key.clone(),
            storage,
            view_offset,
        })
    }
}

/// Every storage id in the object, found without recursion (a hostile pickle can nest deeply).
fn persistent_ids(root: &Object) -> Vec<StorageId> {
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(obj) = todo.pop() {
        match obj {
            Object::PersistentLoad(id) => out.extend(StorageId::from_object(id).ok()),
            Object::Tuple(v) | Object::List(v) => todo.extend(v.iter()),
            Object::Dict(items) => todo.extend(items.iter().flat_map(|(k, v)| [k, v])),
            Object::Reduce { callable, args } | Object::Build { callable, args } => {
                todo.push(callable);
                todo.push(args);
            }
            _ => {}
        }
    }
    out
}

fn as_usize(obj: &Object) -> Option<usize> {
    match obj {
        Object::Int(v) => usize::try_from(*v).ok(),
        Object::Long(v) => usize::try_from(*v).ok(),
        _ => None,
    }
}

fn as_usizes(obj: &Object) -> Option<Vec<usize>> {
    match obj {
        Object::Tuple(v) | Object::List(v) => v.iter().map(as_usize).collect(),
        _ => None,
    }
}

/// A tensor as the pickle rebuilds it: `torch._utils._rebuild_tensor_v2(storage, offset,
/// size, stride, ...)` (or `_rebuild_tensor` before PyTorch 0.4), possibly wrapped in
/// `_rebuild_parameter` or `torch._tensor._rebuild_from_type_v2`.
#[derive(Debug)]
struct TensorRef {
    storage: StorageId,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

impl TensorRef {
    /// `None` when `obj` is not a tensor at all; an error when it is one that cannot be read.
    fn from_object(obj: &Object) -> Option<Result<Self, String>> {
        let Object::Reduce { callable, args } = obj else {
            return None;
        };
        let Object::Class {
            module_name,
            class_name,
        } = callable.as_ref()
        else {
            return None;
        };
        let Object::Tuple(args) = args.as_ref() else {
            return None;
        };
        match (module_name.as_str(), class_name.as_str()) {
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => Some(Self::from_args(args)),
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                Self::from_object(args.first()?)
            }
            ("torch._tensor", "_rebuild_from_type_v2") => match args.as_slice() {
                [func, _type, inner, ..] => Self::from_object(&Object::Reduce {
                    callable: Box::new(func.clone()),
                    args: Box::new(inner.clone()),
                }),
                _ => None,
            },
            ("torch._utils", name) if name.starts_with("_rebuild") => Some(Err(format!(
                "a {name} tensor (quantised, sparse or on another device) cannot be read"
            ))),
            _ => None,
        }
    }

    fn from_args(args: &[Object]) -> Result<Self, String> {
        let [Object::PersistentLoad(id), offset, shape, stride, ..] = args else {
            return Err(format!("unexpected tensor arguments {args:?}"));
        };
        let storage = StorageId::from_object(id)?;
        let offset = as_usize(offset).ok_or("bad storage offset")?;
        let shape = as_usizes(shape).ok_or("bad shape")?;
        let stride = as_usizes(stride).ok_or("bad strides")?;
        if shape.len() != stride.len() {
            return Err(format!("shape {shape:?} with strides {stride:?}"));
        }
        Ok(Self {
            storage,
            offset,
            shape,
            stride,
        })
    }

    /// Cuts the tensor out of its storage, checking that every element it spans is there.
    fn materialise(&self, storages: &Storages, device: &Device) -> Result<Tensor, String> {
        let kind = self.storage.storage;
        let dtype = kind
            .dtype
            .ok_or_else(|| format!("its dtype {} has no float or integer counterpart here", kind.name))?;
        let data = storages
            .get(&self.storage.key)
            .ok_or_else(|| format!("its storage {} is not in the file", self.storage.key))?;
        let available = data.len() / kind.size;
        let numel = self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let start = self.offset.checked_add(self.storage.view_offset);
        // The last element the tensor reads, plus one.
        let end = match (numel, start) {
            (Some(0), Some(s)) => Some(s),
            (Some(_), Some(s)) => self
                .shape
                .iter()
                .zip(&self.stride)
                .try_fold(s, |e, (&d, &st)| {
                    (d - 1).checked_mul(st).and_then(|x| e.checked_add(x))
                })
                .and_then(|e| e.checked_add(1)),
            _ => None,
        };
        let (Some(numel), Some(start), Some(end)) = (numel, start, end) else {
            return Err(format!("shape {:?} overflows", self.shape));
        };
        if end > available {
            return Err(format!(
                "shape {:?} with strides {:?} at offset {start} needs {end} elements, but its \
                 storage {} holds {available}",
                self.shape, self.stride, self.storage.key
            ));
        }
        let bytes = if self.is_contiguous() {
            data[start * kind.size..(start + numel) * kind.size].to_vec()
        } else {
            self.gather(data, start, numel, kind.size)
        };
        Tensor::from_raw_buffer(&bytes, dtype, &self.shape, device).map_err(|e| e.to_string())
    }

    fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// The elements of a strided tensor in row-major order (bounds checked by the caller).
    fn gather(&self, data: &[u8], start: usize, numel: usize, size: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(numel * size);
        let mut index = vec![0usize; self.shape.len()];
        for _ in 0..numel {
            let at = start + index.iter().zip(&self.stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&data[at * size..(at + 1) * size]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < self.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        out
    }
}
