//! Writing outputs without losing anything: paths checked before the work that fills them,
//! atomic writes, and no temporary file left behind by an interrupt or a killed process.
//!
//! ```no_run
//! use densenet_zoo::checkpoint as output;
//! let out = std::path::Path::new("embeddings/feats.safetensors");
//! output::check_file(out)?;              // before any image is read
//! // ... the work ...
//! output::write_atomic(out, b"...")?;    // a temporary file, then a rename
//! # Ok::<(), densenet_zoo::Error>(())
//! ```
//!
//! A program that stops on a signal calls [`remove_unfinished_writes`] from its handler
//! before it exits; the library itself installs no handler. Its functions are public as
//! [`crate::checkpoint`]'s, beside the safetensors writers that use them.

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

fn refused(path: &Path, message: impl Into<String>) -> Error {
    Error::Output {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Checks, before any work, that a file can be written at `path` by [`write_atomic`]: its
/// folder exists and takes new files, and `path` is not a folder. The error says what is
/// wrong: a missing folder, a file where a folder should be, a read-only file system, a
/// folder without write permission.
///
/// # Errors
/// [`Error::Output`] naming `path`.
pub fn check_file(path: &Path) -> Result<()> {
    let Some(name) = path.file_name() else {
        return Err(refused(path, "names no file; nothing was written"));
    };
    if is_special(path) {
        // A device or a pipe (`/dev/null`, `/dev/stdout`) is written as it is.
        return Ok(());
    }
    if path.is_dir() {
        return Err(refused(
            path,
            "is a folder: name a file in it; nothing was written",
        ));
    }
    let dir = folder_of(path);
    check_path_to(&dir, path)?;
    if !dir.is_dir() {
        return Err(refused(
            path,
            format!("the folder {} does not exist; nothing was written", dir.display()),
        ));
    }
    probe(
        &dir,
        &format!(".{}.probe-{}", name.to_string_lossy(), std::process::id()),
        path,
    )
}

/// Checks, before any work, that the folder `dir` can be written or made: none of the
/// folders on the way to it is a file, and the nearest one that exists takes new files. The
/// error says what is wrong, as [`check_file`]'s does. Nothing is created.
///
/// # Errors
/// [`Error::Output`] naming `dir`.
pub fn check_folder(dir: &Path) -> Result<()> {
    check_path_to(dir, dir)?;
    if dir.exists() && !dir.is_dir() {
        return Err(refused(dir, "is a file, not a folder: name a folder"));
    }
    let nearest = dir.ancestors().find(|a| a.is_dir()).unwrap_or(Path::new("."));
    let nearest = if nearest.as_os_str().is_empty() {
        Path::new(".")
    } else {
        nearest
    };
    probe(
        nearest,
        &format!(".densenet-zoo.probe-{}", std::process::id()),
        dir,
    )
}

/// [`check_folder`], then creates `dir` and its parents where missing.
///
/// # Errors
/// [`Error::Output`] naming `dir`.
pub fn prepare_folder(dir: &Path) -> Result<()> {
    check_folder(dir)?;
    std::fs::create_dir_all(dir).map_err(|e| refused(dir, format!("cannot create the folder: {}", plain(&e))))
}

/// Refuses `target` when one of the folders on the way to it (`dir` and its parents) is a
/// file: "some/file.jpg is a file, not a folder".
fn check_path_to(dir: &Path, target: &Path) -> Result<()> {
    let mut walked = PathBuf::new();
    for part in dir.components() {
        walked.push(part);
        if matches!(part, Component::Normal(_)) && walked.exists() && !walked.is_dir() && walked != target {
            return Err(refused(
                target,
                format!(
                    "{} is a file, not a folder; nothing was written",
                    walked.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Creates and removes a file named `name` in `dir`: the one sure test that the folder takes
/// new files (permissions, a read-only mount, a full quota).
fn probe(dir: &Path, name: &str, target: &Path) -> Result<()> {
    let probe = dir.join(name);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(refused(
            target,
            format!(
                "cannot write in {}: {}; nothing was written",
                dir.display(),
                plain(&e)
            ),
        )),
    }
}

/// The operating system's message without Rust's "(os error N)".
fn plain(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The folder a file of `path` goes into (`.` for a bare name).
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The temporary files being written now, for [`remove_unfinished_writes`]; `None` once it
/// has run (the process is ending, and no new write starts).
static UNFINISHED: Mutex<Option<Vec<PathBuf>>> = Mutex::new(Some(Vec::new()));

fn unfinished() -> std::sync::MutexGuard<'static, Option<Vec<PathBuf>>> {
    UNFINISHED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes the temporary file of every [`write_atomic`] under way, and makes any write that
/// starts later fail: for a signal handler to call just before the process exits, so that an
/// interrupt leaves neither a half-written output nor a hidden temporary file. The previous
/// file at each path stays as it was.
pub fn remove_unfinished_writes() {
    if let Some(files) = unfinished().take() {
        for tmp in files {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, fsyncing
/// both: a failure, an interrupt ([`remove_unfinished_writes`]) or a kill leaves any previous
/// file intact. Temporary files that killed processes left for `path` are removed first.
///
/// # Errors
/// [`Error::Output`] for a path that cannot be written (as [`check_file`] says), [`Error::Io`]
/// when the write itself fails.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    check_file(path)?;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if is_special(path) {
        let mut file = std::fs::OpenOptions::new().write(true).open(path).map_err(io)?;
        return file.write_all(bytes).map_err(io);
    }
    // A symbolic link stays a link: the file it points to is replaced.
    let target = match path.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => link_target(path),
        _ => path.to_path_buf(),
    };
    let path = target.as_path();
    check_file(path)?;
    let dir = folder_of(path);
    let name = path
        .file_name()
        .expect("check_file refuses a path without a file name");
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    remove_stale_temporary_files(&dir, &prefix);
    let tmp = dir.join(format!("{prefix}{}", std::process::id()));
    match unfinished().as_mut() {
        Some(files) => files.push(tmp.clone()),
        None => {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "not written: the process is stopping",
            )))
        }
    }
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
    if let Some(files) = unfinished().as_mut() {
        files.retain(|f| f != &tmp);
    }
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

/// True for a path that exists and is neither a regular file nor a folder (following links):
/// a device such as `/dev/null`, a pipe, a socket, which are written in place, never replaced.
fn is_special(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// The file a symbolic link points to, resolved against the link's folder (whether it exists
/// or not), following a chain of links.
fn link_target(link: &Path) -> PathBuf {
    if let Ok(target) = std::fs::canonicalize(link) {
        return target;
    }
    let mut path = link.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&path) {
            Ok(next) => path = folder_of(&path).join(next),
            Err(_) => break,
        }
    }
    path
}

/// True for the temporary files [`write_atomic`] makes, which a killed process leaves behind.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Removes the files `{prefix}{pid}` in `dir` whose process no longer runs: what a `kill -9`
/// during a write of the same file left. Where processes cannot be looked up (no `/proc`),
/// nothing is removed.
fn remove_stale_temporary_files(dir: &Path, prefix: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("zoo-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn outputs_under_a_file_or_a_missing_folder_are_refused_by_name() {
        let dir = temp("refused");
        std::fs::write(dir.join("file.jpg"), b"x").unwrap();
        let under_file = dir.join("file.jpg/x.safetensors");
        let err = check_file(&under_file).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "{} is a file, not a folder",
                dir.join("file.jpg").display()
            )),
            "{err}"
        );
        let err = prepare_folder(&dir.join("file.jpg/run")).unwrap_err().to_string();
        assert!(err.contains("is a file, not a folder"), "{err}");
        let err = prepare_folder(&dir.join("file.jpg")).unwrap_err().to_string();
        assert!(err.contains("is a file, not a folder: name a folder"), "{err}");
        let err = check_file(&dir.join("missing/x.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
        let err = check_file(&dir).unwrap_err().to_string();
        assert!(err.contains("is a folder"), "{err}");
        check_file(&dir.join("fine.safetensors")).unwrap();
        prepare_folder(&dir.join("new/run")).unwrap();
        assert!(dir.join("new/run").is_dir());
        // The probes leave nothing.
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn devices_are_written_in_place_and_links_stay_links() {
        // A pipe (as a device, `/dev/null`): written to, never replaced by a regular file.
        let dir = temp("links");
        let fifo = dir.join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        write_atomic(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        assert!(!std::fs::metadata(&fifo).unwrap().is_file());
        let real = dir.join("real.safetensors");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.join("link.safetensors");
        std::os::unix::fs::symlink("real.safetensors", &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dead_writers_temporary_file_is_removed_by_the_next_write() {
        let dir = temp("stale");
        // No process has this id (the kernel's limit is at most 2^22).
        let stale = dir.join(".f.safetensors.tmp-4294967290");
        let other = dir.join(".g.safetensors.tmp-4294967290");
        let alive = dir.join(format!(".f.safetensors.tmp-{}", std::process::id()));
        std::fs::write(&stale, b"half").unwrap();
        std::fs::write(&other, b"half").unwrap();
        write_atomic(&dir.join("f.safetensors"), b"whole").unwrap();
        assert!(!stale.exists());
        assert!(
            other.exists(),
            "another file's temporary is not this write's business"
        );
        assert!(!alive.exists());
        assert_eq!(std::fs::read(dir.join("f.safetensors")).unwrap(), b"whole");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
