//! Weights from the Hugging Face hub, through the `hf-hub` crate and the standard cache that
//! Python's `huggingface_hub` shares: `hf:OWNER/REPO[:FILE]`, `FILE` defaulting to
//! `model.safetensors`.
//!
//! Honours `HF_HOME` (the cache is `$HF_HOME/hub`), `HF_ENDPOINT` (another server) and
//! `HF_HUB_OFFLINE=1` (the cache only, no request at all).

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// One file of a hub repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// `OWNER/REPO`, e.g. `timm/densenet121.tv_in1k`.
    pub repo: String,
    /// The file in the repository, e.g. `model.safetensors`.
    pub file: String,
}

impl fmt::Display for HubFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hf:{}:{}", self.repo, self.file)
    }
}

impl HubFile {
    /// Parses `hf:OWNER/REPO[:FILE]`; `Ok(None)` for anything not starting with `hf:`.
    pub fn parse(source: &str) -> Result<Option<Self>> {
        let Some(rest) = source.strip_prefix("hf:") else {
            return Ok(None);
        };
        let (repo, file) = rest.split_once(':').unwrap_or((rest, "model.safetensors"));
        let valid = |s: &str| {
            !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && s != ".."
        };
        match repo.split_once('/') {
            Some((owner, name)) if valid(owner) && valid(name) && !file.is_empty() => Ok(Some(Self {
                repo: repo.to_string(),
                file: file.to_string(),
            })),
            _ => Err(Error::Checkpoint {
                path: source.to_string(),
                message: "expected hf:OWNER/REPO or hf:OWNER/REPO:FILE".into(),
            }),
        }
    }

    /// The file's path in the local cache, downloading it first unless it is there.
    pub fn fetch(&self) -> Result<PathBuf> {
        let fail = |message: String| Error::Checkpoint {
            path: self.to_string(),
            message,
        };
        let cache = hf_hub::Cache::from_env();
        if let Some(path) = cache.model(self.repo.clone()).get(&self.file) {
            return Ok(path);
        }
        if offline() {
            return Err(fail(format!(
                "not in the cache at {} and HF_HUB_OFFLINE is set",
                cache.path().display()
            )));
        }
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(true)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let path = api
            .model(self.repo.clone())
            .get(&self.file)
            .map_err(|e| fail(format!("download failed: {e} (run again to resume it)")))?;
        verify_download(&path).map_err(fail)?;
        Ok(path)
    }
}

/// Checks a fresh download against its SHA-256 where the hub gives one (the ETag of every
/// LFS file, which names its blob in the cache). hf-hub keeps a body that ended early without
/// an error when the server sent no length; such a file is removed from the cache here, so
/// that the next run downloads it again instead of reading a corrupt file.
fn verify_download(pointer: &std::path::Path) -> std::result::Result<(), String> {
    use sha2::{Digest, Sha256};
    let blob = std::fs::canonicalize(pointer).map_err(|e| format!("{}: {e}", pointer.display()))?;
    let etag = blob.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if etag.len() != 64 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let mut file = std::fs::File::open(&blob).map_err(|e| format!("{}: {e}", blob.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| format!("{}: {e}", blob.display()))?;
    let found = format!("{:x}", hasher.finalize());
    if found.eq_ignore_ascii_case(etag) {
        return Ok(());
    }
    let size = std::fs::metadata(&blob).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(pointer);
    let _ = std::fs::remove_file(&blob);
    Err(format!(
        "download corrupt: {size} bytes with SHA-256 {found}, expected {etag}; removed from the \
         cache, run again to download it anew"
    ))
}

/// True when `HF_HUB_OFFLINE` asks for no network, as Python's `huggingface_hub` reads it.
fn offline() -> bool {
    matches!(
        std::env::var("HF_HUB_OFFLINE").map(|v| v.to_ascii_lowercase()),
        Ok(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on")
    )
}
