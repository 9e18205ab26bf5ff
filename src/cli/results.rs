//! How `infer` writes a result: the JSON line of an image's top classes, and the line of an
//! input that could not be classified.

/// `{"path": "...", "top": [{"index": 3, "label": "Dress", "prob": 0.91}, ...]}`: the contracted
/// form, its keys in this order and spaced like it.
/// With a class activation map, `"cam": "PATH"` follows `top`.
pub fn json_line(
    path: &std::path::Path,
    top: &[densenet_zoo::infer::Prediction],
    cam: Option<&std::path::Path>,
) -> String {
    let items: Vec<String> = top
        .iter()
        .map(|p| {
            let prob = serde_json::to_string(&p.prob).unwrap_or_else(|_| "null".into());
            format!(
                "{{\"index\": {}, \"label\": {}, \"prob\": {prob}}}",
                p.index,
                json_string(&p.label)
            )
        })
        .collect();
    let path = json_string(&path.display().to_string());
    let cam = cam.map_or(String::new(), |c| {
        format!(", \"cam\": {}", json_string(&c.display().to_string()))
    });
    format!("{{\"path\": {path}, \"top\": [{}]{cam}}}", items.join(", "))
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// An input that could not be classified: a JSON line on stdout with `--json`, else a line on
/// stderr.
pub fn report_error(path: &std::path::Path, error: &str, json: bool) -> anyhow::Result<()> {
    if json {
        let (path, error) = (json_string(&path.display().to_string()), json_string(error));
        out!("{{\"path\": {path}, \"error\": {error}}}")?;
    } else {
        say!("{}: {error}", path.display());
    }
    Ok(())
}
