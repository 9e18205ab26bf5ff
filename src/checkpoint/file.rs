//! Reading checkpoint files (safetensors and PyTorch `.pth`) and writing safetensors atomically.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::{pth_guard, Metadata};
use crate::error::{Error, Result};

fn bad(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Tensors in the file's own names, and its `__metadata__` if it is a safetensors file with one.
pub(super) type RawCheckpoint = (Vec<(String, Tensor)>, Option<HashMap<String, String>>);

/// Reads a `.safetensors` or PyTorch `.pth`/`.pt`/`.bin` file, by its first bytes.
pub(super) fn read(path: &Path, device: &Device) -> Result<RawCheckpoint> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.starts_with(b"PK\x03\x04") {
        return Ok((read_pth(path, &bytes, device)?, None));
    }
    parse_safetensors(&bytes, path, device)
}

/// Parses safetensors bytes; `path` names them in errors.
pub(super) fn parse_safetensors(bytes: &[u8], path: &Path, device: &Device) -> Result<RawCheckpoint> {
    if bytes.len() < 8 {
        return Err(bad(
            path,
            format!("truncated: {} bytes, not a safetensors or .pth file", bytes.len()),
        ));
    }
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(path, format!("not a valid safetensors file: {e}")))?;
    let tensors = candle_core::safetensors::load_buffer(bytes, device).map_err(|e| bad(path, e))?;
    Ok((tensors.into_iter().collect(), header.metadata().clone()))
}

/// Reads a `torch.save`d state dict without executing any pickle code: the dict itself, or
/// the one under `state_dict` or `model`, as training scripts often save.
fn read_pth(path: &Path, bytes: &[u8], device: &Device) -> Result<Vec<(String, Tensor)>> {
    pth_guard::check_container(bytes).map_err(|m| bad(path, m))?;
    for key in [None, Some("state_dict"), Some("model")] {
        let pth = match candle_core::pickle::PthTensors::new(path, key) {
            Ok(pth) => pth,
            Err(e) if key.is_none() && !matches!(e, candle_core::Error::Msg(_)) => {
                return Err(bad(path, format!("not a readable PyTorch file: {e}")));
            }
            Err(_) => continue,
        };
        if pth.tensor_infos().is_empty() {
            continue;
        }
        pth_guard::check_tensors(bytes, pth.tensor_infos().values()).map_err(|m| bad(path, m))?;
        return pth
            .tensor_infos()
            .keys()
            .map(|name| {
                let tensor = pth.get(name)?.expect("listed tensor");
                Ok((name.clone(), tensor.to_device(device)?))
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(|e| bad(path, e));
    }
    Err(bad(
        path,
        "no tensors found (looked at the top level, `state_dict` and `model`)",
    ))
}

/// Writes tensors and metadata as safetensors, atomically: a temporary file in the same folder,
/// flushed to disk, then renamed over `path`. A failure leaves any previous file intact.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<&Metadata>,
) -> Result<()> {
    let mut contiguous = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        contiguous.push((name.as_str(), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    let bytes = safetensors::serialize(
        contiguous.iter().map(|(n, t)| (*n, t)),
        metadata.map(Metadata::to_map),
    )
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
        let kept = if path.exists() {
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
