//! Class-name lists that ship with the crate.
//!
//! - `imagenet-1k`: the 1000 ImageNet classes in torchvision's index order and spelling
//!   (BSD-3-Clause, from torchvision);
//! - `fashion-mnist`: the 10 Fashion-MNIST classes (MIT, Zalando SE);
//! - `cifar-10`: the 10 CIFAR-10 classes.

use std::path::Path;

use crate::error::{Error, Result};

const LISTS: &[(&str, &str)] = &[
    ("imagenet-1k", include_str!("labels/imagenet-1k.txt")),
    ("fashion-mnist", include_str!("labels/fashion-mnist.txt")),
    ("cifar-10", include_str!("labels/cifar-10.txt")),
];

/// The names of the built-in lists.
pub fn names() -> Vec<&'static str> {
    LISTS.iter().map(|(n, _)| *n).collect()
}

/// The class names of a built-in list, in index order; `None` for an unknown list.
pub fn builtin(name: &str) -> Option<Vec<String>> {
    LISTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| text.lines().map(str::to_string).collect())
}

/// Class names for a model with `num_classes` outputs: the named list when it has that many
/// entries, else `class0`, `class1`, ...
pub fn for_classes(list: Option<&str>, num_classes: usize) -> Vec<String> {
    match list.and_then(builtin) {
        Some(names) if names.len() == num_classes => names,
        _ => (0..num_classes).map(|i| format!("class{i}")).collect(),
    }
}

/// Reads class names from a file, in index order: one name per line (trailing blank lines,
/// a byte-order mark and Windows line ends ignored), as torchvision's `imagenet_classes.txt`;
/// or JSON, as a list of names, or an object from "0", "1", ... to a name or to a list whose
/// last entry is the name (Keras' `imagenet_class_index.json`: `{"0": ["n01440764",
/// "tench"], ...}`).
///
/// # Errors
/// [`Error::Labels`] naming the file: unreadable, empty, a blank line between names, JSON of
/// another shape.
pub fn read_file(path: &Path) -> Result<Vec<String>> {
    let bad = |message: String| Error::Labels {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it as text: {e}")))?;
    let text = text.trim_start_matches('\u{feff}');
    let trimmed = text.trim_start();
    let names = if trimmed.starts_with('[') || trimmed.starts_with('{') {
        from_json(trimmed).map_err(|m| bad(format!("JSON of class names: {m}")))?
    } else {
        let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
        let last = lines
            .iter()
            .rposition(|l| !l.trim().is_empty())
            .map_or(0, |i| i + 1);
        if let Some(blank) = lines[..last].iter().position(|l| l.trim().is_empty()) {
            return Err(bad(format!(
                "line {} is blank: one class name per line, in the order of the classifier's outputs",
                blank + 1
            )));
        }
        lines[..last].iter().map(|l| l.trim().to_string()).collect()
    };
    if names.is_empty() {
        return Err(bad("holds no class name".into()));
    }
    Ok(names)
}

/// A JSON list of names, or an object of index → name (or → [.., name]).
fn from_json(text: &str) -> std::result::Result<Vec<String>, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let name = |v: &serde_json::Value| -> Option<String> {
        match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(a) => a.last().and_then(|l| l.as_str()).map(str::to_string),
            _ => None,
        }
    };
    match &value {
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or(format!("entry {i} is not a string"))
            })
            .collect(),
        serde_json::Value::Object(map) => (0..map.len())
            .map(|i| {
                let v = map.get(&i.to_string()).ok_or(format!(
                    "{} entries, but no key \"{i}\" (keys are the indices 0 to {})",
                    map.len(),
                    map.len().saturating_sub(1)
                ))?;
                name(v).ok_or(format!(
                    "entry \"{i}\" is neither a name nor a list ending in one"
                ))
            })
            .collect(),
        _ => Err("expected a list of names or an object of index → name".into()),
    }
}

/// `names` as the class names of a classifier of `num_classes` outputs; refused, naming the
/// file `origin`, when the counts differ.
///
/// # Errors
/// [`Error::Labels`].
pub fn fit(names: Vec<String>, num_classes: usize, origin: &Path) -> Result<Vec<String>> {
    if names.len() != num_classes {
        return Err(Error::Labels {
            path: origin.to_path_buf(),
            message: format!(
                "{} class names, but the classifier has {num_classes} outputs",
                names.len()
            ),
        });
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lists_have_their_sizes_and_order() {
        let imagenet = super::builtin("imagenet-1k").unwrap();
        assert_eq!(imagenet.len(), 1000);
        assert_eq!(imagenet[0], "tench");
        assert_eq!(imagenet[281], "tabby");
        assert_eq!(super::builtin("fashion-mnist").unwrap()[9], "Ankle boot");
        assert_eq!(super::builtin("cifar-10").unwrap().len(), 10);
        assert_eq!(
            super::for_classes(Some("cifar-10"), 3),
            ["class0", "class1", "class2"]
        );
    }

    #[test]
    fn label_files_of_each_kind_are_read_in_order_and_bad_ones_refused() {
        let dir = std::env::temp_dir().join(format!("zoo-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let read = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            super::read_file(&path).map_err(|e| e.to_string())
        };
        let want = ["tabby cat", "dog", "fox"];
        assert_eq!(read("a.txt", "tabby cat\ndog\nfox\n").unwrap(), want);
        assert_eq!(
            read("b.txt", "\u{feff}tabby cat\r\ndog\r\nfox\r\n\r\n").unwrap(),
            want
        );
        assert_eq!(read("c.json", r#"["tabby cat", "dog", "fox"]"#).unwrap(), want);
        let keras =
            r#"{"1": ["n02084071", "dog"], "0": ["n02123045", "tabby cat"], "2": ["n02118333", "fox"]}"#;
        assert_eq!(read("d.json", keras).unwrap(), want);
        assert_eq!(
            read("e.json", r#"{"0": "tabby cat", "1": "dog", "2": "fox"}"#).unwrap(),
            want
        );
        let err = read("f.txt", "cat\n\ndog\n").unwrap_err();
        assert!(err.contains("f.txt") && err.contains("line 2 is blank"), "{err}");
        assert!(read("g.txt", "\n\n").unwrap_err().contains("holds no class name"));
        assert!(read("h.json", r#"{"0": "a", "2": "b"}"#)
            .unwrap_err()
            .contains("no key \"1\""));
        let err = super::fit(
            want.iter().map(|s| s.to_string()).collect(),
            4,
            &dir.join("a.txt"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("3 class names, but the classifier has 4 outputs"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
