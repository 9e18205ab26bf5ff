//! Reading checkpoint files (safetensors, PyTorch's zip and legacy `.pth`) and writing
//! safetensors atomically.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::{foreign, pth, StateDictKey};
use crate::checkpoint::{Metadata, ModelKind};
use crate::error::{Error, Result};
use crate::output::write_atomic;

fn bad(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// What a checkpoint file holds, before renaming.
pub(in crate::checkpoint) struct RawCheckpoint {
    /// Tensors in the file's own names, in file order.
    pub tensors: Vec<(String, Tensor)>,
    /// The `__metadata__` of a safetensors file, where it has one.
    pub header: Option<HashMap<String, String>>,
    /// What reading decided on the user's behalf.
    pub notices: Vec<String>,
}

/// Reads a checkpoint file, its format decided by its bytes (never by its extension):
/// PyTorch's zip container, PyTorch's legacy stream, or safetensors.
pub(in crate::checkpoint) fn read(path: &Path, device: &Device, key: &StateDictKey) -> Result<RawCheckpoint> {
    if path.is_dir() {
        return Err(bad(path, foreign::describe_folder(path)));
    }
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // Keras, ONNX, TensorFlow, TorchScript, GGUF, NumPy ...: named, with what to do instead.
    if !pth::is_legacy(&bytes) {
        if let Some(what) = foreign::recognise(&bytes, path) {
            return Err(bad(path, what));
        }
    }
    if pth::is_zip(&bytes) || pth::is_legacy(&bytes) {
        let format = if pth::is_zip(&bytes) {
            "PyTorch zip (torch.save, 1.6 and later)"
        } else {
            "PyTorch legacy (torch.save before 1.6)"
        };
        let contents = pth::read(&bytes, device, key).map_err(|m| bad(path, format!("{format}: {m}")))?;
        return Ok(RawCheckpoint {
            tensors: contents.tensors,
            header: None,
            notices: contents.notices,
        });
    }
    if let (true, Err(e)) = (bytes.len() >= 8, safetensors::SafeTensors::read_metadata(&bytes)) {
        return Err(bad(
            path,
            format!(
                "not a valid safetensors file ({e}), nor a PyTorch file (zip: starts with \
                 PK\\x03\\x04; legacy: a pickle of the magic number 0x1950a86a20f9469cfc6c)"
            ),
        ));
    }
    if *key != StateDictKey::Model {
        return Err(bad(
            path,
            "a safetensors file holds one state dict: an EMA copy or another key is chosen only in a \
             training checkpoint saved by torch.save",
        ));
    }
    parse_safetensors(&bytes, path, device)
}

/// Parses safetensors bytes; `path` names them in errors, and a tensor that cannot be read
/// (a dtype candle lacks, such as BOOL) is named too.
pub(in crate::checkpoint) fn parse_safetensors(
    bytes: &[u8],
    path: &Path,
    device: &Device,
) -> Result<RawCheckpoint> {
    if bytes.len() < 8 {
        return Err(bad(
            path,
            format!("truncated: {} bytes, not a safetensors or .pth file", bytes.len()),
        ));
    }
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(path, format!("not a valid safetensors file: {e}")))?;
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(path, format!("not a valid safetensors file: {e}")))?;
    let mut tensors = Vec::with_capacity(file.len());
    for (name, view) in file.iter() {
        use candle_core::safetensors::Load;
        let tensor = view
            .load(device)
            .map_err(|e| bad(path, format!("tensor {name}: {e}")))?;
        tensors.push((name.to_string(), tensor));
    }
    Ok(RawCheckpoint {
        tensors,
        header: header.metadata().clone(),
        notices: Vec::new(),
    })
}

/// The kind of model in the file at `path`, from its safetensors header alone (the tensors are
/// not read); `None` for a file that is not safetensors, or cannot be read.
pub fn kind_of_file(path: &Path) -> Option<ModelKind> {
    let read = || -> std::io::Result<Option<HashMap<String, String>>> {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut size = [0u8; 8];
        file.read_exact(&mut size)?;
        // safetensors' own limit on a header.
        let size = u64::from_le_bytes(size).min(100_000_000);
        let mut header = Vec::new();
        file.take(size).read_to_end(&mut header)?;
        let header: serde_json::Value = serde_json::from_slice(&header).map_err(std::io::Error::other)?;
        let metadata = header.get("__metadata__").cloned().unwrap_or_default();
        Ok(serde_json::from_value(metadata).ok())
    };
    match read() {
        Ok(Some(metadata)) => Some(ModelKind::of(&metadata)),
        Ok(None) => Some(ModelKind::Image),
        Err(_) => None,
    }
}

/// Writes tensors and metadata as safetensors, atomically: a temporary file in the same folder,
/// flushed to disk, then renamed over `path`. A failure leaves any previous file intact.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<&Metadata>,
) -> Result<()> {
    write_safetensors_with(path, tensors, metadata.map(Metadata::to_map))
}

/// [`write_safetensors`] with a `__metadata__` map of the caller's own (a features file's
/// file list beside the spec's entries).
pub fn write_safetensors_with(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut contiguous = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        contiguous.push((name.as_str(), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    let bytes = safetensors::serialize(contiguous.iter().map(|(n, t)| (*n, t)), metadata)
        .map_err(|e| bad(path, e))?;
    write_atomic(path, &bytes)
}
