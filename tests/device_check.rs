//! `densenet-zoo check-device`, the GPU machine's parity check, run here on the CPU: it must
//! pass on the committed fixtures and fail, naming the quantity, when a reference is wrong.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

fn check_device(fixtures: &Path, cases: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
        .args(["check-device", "--device", "cpu", "--json", "--fixtures"])
        .arg(fixtures)
        .arg("--cases")
        .args(cases)
        .output()
        .unwrap()
}

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

#[test]
fn the_committed_fixtures_pass_on_the_cpu() {
    let out = check_device(
        fixtures(),
        &["tiny_bottleneck", "tiny_cifar", "tiny_plain", "d2l"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |case: &str, prefix: &str| {
        rows.iter()
            .filter(|r| r["case"] == case && r["quantity"].as_str().unwrap().starts_with(prefix))
            .count()
    };
    for case in ["tiny_bottleneck", "tiny_cifar", "tiny_plain", "d2l"] {
        assert_eq!(count(case, "eval logits"), 1, "{case}");
        assert_eq!(count(case, "train logits"), 1, "{case}");
        assert!(count(case, "after ") >= 4, "{case}");
    }
    // Every one of the tiny bottleneck net's 40 parameters has its gradient compared.
    assert_eq!(count("tiny_bottleneck", "grad "), 40);
    for r in &rows {
        assert!(r["vs_pytorch"].as_f64().unwrap() <= 1e-4, "{r}");
        // The CPU against itself: the same numbers.
        if !r["quantity"]
            .as_str()
            .unwrap()
            .contains("zero in exact arithmetic")
        {
            assert_eq!(r["vs_cpu"].as_f64().unwrap(), 0.0, "{r}");
        }
    }
}

#[test]
fn a_wrong_reference_fails_the_check_and_is_named() {
    let dir = std::env::temp_dir().join(format!("zoo-device-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join("tiny_plain.json"), dir.join("tiny_plain.json")).unwrap();
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixtures().join("tiny_plain.safetensors"), &Device::Cpu).unwrap();
    let logits = &tensors["eval.logits"];
    let shifted = (logits
        + 1e-3
            * logits
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64)
        .unwrap();
    tensors.insert("eval.logits".into(), shifted);
    candle_core::safetensors::save(&tensors, dir.join("tiny_plain.safetensors")).unwrap();

    let out = check_device(&dir, &["tiny_plain"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 of 44 quantities differ by more than 1e-4")
            && err.contains("tiny_plain eval logits: 0.00e0 vs CPU, 1.00e-3 vs PyTorch"),
        "{err}"
    );
}
