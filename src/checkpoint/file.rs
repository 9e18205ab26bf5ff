//! Reading checkpoint files (safetensors, PyTorch's zip and legacy `.pth`) and writing
//! safetensors atomically.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::{pth, Metadata};
use crate::error::{Error, Result};

fn bad(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// What a checkpoint file holds, before renaming.
pub(super) struct RawCheckpoint {
    /// Tensors in the file's own names, in file order.
    pub tensors: Vec<(String, Tensor)>,
    /// The `__metadata__` of a safetensors file, where it has one.
    pub header: Option<HashMap<String, String>>,
    /// What reading decided on the user's behalf.
    pub notices: Vec<String>,
}

/// Reads a checkpoint file, its format decided by its bytes (never by its extension):
/// PyTorch's zip container, PyTorch's legacy stream, or safetensors.
pub(super) fn read(path: &Path, device: &Device) -> Result<RawCheckpoint> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if pth::is_zip(&bytes) || pth::is_legacy(&bytes) {
        let format = if pth::is_zip(&bytes) {
            "PyTorch zip (torch.save, 1.6 and later)"
        } else {
            "PyTorch legacy (torch.save before 1.6)"
        };
        let contents = pth::read(&bytes, device).map_err(|m| bad(path, format!("{format}: {m}")))?;
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
    parse_safetensors(&bytes, path, device)
}

/// Parses safetensors bytes; `path` names them in errors, and a tensor that cannot be read
/// (a dtype candle lacks, such as BOOL) is named too.
pub(super) fn parse_safetensors(bytes: &[u8], path: &Path, device: &Device) -> Result<RawCheckpoint> {
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

/// Writes `bytes` to `path` through a temporary file and a rename, fsyncing both.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| bad(path, "not a file name"))?;
    if path.is_dir() {
        return Err(io(std::io::Error::other(
            "is a folder: name a file in it; nothing was written",
        )));
    }
    if !dir.is_dir() {
        return Err(io(std::io::Error::other(format!(
            "the folder {} does not exist; nothing was written",
            dir.display()
        ))));
    }
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        let kept = if path.is_file() {
            "the previous file is unchanged"
        } else {
            "nothing was written"
        };
        io(std::io::Error::new(
            e.kind(),
            format!("not written ({e}); {kept}"),
        ))
    })
}

/// True for the temporary files [`write_atomic`] makes, which a killed process leaves behind.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}
