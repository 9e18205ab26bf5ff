//! Weights from the Hugging Face hub, in the standard cache that Python's `huggingface_hub`
//! shares, downloaded through the `hf-hub` crate (feature `hub`) when missing:
//! `hf:OWNER/REPO[:FILE]`, `FILE` defaulting to `model.safetensors`.
//!
//! Where the cache is, which server, whether to go online and which token to send are read from
//! the environment exactly as Python's `huggingface_hub` reads them ([`HubSettings`]), so that
//! both find each other's downloads.

use std::fmt;
use std::path::{Path, PathBuf};

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

    /// The file's path in the local cache, downloading it first unless it is there (with the
    /// crate's `hub` feature, on by default; without it, the cache alone is read).
    pub fn fetch(&self) -> Result<PathBuf> {
        let fail = |message: String| Error::Checkpoint {
            path: self.to_string(),
            message,
        };
        let settings = HubSettings::from_env();
        if let Some(path) = self.cached(&settings.cache) {
            return Ok(path);
        }
        if settings.offline {
            return Err(fail(format!(
                "not in the cache at {} and offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)",
                settings.cache.display()
            )));
        }
        self.download(settings).map_err(fail)
    }

    /// The file in the cache at `cache`, as Python's `huggingface_hub` lays it out: the
    /// snapshot of the commit that `models--OWNER--REPO/refs/main` names.
    pub fn cached(&self, cache: &Path) -> Option<PathBuf> {
        let folder = cache.join(format!("models--{}", self.repo.replace('/', "--")));
        let commit = std::fs::read_to_string(folder.join("refs").join("main")).ok()?;
        let path = folder.join("snapshots").join(commit.trim()).join(&self.file);
        path.exists().then_some(path)
    }

    #[cfg(feature = "hub")]
    fn download(&self, settings: HubSettings) -> std::result::Result<PathBuf, String> {
        let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(settings.cache))
            .with_endpoint(settings.endpoint)
            .with_token(settings.token)
            .with_progress(true)
            .build()
            .map_err(|e| e.to_string())?;
        let path = api
            .model(self.repo.clone())
            .get(&self.file)
            .map_err(|e| download_failure(&e))?;
        verify_download(&path)?;
        remove_lock_file(&path);
        Ok(path)
    }

    #[cfg(not(feature = "hub"))]
    fn download(&self, settings: HubSettings) -> std::result::Result<PathBuf, String> {
        Err(format!(
            "not in the cache at {}, and this build does not download: enable densenet-zoo's \
             `hub` feature (on by default; `features = [\"hub\"]` in Cargo.toml), or put the \
             file in the cache (Python's `hf download OWNER/REPO FILE` does)",
            settings.cache.display()
        ))
    }
}

/// Why a download failed, and what to do: the server's refusals (401, 403, 404) are not worth
/// retrying; anything else (a connection cut) is, and resumes where it stopped.
#[cfg(feature = "hub")]
fn download_failure(error: &hf_hub::api::sync::ApiError) -> String {
    let text = error.to_string();
    // hf-hub keeps the HTTP status only in its message ("status code 404").
    let status = text
        .split("status code ")
        .nth(1)
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok());
    let advice = match status {
        Some(401) => "not authorised: a private or gated repository needs a token (HF_TOKEN, or the token file `hf auth login` writes)",
        Some(403) => "access refused: a gated repository's terms must be accepted on the hub, by the token's account",
        Some(404) => "not found: no such repository, or no such file in it (FILE defaults to model.safetensors)",
        _ => "run again to resume it",
    };
    format!("download failed: {text} ({advice})")
}

/// Removes the empty `BLOB.lock` that hf-hub leaves beside a downloaded blob: Python's client
/// keeps its locks in `.locks/`, and counts every file in `blobs/` as a blob.
#[cfg(feature = "hub")]
fn remove_lock_file(pointer: &std::path::Path) {
    if let Ok(blob) = std::fs::canonicalize(pointer) {
        let mut lock = blob.into_os_string();
        lock.push(".lock");
        let lock = PathBuf::from(lock);
        if std::fs::metadata(&lock).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(lock);
        }
    }
}

/// Checks a fresh download against its SHA-256 where the hub gives one (the ETag of every
/// LFS file, which names its blob in the cache). hf-hub keeps a body that ended early without
/// an error when the server sent no length; such a file is removed from the cache here, so
/// that the next run downloads it again instead of reading a corrupt file.
#[cfg(feature = "hub")]
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

/// The hub settings Python's `huggingface_hub` (2.x, `constants.py` and `utils/_auth.py`)
/// reads from the environment, read the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The cache: `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
    pub cache: PathBuf,
    /// The token file: `HF_TOKEN_PATH`, else `HF_HOME/token` (with `HF_HOME` defaulting as above).
    pub token_path: PathBuf,
    /// The server: `HF_ENDPOINT` without trailing slashes, else `https://huggingface.co`.
    pub endpoint: String,
    /// `HF_HUB_OFFLINE`, else `TRANSFORMERS_OFFLINE`, is 1, ON, YES or TRUE (any case).
    pub offline: bool,
    /// `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN`, else the token file's content, with line
    /// breaks removed and spaces trimmed; `None` when empty or when
    /// `HF_HUB_DISABLE_IMPLICIT_TOKEN` is true.
    pub token: Option<String>,
}

impl HubSettings {
    /// The settings of this process's environment.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The settings for the environment variables `var` returns (for tests: any table).
    /// Paths go through `~` and `$VAR` expansion as Python's `expanduser` and `expandvars` do,
    /// where Python applies them.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        // Python's `os.getenv(A) or os.getenv(B)`: an empty value counts as unset.
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        let expand = |path: String| PathBuf::from(expand_vars(&expand_user(&path, &var), &var));
        let home = expand(var("HF_HOME").unwrap_or_else(|| {
            let cache_home = var("XDG_CACHE_HOME").unwrap_or_else(|| {
                Path::new(&expand_user("~", &var))
                    .join(".cache")
                    .display()
                    .to_string()
            });
            Path::new(&cache_home).join("huggingface").display().to_string()
        }));
        let legacy_cache =
            var("HUGGINGFACE_HUB_CACHE").unwrap_or_else(|| home.join("hub").display().to_string());
        let cache = expand(var("HF_HUB_CACHE").unwrap_or(legacy_cache));
        let token_path =
            expand(var("HF_TOKEN_PATH").unwrap_or_else(|| home.join("token").display().to_string()));
        let is_true = |v: Option<String>| {
            v.is_some_and(|v| matches!(v.to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"))
        };
        let clean = |t: String| {
            let t = t.replace(['\r', '\n'], "");
            let t = t.trim();
            (!t.is_empty()).then(|| t.to_string())
        };
        let token = set("HF_TOKEN")
            .or_else(|| set("HUGGING_FACE_HUB_TOKEN"))
            .and_then(clean)
            .or_else(|| std::fs::read_to_string(&token_path).ok().and_then(clean))
            .filter(|_| !is_true(var("HF_HUB_DISABLE_IMPLICIT_TOKEN")));
        Self {
            cache,
            token_path,
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            offline: is_true(set("HF_HUB_OFFLINE").or_else(|| var("TRANSFORMERS_OFFLINE"))),
            token,
        }
    }
}

/// Python's `os.path.expanduser`: a leading `~` (alone or before `/`) becomes `$HOME`.
fn expand_user(path: &str, var: &impl Fn(&str) -> Option<String>) -> String {
    let home = || var("HOME").unwrap_or_else(|| "/".into());
    match path.strip_prefix('~') {
        Some("") => home(),
        Some(rest) if rest.starts_with('/') => format!("{}{rest}", home().trim_end_matches('/')),
        _ => path.to_string(),
    }
}

/// Python's `os.path.expandvars` (POSIX): `$NAME` and `${NAME}` replaced by set variables,
/// anything else left as it is.
fn expand_vars(path: &str, var: &impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, consumed) = match after.strip_prefix('{') {
            Some(inner) => match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => ("", 0),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        match var(name).filter(|_| !name.is_empty()) {
            Some(value) => {
                out.push_str(&value);
                rest = &after[consumed..];
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache laid out as `huggingface_hub` writes it, holding `file` of `repo` at commit
    /// `abc123` (the blob and its symlink are one file here: the lookup reads paths only).
    fn cache_with(name: &str, repo: &str, file: &str) -> PathBuf {
        let cache = std::env::temp_dir().join(format!("zoo-hub-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache);
        let folder = cache.join(format!("models--{}", repo.replace('/', "--")));
        let snapshot = folder.join("snapshots").join("abc123");
        std::fs::create_dir_all(snapshot.join(Path::new(file).parent().unwrap())).unwrap();
        std::fs::write(snapshot.join(file), b"weights").unwrap();
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::write(folder.join("refs").join("main"), "abc123\n").unwrap();
        cache
    }

    #[test]
    fn the_cache_is_read_as_python_lays_it_out() {
        let cache = cache_with("layout", "timm/densenet121.tv_in1k", "sub/model.safetensors");
        let file = HubFile::parse("hf:timm/densenet121.tv_in1k:sub/model.safetensors")
            .unwrap()
            .unwrap();
        let expected = cache.join("models--timm--densenet121.tv_in1k/snapshots/abc123/sub/model.safetensors");
        assert_eq!(file.cached(&cache), Some(expected));
        let other = HubFile::parse("hf:timm/densenet121.tv_in1k:model.safetensors")
            .unwrap()
            .unwrap();
        assert_eq!(other.cached(&cache), None);
        let elsewhere = HubFile::parse("hf:timm/densenet169.tv_in1k").unwrap().unwrap();
        assert_eq!(elsewhere.cached(&cache), None);
        std::fs::remove_dir_all(cache).unwrap();
    }

    /// Without the `hub` feature, a file missing from the cache is refused with the cache's
    /// place and the feature to enable (CI runs this with `--no-default-features`).
    #[cfg(not(feature = "hub"))]
    #[test]
    fn without_the_hub_feature_a_missing_file_names_the_feature() {
        let file = HubFile::parse("hf:me/absent").unwrap().unwrap();
        let settings =
            HubSettings::from_vars(|name| (name == "HF_HUB_CACHE").then(|| "/nonexistent/cache".into()));
        let message = file.download(settings).unwrap_err();
        assert!(message.contains("/nonexistent/cache"), "{message}");
        assert!(message.contains("`hub` feature"), "{message}");
    }
}
