//! Replays the fuzz targets' committed corpus (`fuzz/corpus/<target>/`, seeds and every input
//! a fuzzing run kept) through the same code the targets run, on stable Rust: an input that
//! once crashed a target stays a test. The seeds must also be what they claim, valid files.

#[path = "../fuzz/bodies.rs"]
mod bodies;

use std::path::{Path, PathBuf};

use candle_core::Device;
use densenet_zoo::checkpoint::Checkpoint;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

fn replay(target: &str, body: fn(&[u8])) {
    for path in corpus(target) {
        body(&std::fs::read(&path).unwrap());
    }
}

#[test]
fn every_corpus_input_is_handled_without_a_panic() {
    replay("checkpoint", bodies::checkpoint);
    replay("pth", bodies::pth);
    replay("pth_legacy", bodies::pth);
    replay("spec", bodies::spec);
    replay("idx", bodies::idx);
    replay("cifar", bodies::cifar);
    replay("image", bodies::image);
}

#[test]
fn the_seed_checkpoints_are_valid_models() {
    for name in [
        "checkpoint/tiny-with-spec.safetensors",
        "checkpoint/tiny-legacy-names.safetensors",
        "pth/tiny.pth",
        "pth/tiny-nested.pth",
        "pth_legacy/legacy-names.pth",
        "pth_legacy/legacy-nested.pth",
        "pth_legacy/legacy-half.pth",
        "pth_legacy/legacy-shared.pth",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(name);
        let spec = densenet_zoo::VariantSpec::from_json(
            &serde_json::json!({
                "name": "fuzz_tiny", "in_channels": 1, "num_classes": 2, "stem": "imagenet",
                "stem_features": 2, "growth_rate": 1, "block_config": [1], "layer": {"kind": "plain"},
                "compression": 0.5, "conv_bias": false, "drop_rate": 0.0, "input_size": 32,
                "preprocess": {"resize": 32, "crop": 32, "mean": [0.5], "std": [0.25]}
            })
            .to_string(),
            "tiny",
        )
        .unwrap();
        let ckpt = Checkpoint::read(&path, &Device::Cpu).unwrap();
        ckpt.check(&spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some(meta) = &ckpt.metadata {
            assert_eq!(meta.spec.name, "fuzz_tiny");
        }
    }
}
