//! Checkpoints: round trips, every naming scheme in, torch-loadable exports out, strict
//! refusals with their exact messages, and fine-tuning adaptations.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::{assert_close, fixtures_dir, Fixture};
use densenet_zoo::checkpoint::{
    state_dict, varmap_tensors, write_safetensors, Checkpoint, Metadata, NamingScheme,
};
use densenet_zoo::{DenseNet, VariantSpec};
use sha2::{Digest, Sha256};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zoo-ckpt-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn zoo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn bytes_of(t: &Tensor) -> Vec<u8> {
    match t.dtype() {
        DType::F32 => t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::I64 => t
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        d => panic!("unexpected dtype {d:?}"),
    }
}

fn fixture_ckpt(case: &str) -> Checkpoint {
    Checkpoint::read(&fixtures_dir().join(case), &Device::Cpu).unwrap()
}

#[test]
fn save_then_load_is_exact() {
    let f = Fixture::load("tiny_bottleneck");
    let dir = temp_dir("roundtrip");
    let path = dir.join("model.safetensors");
    let tensors = state_dict(&f.spec, &f.state()).unwrap();
    let mut metadata = Metadata::for_spec(&f.spec);
    metadata.training = Some(serde_json::json!({"epoch": 4, "test_acc": 0.5}));
    write_safetensors(&path, &tensors, Some(&metadata)).unwrap();

    let mut ckpt = Checkpoint::read(&path, &Device::Cpu).unwrap();
    assert_eq!(ckpt.scheme, NamingScheme::Torchvision);
    assert_eq!(ckpt.tensors.len(), tensors.len());
    for (name, t) in &tensors {
        assert_eq!(bytes_of(&ckpt.tensors[name]), bytes_of(t), "{name}");
    }
    // num_batches_tracked survives as torch's int64 scalar.
    let counter = &ckpt.tensors["features.norm0.num_batches_tracked"];
    assert_eq!((counter.dtype(), counter.dims().len()), (DType::I64, 0));
    assert_eq!(counter.to_scalar::<i64>().unwrap(), 7);
    let m = ckpt.metadata.clone().unwrap();
    assert_eq!(m.spec, f.spec);
    assert_eq!(m.training.unwrap()["epoch"], 4);
    assert_eq!(m.version, env!("CARGO_PKG_VERSION"));

    let spec = ckpt.spec(None).unwrap();
    let a = ckpt
        .into_model(&spec, &Device::Cpu)
        .unwrap()
        .forward_t(f.get("input"), false)
        .unwrap();
    let b = densenet_zoo::checkpoint::model_from_tensors(&f.spec, f.state(), "fixture", &Device::Cpu)
        .unwrap()
        .forward_t(f.get("input"), false)
        .unwrap();
    assert_eq!(bytes_of(&a), bytes_of(&b));
    // No temporary file is left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("model.safetensors")]);
}

#[test]
fn torchvision_legacy_pth_imports() {
    let f = Fixture::load("tiny_bottleneck");
    for file in ["tiny_bottleneck_legacy.pth", "tiny_bottleneck_nested.pth"] {
        let ckpt = fixture_ckpt(file);
        let expected_scheme = if file.contains("legacy") {
            NamingScheme::TorchvisionLegacy
        } else {
            NamingScheme::Torchvision
        };
        assert_eq!(ckpt.scheme, expected_scheme, "{file}");
        let model = ckpt.into_model(&f.spec, &Device::Cpu).unwrap();
        let logits = model.forward_t(f.get("input"), false).unwrap();
        assert_close(&logits, f.get("eval.logits"), 1e-4, file);
    }
}

#[test]
fn the_books_pth_imports() {
    let f = Fixture::load("tiny_plain");
    let ckpt = fixture_ckpt("tiny_plain_book.pth");
    assert_eq!(ckpt.scheme, NamingScheme::D2l);
    let model = ckpt.into_model(&f.spec, &Device::Cpu).unwrap();
    let logits = model.forward_t(f.get("input"), false).unwrap();
    assert_close(&logits, f.get("eval.logits"), 1e-4, "book names");
}

#[test]
fn exports_are_the_files_torch_loaded_strictly() {
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures_dir().join("export_check.json")).unwrap())
            .unwrap();
    let dir = temp_dir("export");
    let mut checked = 0;
    for case in record["cases"].as_array().unwrap() {
        assert_eq!(case["strict_load"], true);
        assert_eq!(case["max_abs_diff"], 0.0);
        let Some(hashes) = case["sha256"].as_object() else {
            continue; // made from a random torchvision model that is not committed
        };
        let out = dir.join(format!("{}.safetensors", case["name"].as_str().unwrap()));
        let mut args: Vec<&str> = case["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        args.insert(0, "export");
        args.extend(["--out", out.to_str().unwrap()]);
        let result = zoo(&args);
        assert!(
            result.status.success(),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
        let written = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        assert_eq!(written.len(), hashes.len());
        for (name, hash) in hashes {
            let digest = Sha256::digest(bytes_of(&written[name]));
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                hex,
                hash.as_str().unwrap(),
                "{name} differs from the file torch loaded"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 2);
}

#[test]
fn a_checkpoint_without_metadata_is_recognised_by_its_tensors() {
    let spec = VariantSpec::resolve("121").unwrap();
    let varmap = VarMap::new();
    DenseNet::new(&spec, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let dir = temp_dir("detect");
    let path = dir.join("timm-like.safetensors");
    let tensors = state_dict(&spec, &varmap_tensors(&varmap)).unwrap();
    write_safetensors(&path, &tensors, None).unwrap();
    let mut ckpt = Checkpoint::read(&path, &Device::Cpu).unwrap();
    assert!(ckpt.metadata.is_none());
    assert_eq!(ckpt.spec(None).unwrap().name, "densenet121");

    // And export then needs no --variant.
    let out = dir.join("out.safetensors");
    let result = zoo(&[
        "export",
        "--weights",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let exported = Checkpoint::read(&out, &Device::Cpu).unwrap();
    assert_eq!(exported.metadata.unwrap().classes[0], "tench");
}

fn stderr_of(args: &[&str]) -> String {
    let out = zoo(args);
    assert!(!out.status.success(), "expected a refusal for {args:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn refusals_name_the_file_and_every_problem() {
    let dir = temp_dir("refuse");
    let f = Fixture::load("tiny_bottleneck");
    let mut state: HashMap<String, Tensor> = f.state();
    state.insert(
        "features.norm0.weight".into(),
        Tensor::zeros(9, DType::F32, &Device::Cpu).unwrap(),
    );
    state.remove("classifier.bias");
    state.insert(
        "extra.weight".into(),
        Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
    );
    let bad = dir.join("bad.safetensors");
    let list: Vec<(String, Tensor)> = state.into_iter().collect();
    write_safetensors(&bad, &list, None).unwrap();
    let err = stderr_of(&[
        "export",
        "--weights",
        bad.to_str().unwrap(),
        "--variant",
        "tests/fixtures/tiny_bottleneck.json",
        "--out",
        dir.join("o.safetensors").to_str().unwrap(),
    ]);
    let want = format!(
        "error: checkpoint {}: does not fit variant tiny_bottleneck (3 problems):\n  \
         tensor features.norm0.weight: expected shape [8], found [9]\n  \
         missing tensor classifier.bias [7]\n  \
         unexpected tensor extra.weight\n",
        bad.display()
    );
    assert_eq!(err, want);
    assert!(!dir.join("o.safetensors").exists());

    let text = dir.join("notes.safetensors");
    std::fs::write(&text, "these are not weights, just a text file").unwrap();
    let err = stderr_of(&[
        "export",
        "--weights",
        text.to_str().unwrap(),
        "--out",
        "x.safetensors",
    ]);
    assert!(
        err.starts_with(&format!(
            "error: checkpoint {}: not a valid safetensors file",
            text.display()
        )),
        "{err}"
    );

    let err = stderr_of(&["export", "--weights", "hf:no-slash", "--out", "x.safetensors"]);
    assert_eq!(
        err,
        "error: checkpoint hf:no-slash: expected hf:OWNER/REPO or hf:OWNER/REPO:FILE\n"
    );

    // No metadata and no built-in variant: the architecture is read from the tensors, said.
    let out = dir.join("derived.safetensors");
    let result = zoo(&[
        "export",
        "--weights",
        "tests/fixtures/tiny_bottleneck_legacy.pth",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains(
        "note: the tensors match no built-in variant: the architecture is read from them; \
         nearest built-in: densenet121"
    ));

    let err = stderr_of(&[
        "export",
        "--weights",
        "tests/fixtures/tiny_bottleneck_legacy.pth",
        "--variant",
        "tests/fixtures/tiny_bottleneck.json",
        "--format",
        "d2l",
        "--out",
        "x.safetensors",
    ]);
    assert_eq!(
        err,
        "error: --format d2l needs the book's layout (plain layers, ImageNet stem, conv biases); \
         tiny_bottleneck is not\n"
    );

    let err = stderr_of(&[
        "export",
        "--weights",
        "missing.safetensors",
        "--out",
        "x.safetensors",
    ]);
    assert!(
        err.starts_with("error: checkpoint missing.safetensors: no such file"),
        "{err}"
    );
}

#[test]
fn a_new_classifier_for_fine_tuning() {
    let f = Fixture::load("tiny_bottleneck");
    let mut spec = f.spec.clone();
    spec.architecture.num_classes = 3;
    let mut ckpt = fixture_ckpt("tiny_bottleneck_legacy.pth");
    // Without asking for it, the size mismatch is refused.
    let err = ckpt
        .clone()
        .into_model(&spec, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tensor classifier.weight: expected shape [3, 20], found [7, 20]"),
        "{err}"
    );

    let notices = ckpt.adapt(&spec, true).unwrap();
    assert_eq!(
        notices,
        ["classifier: the checkpoint has 7 classes and the model 3: classifier.weight and classifier.bias \
          are skipped and initialised fresh"]
    );
    let varmap = VarMap::new();
    let model = ckpt.into_varmap(&spec, &varmap, &Device::Cpu).unwrap();
    assert_eq!(model.forward_t(f.get("input"), false).unwrap().dims(), &[3, 3]);
    let tensors = varmap_tensors(&varmap);
    assert_eq!(tensors["classifier.weight"].dims(), &[3, 20]);
    // The rest is the checkpoint's.
    assert_eq!(
        bytes_of(&tensors["features.conv0.weight"]),
        bytes_of(&f.state()["features.conv0.weight"])
    );
}

#[test]
fn rgb_weights_into_a_grayscale_model_sum_conv0() {
    let f = Fixture::load("tiny_bottleneck");
    let mut spec = f.spec.clone();
    spec.architecture.in_channels = 1;
    spec.pretrained_cfg.preprocess.mean = vec![0.5];
    spec.pretrained_cfg.preprocess.std = vec![0.25];
    let mut ckpt = fixture_ckpt("tiny_bottleneck_nested.pth");
    let notices = ckpt.adapt(&spec, false).unwrap();
    assert_eq!(
        notices,
        ["features.conv0.weight: adapted from 3 to 1 input channels as timm does (summed over RGB)"]
    );
    let rgb = &f.state()["features.conv0.weight"];
    assert_close(
        &ckpt.tensors["features.conv0.weight"],
        &rgb.sum_keepdim(1).unwrap(),
        1e-7,
        "conv0 sum",
    );
    // A gray image through the adapted net equals that image repeated over RGB through the original.
    let gray = f.get("input").narrow(1, 0, 1).unwrap();
    let ours = ckpt
        .into_model(&spec, &Device::Cpu)
        .unwrap()
        .forward_t(&gray, false)
        .unwrap();
    let rgb_input = Tensor::cat(&[&gray, &gray, &gray], 1).unwrap();
    let original =
        densenet_zoo::checkpoint::model_from_tensors(&f.spec, f.state(), "rgb", &Device::Cpu).unwrap();
    assert_close(
        &ours,
        &original.forward_t(&rgb_input, false).unwrap(),
        1e-5,
        "gray = repeated RGB",
    );

    // Five channels: RGB repeated and scaled by 3/5.
    let five = densenet_zoo::checkpoint::adapt_input_conv(rgb, 5).unwrap();
    assert_eq!(five.dims(), &[8, 5, 7, 7]);
    let want = (Tensor::cat(&[rgb, &rgb.narrow(1, 0, 2).unwrap()], 1).unwrap() * 0.6).unwrap();
    assert_close(&five, &want, 1e-7, "five channels");
}

#[test]
fn hub_references_parse() {
    use densenet_zoo::checkpoint::hub::HubFile;
    let f = HubFile::parse("hf:timm/densenet121.tv_in1k").unwrap().unwrap();
    assert_eq!(
        (f.repo.as_str(), f.file.as_str()),
        ("timm/densenet121.tv_in1k", "model.safetensors")
    );
    let f = HubFile::parse("hf:me/zoo:weights/last.safetensors")
        .unwrap()
        .unwrap();
    assert_eq!(f.file, "weights/last.safetensors");
    assert!(HubFile::parse("weights/model.safetensors").unwrap().is_none());
    assert!(HubFile::parse("hf:../x").is_err());
}

#[test]
fn a_variant_flag_keeps_the_checkpoints_own_spec_of_that_architecture() {
    // The book's net trained at 32×32 on three classes: `--variant d2l` names its architecture,
    // and must not bring back the variant's 96×96 and ten classes.
    let dir = temp_dir("variant-flag");
    let mut trained = VariantSpec::resolve("d2l").unwrap();
    trained.architecture.num_classes = 3;
    trained.pretrained_cfg.labels = None;
    trained.pretrained_cfg.preprocess.resize = 32;
    trained.pretrained_cfg.preprocess.crop = 32;
    let varmap = densenet_zoo::train::seeded_varmap(&trained, 1, &Device::Cpu).unwrap();
    let path = dir.join("trained.safetensors");
    let tensors = state_dict(&trained, &varmap_tensors(&varmap)).unwrap();
    write_safetensors(&path, &tensors, Some(&Metadata::for_spec(&trained))).unwrap();
    let mut ckpt = Checkpoint::read(&path, &Device::Cpu).unwrap();
    assert_eq!(ckpt.spec(Some("d2l")).unwrap(), trained);
    assert_eq!(
        ckpt.notices,
        [
            "--variant d2l: the checkpoint's own spec of that architecture is used, with its 3 \
          classes and preprocessing (resize 32, crop 32)"
        ]
    );
}

#[test]
fn a_spec_written_before_the_split_reads_and_writes_back_unchanged() {
    // The embedded default was trained and written before the spec was split into
    // architecture, pretrained configuration and recipe: its metadata is the flat object.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/d2l-fashion-mnist.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let stored = &header.metadata().as_ref().unwrap()["densenet_zoo.spec"];
    let stored: serde_json::Value = serde_json::from_str(stored).unwrap();
    let spec: VariantSpec = serde_json::from_value(stored.clone()).unwrap();
    let book = VariantSpec::resolve("d2l").unwrap();
    assert_eq!(spec.architecture, book.architecture);
    assert_eq!(spec.input_size(), 32);
    assert_eq!(spec.pretrained_cfg.preprocess.crop, 32);
    assert_eq!(spec.pretrained_cfg.labels.as_deref(), Some("fashion-mnist"));
    assert_eq!(spec.recipe.epochs, 10);
    // Written back, field for field the object that was read, but for the augmentation: the
    // flag `false` of older files is written by its name now.
    assert_eq!(stored["recipe"]["augment"], false);
    let mut written = serde_json::to_value(&spec).unwrap();
    assert_eq!(written["recipe"]["augment"], "none");
    written["recipe"]["augment"] = false.into();
    assert_eq!(written, stored);
    // And the checkpoint loads through the public path with that spec.
    let mut ckpt = Checkpoint::read(&path, &Device::Cpu).unwrap();
    assert_eq!(ckpt.spec(None).unwrap(), spec);
}

#[test]
fn input_size_may_be_left_out_and_must_agree_with_the_crop() {
    let text = include_str!("../variants/densenet121.json");
    let without = text.replace("\"input_size\": 224,", "");
    assert_ne!(without, text);
    let spec = VariantSpec::from_json(&without, "no-size.json").unwrap();
    assert_eq!(spec, VariantSpec::resolve("121").unwrap());
    let disagreeing = text.replace("\"input_size\": 224", "\"input_size\": 256");
    let err = VariantSpec::from_json(&disagreeing, "my.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("my.json") && err.contains("input_size 256 disagrees with preprocess.crop 224"),
        "{err}"
    );
}
