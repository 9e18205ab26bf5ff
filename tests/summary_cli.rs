//! `densenet-zoo summary`: parameter counts and multiply-adds against torchvision's figures.

use std::process::Command;

use densenet_zoo::tools::summary::summarize;
use densenet_zoo::VariantSpec;

/// torchvision's `sum(p.numel() for p in model.parameters())` for its nets; the same count for
/// the book's net (its PyTorch code) and for the paper's CIFAR-10 DenseNet-BC nets.
const PARAMS: [(&str, u64); 9] = [
    ("d2l", 758_226),
    ("121", 7_978_856),
    ("169", 14_149_480),
    ("201", 20_013_928),
    ("264", 33_337_704),
    ("161", 28_681_000),
    ("bc-100-12", 769_162),
    ("bc-250-24", 15_324_406),
    ("bc-190-40", 25_624_430),
];

#[test]
fn parameter_counts_are_exact() {
    for (variant, params) in PARAMS {
        let spec = VariantSpec::resolve(variant).unwrap();
        let summary = summarize(&spec, spec.input_size()).unwrap();
        assert_eq!(summary.params, params, "{variant}");
        assert_eq!(summary.stages.iter().map(|s| s.params).sum::<u64>(), params);
    }
}

#[test]
fn densenet121_multiply_adds_at_224() {
    let spec = VariantSpec::resolve("121").unwrap();
    let summary = summarize(&spec, 224).unwrap();
    assert_eq!(summary.macs, 2_834_161_664);
    let names: Vec<&str> = summary.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "stem",
            "denseblock1",
            "transition1",
            "denseblock2",
            "transition2",
            "denseblock3",
            "transition3",
            "denseblock4",
            "norm5",
            "classifier"
        ]
    );
    assert_eq!(summary.stages[7].output_shape, vec![1024, 7, 7]);
}

fn zoo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn summary_json_has_the_contracted_fields() {
    let out = zoo(&["summary", "--variant", "121", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["variant"], "densenet121");
    assert_eq!(v["params"], 7_978_856);
    assert_eq!(v["macs"], 2_834_161_664u64);
    assert_eq!(v["stages"].as_array().unwrap().len(), 10);
}

#[test]
fn summary_table_and_input_size() {
    let out = zoo(&["summary", "--variant", "d2l", "--input-size", "32"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("758,226"), "{text}");
    assert!(text.contains("248×1×1"), "{text}");
}

#[test]
fn summary_refuses_an_input_too_small_and_a_bad_spec_file() {
    let out = zoo(&["summary", "--variant", "d2l", "--input-size", "28"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("input size 28 is too small"), "{err}");

    let dir = std::env::temp_dir().join(format!("zoo-summary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mine.json");
    let text = include_str!("../variants/densenet121.json").replace("[6, 12, 24, 16]", "[]");
    std::fs::write(&path, text).unwrap();
    let out = zoo(&["summary", "--variant", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("mine.json") && err.contains("at least one dense block"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_users_own_spec_file_works() {
    let dir = std::env::temp_dir().join(format!("zoo-own-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("densenet-bc-40-12.json");
    let text = include_str!("../variants/bc-100-12.json")
        .replace("\"bc-100-12\"", "\"bc-40-12\"")
        .replace("[16, 16, 16]", "[6, 6, 6]");
    std::fs::write(&path, text).unwrap();
    let out = zoo(&["summary", "--variant", path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["variant"], "bc-40-12");
}

#[test]
fn summary_says_when_transitions_max_pool() {
    let spec = include_str!("../variants/d2l.json").replace(
        "\"growth_rate\": 32,",
        "\"growth_rate\": 32, \"transition_pool\": \"max\",",
    );
    let path = std::env::temp_dir().join(format!("zoo-summary-maxpool-{}.json", std::process::id()));
    std::fs::write(&path, spec).unwrap();
    let table = zoo(&["summary", "--variant", path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&table.stdout)
        .lines()
        .next()
        .unwrap()
        .ends_with("; transitions max-pool"));
    let json = zoo(&["summary", "--variant", path.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["transition_pool"], "max");
    let plain = zoo(&["summary", "--variant", "d2l", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert_eq!(v["transition_pool"], "avg");
}
