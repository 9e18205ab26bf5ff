//! Turning the image arguments of `infer` and `features` into a list of files.

use std::path::{Path, PathBuf};

/// Files as given, and folders expanded to their files (sorted, not recursive, hidden files
/// skipped). Arguments that cannot be read come back as failures with the reason.
pub fn expand_inputs(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let mut files = Vec::new();
    let mut failures = Vec::new();
    for input in inputs {
        if input.is_dir() {
            match list_dir(input) {
                Ok(mut entries) => {
                    entries.sort();
                    files.extend(entries);
                }
                Err(e) => failures.push((input.clone(), e.to_string())),
            }
        } else if input.exists() {
            files.push(input.clone());
        } else {
            failures.push((input.clone(), "no such file or folder".into()));
        }
    }
    (files, failures)
}

fn list_dir(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if path.is_file() && !hidden {
            out.push(path);
        }
    }
    Ok(out)
}
