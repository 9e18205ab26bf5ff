//! One process at a time in a run folder: an advisory lock held for the run's whole life.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The lock file's name in a run folder.
pub const LOCK_FILE: &str = ".densenet-zoo.lock";

/// An exclusive advisory lock on a run folder, held until it is dropped: a kernel file lock
/// (`flock` on Linux, `LockFileEx` on Windows), which the operating system releases when the
/// process ends in any way, `kill -9` included, so nothing stale is ever left to clear by hand.
/// The lock file, `.densenet-zoo.lock` in the folder, records the holder (process id, host,
/// command line, start time) for the message that refuses a second process; it is removed
/// when the lock is dropped.
///
/// ```no_run
/// use densenet_zoo::train::RunLock;
/// let lock = RunLock::acquire("runs/a".as_ref())?; // refused while another run holds it
/// // ... write the run's files ...
/// drop(lock);
/// # Ok::<(), densenet_zoo::Error>(())
/// ```
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
    /// The folder, canonical: its entry in [`held`].
    folder: PathBuf,
    /// The folder and the outermost folder above it that [`RunLock::acquire`] made.
    created: Option<(PathBuf, PathBuf)>,
}

impl Drop for RunLock {
    /// Removes the lock file, then (as the file is closed) releases the lock: a run that ends
    /// cleanly leaves its folder as it found it, and folders the lock made that nothing was
    /// written to are removed. A killed one leaves the file, unlocked, and the next run takes
    /// it.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some((dir, outermost)) = &self.created {
            // Only empty folders go: the first that holds anything stops the walk.
            for folder in dir.ancestors() {
                if std::fs::remove_dir(folder).is_err() || folder == outermost {
                    break;
                }
            }
        }
        let mut held = held();
        if let Some(i) = held.iter().position(|f| *f == self.folder) {
            held.swap_remove(i);
        }
    }
}

/// The folders this process holds locks on.
fn held() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    static HELD: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RunLock {
    /// Creates `dir` if needed and locks it; refused at once, naming the folder and the
    /// process that holds it, when another process (or another `RunLock` of this one) does.
    ///
    /// # Errors
    /// [`Error::Io`] when the folder or its lock file cannot be made; [`Error::Training`] when
    /// the folder is in use.
    pub fn acquire(dir: &Path) -> Result<Self> {
        // The outermost of the folders about to be made: removed again if the run leaves them
        // empty (a run refused before its first write).
        let created = dir
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
            .last()
            .map(Path::to_path_buf);
        crate::output::prepare_folder(dir)?;
        let path = dir.join(LOCK_FILE);
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let mut file = loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io)?;
            match file.try_lock() {
                // A holder that ended cleanly removed the file it locked, perhaps after this
                // process opened it: locked, it must still be the file at `path`.
                Ok(()) if is_file_at(&file, &path) => break file,
                Ok(()) => continue,
                Err(TryLockError::WouldBlock) => {
                    let mut record = String::new();
                    let _ = file.read_to_string(&mut record);
                    return Err(Error::Training(format!(
                        "{} is in use by another run ({}): one process at a time writes a run \
                         folder; wait for it to end, or choose another folder",
                        dir.display(),
                        describe_holder(&record)
                    )));
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
        };
        let holder = serde_json::json!({
            "pid": std::process::id(),
            "host": host_name(),
            "started": seconds_since_1970(),
            "command": std::env::args().collect::<Vec<_>>().join(" "),
        });
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(format!("{holder}\n").as_bytes()).map_err(io)?;
        let folder = std::fs::canonicalize(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        held().push(folder.clone());
        Ok(Self {
            _file: file,
            path,
            folder,
            created: created.map(|outermost| (dir.to_path_buf(), outermost)),
        })
    }

    /// [`RunLock::acquire`], or `None` when this process holds `dir`'s lock already (a
    /// program that locked its output folder first thing, before reading any input, then
    /// hands the folder to a [`Trainer`](super::Trainer)).
    pub fn acquire_unless_held(dir: &Path) -> Result<Option<Self>> {
        let held_here = std::fs::canonicalize(dir).is_ok_and(|folder| held().contains(&folder));
        match held_here {
            true => Ok(None),
            false => Self::acquire(dir).map(Some),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// True when `file` is the file at `path` now (same device and inode), not one removed from
/// there since it was opened.
fn is_file_at(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(open), Ok(now)) => open.dev() == now.dev() && open.ino() == now.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

/// "process 4242 on gpu-7, started 12 min ago: densenet-zoo train ...", from the record the
/// holder wrote; the raw text where it is not one.
fn describe_holder(record: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(record.trim()) else {
        return match record.trim() {
            "" => "a process that has not yet said which".into(),
            other => other.into(),
        };
    };
    let ago = v["started"]
        .as_u64()
        .map(|t| seconds_since_1970().saturating_sub(t))
        .map_or_else(
            || "?".to_string(),
            |s| match s {
                0..=119 => format!("{s} s"),
                120..=7199 => format!("{} min", s / 60),
                _ => format!("{} h", s / 3600),
            },
        );
    format!(
        "process {} on {}, started {ago} ago: {}",
        v["pid"],
        v["host"].as_str().unwrap_or("?"),
        v["command"].as_str().unwrap_or("?")
    )
}

fn seconds_since_1970() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The machine's name, for the holder's line (a folder on a shared file system may be
/// locked from another machine); `?` where it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_by_drop() {
        let dir = std::env::temp_dir().join(format!("zoo-run-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = RunLock::acquire(&dir).unwrap();
        let err = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(err.contains("is in use by another run"), "{err}");
        assert!(err.contains(&format!("process {}", std::process::id())), "{err}");
        assert!(RunLock::acquire_unless_held(&dir).unwrap().is_none());
        drop(first);
        assert!(
            !dir.exists(),
            "a lock that made its folder, and wrote nothing, removes it"
        );
        // Folders made above it that stay empty go too; ones that hold files stay.
        let deep = dir.join("a/b");
        drop(RunLock::acquire(&deep).unwrap());
        assert!(!dir.exists());
        std::fs::create_dir_all(&dir).unwrap();
        let kept = RunLock::acquire(&dir).unwrap();
        std::fs::write(dir.join("metrics.jsonl"), b"{}").unwrap();
        drop(kept);
        assert!(dir.join("metrics.jsonl").exists() && !dir.join(LOCK_FILE).exists());
        let again = RunLock::acquire(&dir).unwrap();
        assert!(again.path().ends_with(LOCK_FILE));
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
