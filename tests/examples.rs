//! The examples users copy (`examples/classify.rs`, `embed.rs`, `fine_tune.rs`), run as
//! written against DenseNet-121 weights served by a local server laid out as the hub: the
//! generated weights of the PyTorch fixtures, so that torchvision's numbers are the answer.

mod common;
#[path = "common/hub_server.rs"]
mod hub_server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor, D};
use common::{assert_close, fixtures_dir, generated_state, image_folder, temp};
use densenet_zoo::checkpoint::{write_safetensors, Checkpoint};
use densenet_zoo::VariantSpec;
use hub_server::{serve, Cut};

const REPO: &str = "timm/densenet121.tv_in1k";

/// The example binary cargo built beside this test (target/<profile>/examples/).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo test` (it builds the examples; `--test examples` alone does not)",
        path.display()
    );
    path
}

/// Serves the fixtures' DenseNet-121 as `hf:timm/densenet121.tv_in1k` (torchvision's names, no
/// metadata, as timm publishes it) and runs the example `name` with `args` against it, with a
/// fresh cache in `dir`.
fn run_against_hub(dir: &Path, name: &str, args: &[&str]) -> Output {
    let spec = VariantSpec::resolve("121").unwrap();
    let weights = dir.join("model.safetensors");
    let tensors: Vec<(String, Tensor)> = generated_state(&spec).into_iter().collect();
    write_safetensors(&weights, &tensors, None).unwrap();
    let url = format!("/{REPO}/resolve/main/model.safetensors");
    let (endpoint, _) = serve(vec![(url, std::fs::read(&weights).unwrap())], 20, Cut::Never);
    let mut cmd = Command::new(example(name));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HF_HOME", dir.join("hf"))
        .env("HF_ENDPOINT", endpoint);
    for var in [
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{name}: {}", common::stderr(&out));
    out
}

fn photos() -> Vec<PathBuf> {
    ["chelsea", "coffee"]
        .iter()
        .map(|n| fixtures_dir().join(format!("images/{n}-256.png")))
        .collect()
}

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures_dir().join("densenet121_photos.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn classify_prints_torchvisions_top5() {
    let dir = temp("examples", "classify");
    let photos = photos();
    let paths: Vec<&str> = photos.iter().map(|p| p.to_str().unwrap()).collect();
    let mut args = vec!["--weights", "hf:timm/densenet121.tv_in1k"];
    args.extend(&paths);
    let out = run_against_hub(&dir, "classify", &args);
    let stdout = String::from_utf8(out.stdout).unwrap();

    // torchvision's logits on the same photos and weights, and ImageNet's class names.
    let probs = candle_nn::ops::softmax(&fixture()["logits"], D::Minus1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let labels = densenet_zoo::spec::labels::builtin("imagenet-1k").unwrap();
    let blocks: Vec<&str> = stdout.split_terminator('\n').collect();
    assert_eq!(blocks.len(), 2 * 6, "{stdout}");
    for (i, (path, want)) in paths.iter().zip(&probs).enumerate() {
        assert_eq!(blocks[6 * i], *path, "{stdout}");
        let mut order: Vec<usize> = (0..want.len()).collect();
        order.sort_by(|&a, &b| want[b].total_cmp(&want[a]));
        for (line, &class) in blocks[6 * i + 1..6 * i + 6].iter().zip(&order) {
            let (prob, label) = line.trim().split_once("  ").unwrap();
            assert_eq!(label, labels[class], "{stdout}");
            let prob: f32 = prob.parse().unwrap();
            assert!(
                (prob - want[class]).abs() < 1e-4,
                "{label}: {prob} against {}",
                want[class]
            );
        }
    }
}

#[test]
fn embed_writes_torchvisions_pooled_features_of_a_folder() {
    let dir = temp("examples", "embed");
    let folder = dir.join("photos");
    std::fs::create_dir_all(&folder).unwrap();
    for photo in photos() {
        std::fs::copy(&photo, folder.join(photo.file_name().unwrap())).unwrap();
    }
    let out_file = dir.join("embeddings.safetensors");
    let args = [
        folder.to_str().unwrap(),
        out_file.to_str().unwrap(),
        "--weights",
        "hf:timm/densenet121.tv_in1k",
    ];
    run_against_hub(&dir, "embed", &args);
    let written = candle_core::safetensors::load(&out_file, &Device::Cpu).unwrap();
    // Sorted as torchvision lists a folder: chelsea, then coffee, as in the fixture.
    assert_close(&written["embeddings"], &fixture()["pooled"], 1e-4, "embeddings");
}

#[test]
fn fine_tune_trains_a_new_head_and_keeps_the_backbone() {
    let dir = temp("examples", "fine-tune");
    let data = dir.join("data");
    image_folder(&data, &["daisy", "tulip"], 4, 48);
    let run = dir.join("run");
    let args = [
        data.to_str().unwrap(),
        run.to_str().unwrap(),
        "--weights",
        "hf:timm/densenet121.tv_in1k",
        "--epochs",
        "1",
        "--image-size",
        "64",
    ];
    let out = run_against_hub(&dir, "fine_tune", &args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("classes: daisy, tulip"), "{stdout}");

    let saved = Checkpoint::read(&run.join("last.safetensors"), &Device::Cpu).unwrap();
    let served = generated_state(&VariantSpec::resolve("121").unwrap());
    let tensor = |name: &str| {
        saved
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    // A new head: one output per class of the folder.
    assert_eq!(tensor("classifier.weight").dims(), &[2, 1024]);
    // The backbone exactly as served, its batch-norm statistics included.
    for name in [
        "features.conv0.weight",
        "features.denseblock4.denselayer16.conv2.weight",
        "features.norm5.running_mean",
    ] {
        let diff = (tensor(name) - &served[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name} changed");
    }
}
