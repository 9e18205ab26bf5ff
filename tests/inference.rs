//! Inference and feature extraction against torchvision on real photos: preprocessing, pooled
//! features, logits and every features_only level; then the CLI end to end.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use common::{assert_close, fixtures_dir, generated_state, Fixture};
use densenet_zoo::checkpoint::model_from_tensors;
use densenet_zoo::infer::{eval_transform, preprocess_file};
use densenet_zoo::VariantSpec;

fn photos(size: u32) -> Vec<PathBuf> {
    ["chelsea", "coffee"]
        .iter()
        .map(|n| fixtures_dir().join(format!("images/{n}-{size}.png")))
        .collect()
}

fn preprocessed(spec: &VariantSpec, files: &[PathBuf]) -> Tensor {
    let t = eval_transform(spec);
    let images: Vec<Vec<f32>> = files.iter().map(|p| preprocess_file(p, &t).unwrap()).collect();
    densenet_zoo::infer::batch(&images, &t, &Device::Cpu).unwrap()
}

fn load(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures_dir().join(name), &Device::Cpu).unwrap()
}

#[test]
fn densenet121_matches_torchvision_on_photos() {
    let want = load("densenet121_photos.safetensors");
    let spec = VariantSpec::resolve("121").unwrap();
    let x = preprocessed(&spec, &photos(256));
    // Resize(256) of a 256×256 photo is the identity; crop and normalisation are torchvision's.
    assert_close(&x, &want["input"], 1e-6, "preprocessed photos");
    let model = model_from_tensors(&spec, generated_state(&spec), "generated", &Device::Cpu).unwrap();
    let features = model.forward_features(&x, false).unwrap();
    assert_eq!(features.dims(), &[2, 1024, 7, 7]);
    assert_close(
        &model.forward_head(&features, true).unwrap(),
        &want["pooled"],
        1e-4,
        "pooled",
    );
    assert_close(
        &model.forward_head(&features, false).unwrap(),
        &want["logits"],
        1e-4,
        "logits",
    );
    assert_close(
        &model.forward_t(&x, false).unwrap(),
        &want["logits"],
        1e-4,
        "forward_t",
    );
    let levels = model.features_only(&x.narrow(0, 0, 1).unwrap(), false).unwrap();
    assert_eq!(levels.len(), 5);
    for (i, level) in levels.iter().enumerate() {
        let step = want[&format!("level{i}.step")].to_vec1::<i64>().unwrap()[0] as usize;
        let (_, c, h, w) = level.dims4().unwrap();
        let rows: Vec<Tensor> = (0..h)
            .step_by(step)
            .map(|y| level.narrow(2, y, 1).unwrap())
            .collect();
        let grid = Tensor::cat(&rows, 2).unwrap();
        let cols: Vec<Tensor> = (0..w)
            .step_by(step)
            .map(|x| grid.narrow(3, x, 1).unwrap())
            .collect();
        let grid = Tensor::cat(&cols, 3).unwrap();
        assert_eq!(grid.dim(1).unwrap(), c);
        assert_close(
            &grid,
            &want[&format!("level{i}")],
            1e-4,
            &format!("features_only level {i}"),
        );
    }
}

#[test]
fn the_books_net_matches_on_gray_photos() {
    let want = load("d2l_photos.safetensors");
    let f = Fixture::load("d2l");
    let x = preprocessed(&f.spec, &photos(96));
    assert_close(&x, &want["input"], 1e-6, "grayscale as PIL");
    let model = model_from_tensors(&f.spec, f.state(), "d2l", &Device::Cpu).unwrap();
    assert_close(
        &model.forward_t(&x, false).unwrap(),
        &want["logits"],
        1e-4,
        "book logits",
    );
}

#[test]
fn reset_classifier_and_any_input_size() {
    let spec = VariantSpec::resolve("121").unwrap();
    let mut model = model_from_tensors(&spec, generated_state(&spec), "generated", &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 3, 97, 131), &Device::Cpu).unwrap();
    assert_eq!(model.forward_t(&x, false).unwrap().dims(), &[1, 1000]);
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu);
    model.reset_classifier(7, vb).unwrap();
    assert_eq!(model.forward_t(&x, false).unwrap().dims(), &[1, 7]);
    assert_eq!(varmap.all_vars().len(), 2);
    model
        .reset_classifier(
            0,
            candle_nn::VarBuilder::zeros(candle_core::DType::F32, &Device::Cpu),
        )
        .unwrap();
    // No classifier: the head returns the pooled embedding, as timm's reset_classifier(0).
    assert_eq!(model.forward_t(&x, false).unwrap().dims(), &[1, 1024]);
}

fn zoo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_embedded_default_classifies_the_shipped_images() {
    let out = zoo(&["infer", "weights/examples", "--json", "--topk", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The contracted form, to the spacing: {"path": "...", "top": [{"index": 3, "label": ..., "prob": ...}, ...]}
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    for l in text.lines() {
        assert!(
            l.starts_with("{\"path\": \"") && l.contains("\", \"top\": [{\"index\": "),
            "{l}"
        );
        assert!(
            l.contains(", \"label\": \"") && l.contains(", \"prob\": ") && l.ends_with("}]}"),
            "{l}"
        );
    }
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 10);
    for line in &lines {
        let path = line["path"].as_str().unwrap();
        let top = line["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let label = top[0]["label"].as_str().unwrap();
        // File names end in the true class: t10k-00000-ankle-boot.png.
        let expected = Path::new(path).file_stem().unwrap().to_string_lossy()[11..].to_string();
        let normalised = label.to_ascii_lowercase().replace(['/', ' '], "-");
        assert_eq!(normalised, expected, "{path}: {line}");
        assert!(top[0]["prob"].as_f64().unwrap() >= top[1]["prob"].as_f64().unwrap());
        let index = top[0]["index"].as_u64().unwrap();
        assert!(index < 10);
    }
    // With no argument at all, the same images, as the README's first command shows.
    let plain = zoo(&["infer"]);
    assert!(plain.status.success());
    assert_eq!(String::from_utf8_lossy(&plain.stdout).lines().count(), 10);
}

#[test]
fn a_folder_with_a_non_image_reports_it_and_goes_on() {
    let dir = std::env::temp_dir().join(format!("zoo-infer-mixed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["t10k-00001-pullover.png", "t10k-00002-trouser.png"] {
        std::fs::copy(Path::new("weights/examples").join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("notes.png"), "not an image at all").unwrap();
    let out = zoo(&["infer", dir.to_str().unwrap(), "--json"]);
    assert!(
        !out.status.success(),
        "a failed image must make the exit status non-zero"
    );
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 3);
    let bad: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("error").is_some()).collect();
    assert_eq!(bad.len(), 1);
    assert!(bad[0]["path"].as_str().unwrap().ends_with("notes.png"));
    assert!(
        bad[0]["error"].as_str().unwrap().contains("not an image"),
        "{}",
        bad[0]
    );
    assert_eq!(lines.iter().filter(|l| l.get("top").is_some()).count(), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 3 inputs could not be classified"));
    // One line per input in the order of the listing, the failure in its place.
    let order: Vec<&str> = lines
        .iter()
        .map(|l| {
            Path::new(l["path"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        order,
        ["notes.png", "t10k-00001-pullover.png", "t10k-00002-trouser.png"]
    );
}

#[test]
fn features_writes_one_row_per_image_per_level() {
    let dir = std::env::temp_dir().join(format!("zoo-features-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_path = dir.join("feats.safetensors");
    let images = [
        "weights/examples/t10k-00002-trouser.png",
        "weights/examples/t10k-00000-ankle-boot.png",
    ];
    let mut args = vec!["features"];
    args.extend(images);
    args.extend([
        "--out",
        out_path.to_str().unwrap(),
        "--layer",
        "pooled",
        "--layer",
        "logits",
        "--layer",
        "stem",
    ]);
    args.extend(["--layer", "block4"]);
    let out = zoo(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let feats = candle_core::safetensors::load(&out_path, &Device::Cpu).unwrap();
    assert_eq!(feats["pooled"].dims(), &[2, 248]);
    assert_eq!(feats["logits"].dims(), &[2, 10]);
    assert_eq!(feats["stem"].dims()[..2], [2, 64]);
    assert_eq!(feats["block4"].dims()[..2], [2, 248]);
    let bytes = std::fs::read(&out_path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let files: Vec<String> =
        serde_json::from_str(&header.metadata().as_ref().unwrap()["densenet_zoo.files"]).unwrap();
    assert_eq!(files, images);
    // The rows are the library's: logits for the second image match its own forward pass.
    let model =
        densenet_zoo::infer::Pretrained::open_with(densenet_zoo::infer::Source::Embedded, Default::default())
            .unwrap();
    let x = preprocessed(model.spec(), &[PathBuf::from(images[1])]);
    let logits = model.net().forward_t(&x, false).unwrap();
    assert_close(
        &feats["logits"].narrow(0, 1, 1).unwrap(),
        &logits,
        1e-6,
        "features logits",
    );

    let bad = zoo(&[
        "features",
        images[0],
        "--out",
        out_path.to_str().unwrap(),
        "--layer",
        "block4",
        "--variant",
        "d2l",
    ]);
    assert!(bad.status.success());

    // The levels are the model's own: a net of three blocks has no block4, and says so.
    let dir = std::env::temp_dir().join(format!("zoo-levels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = VariantSpec::from_file(&fixtures_dir().join("tiny_cifar.json")).unwrap();
    let weights = dir.join("tiny_cifar.safetensors");
    let state = Fixture::load("tiny_cifar").state();
    densenet_zoo::checkpoint::write_safetensors(
        &weights,
        &densenet_zoo::checkpoint::state_dict(&spec, &state).unwrap(),
        Some(&densenet_zoo::checkpoint::Metadata::for_spec(&spec)),
    )
    .unwrap();
    let levels = |layer: &str| {
        zoo(&[
            "features",
            images[0],
            "--weights",
            weights.to_str().unwrap(),
            "--out",
            dir.join("f.safetensors").to_str().unwrap(),
            "--layer",
            layer,
        ])
    };
    let blocks = spec.architecture.block_config.len();
    assert!(levels(&format!("block{blocks}")).status.success());
    let out = levels(&format!("block{}", blocks + 1));
    assert!(!out.status.success());
    let want: Vec<String> = (1..=blocks).map(|b| format!("block{b}")).collect();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "--layer block{}: tiny_cifar has the levels pooled, logits, stem, {}",
            blocks + 1,
            want.join(", ")
        )),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn variants_without_published_weights_say_so() {
    let out = zoo(&["infer", "weights/examples", "--variant", "264"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        "error: checkpoint densenet264: has no published pretrained weights: pass --weights\n"
    );
}

/// `densenet-zoo infer --json DIR | head -1`: the reader goes after one line, and the program
/// ends as Unix tools do, by SIGPIPE, quietly: no panic, no "failed printing" message. The same
/// holds for every command, through one setting in `main`; infer's output is the one long
/// enough to outlast a pipe's buffer.
#[test]
#[cfg(unix)]
fn a_reader_that_goes_away_ends_the_program_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let inputs = vec!["weights/examples"; 30];
    let args = [&["infer", "--json", "--batch-size", "1"][..], &inputs[..]].concat();
    let mut child = Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty(), "{args:?} printed nothing");
    // The reader is gone now: stdout's pipe was dropped with the BufReader.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("failed printing"),
        "{args:?}: {err}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{args:?}: {:?} {err}",
        out.status
    );
}

/// An output that cannot be written (a full disk) is the command's error, not a panic.
#[test]
#[cfg(target_os = "linux")]
fn an_output_that_cannot_be_written_is_an_error() {
    for args in [&["summary", "--variant", "121"][..], &["infer", "--json"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.ends_with("error: standard output: No space left on device (os error 28)\n"),
            "{args:?}: {err}"
        );
    }
}

/// A JPEG cut short is refused, as Pillow refuses it, instead of classified with its missing
/// rows filled in; an empty file says it is empty.
#[test]
fn truncated_and_empty_images_are_refused() {
    let dir = std::env::temp_dir().join(format!("zoo-cut-jpeg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let photo = image::open("tests/fixtures/images/chelsea-256.png").unwrap();
    let whole = dir.join("whole.jpg");
    photo.to_rgb8().save(&whole).unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    std::fs::write(dir.join("cut.jpg"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(dir.join("empty.png"), b"").unwrap();
    let out = zoo(&["infer", "--json", dir.to_str().unwrap()]);
    let lines = json_lines(&out.stdout);
    let by_name = |name: &str| {
        lines
            .iter()
            .find(|l| l["path"].as_str().unwrap().ends_with(name))
            .unwrap()
            .clone()
    };
    assert!(by_name("whole.jpg").get("top").is_some());
    assert_eq!(
        by_name("cut.jpg")["error"],
        "cannot decode Jpeg: the file is truncated (no end-of-image marker)"
    );
    assert_eq!(
        by_name("empty.png")["error"],
        "not an image: the file is empty (0 bytes)"
    );
}
