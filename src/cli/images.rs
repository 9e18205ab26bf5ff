//! Turning the image arguments of `infer` and `features` into a list of files.

use std::path::PathBuf;

use densenet_zoo::data::images_under;

/// What is wrong with an image, for a line that names its file already.
pub fn image_problem(error: densenet_zoo::Error) -> String {
    match error {
        densenet_zoo::Error::Image { message, .. } => message,
        other => other.to_string(),
    }
}

/// Files as given (whatever their extension), and folders expanded to every image under them
/// at any depth, as torchvision's `ImageFolder` finds them (its extensions, its order, hidden
/// files and folders skipped). Arguments that cannot be read come back as failures with the
/// reason; a folder with no image is one.
pub fn expand_inputs(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let mut files = Vec::new();
    let mut failures = Vec::new();
    for input in inputs {
        if input.is_dir() {
            match images_under(input) {
                Ok(found) if found.is_empty() => failures.push((
                    input.clone(),
                    format!(
                        "no image in this folder ({})",
                        densenet_zoo::data::IMAGE_EXTENSIONS.join(", ")
                    ),
                )),
                Ok(found) => files.extend(found),
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
