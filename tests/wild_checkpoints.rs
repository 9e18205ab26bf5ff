//! Checkpoints as users bring them from the wild (tests/fixtures/wild, made by
//! make_wild_checkpoints.py with torch): PyTorch's legacy serialization, other float dtypes,
//! training wrappers' prefixes, architectures that only the tensors describe, and the book's
//! current edition. Every loaded tensor is compared with what torch saved.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixtures_dir, stderr, zoo, Fixture};
use densenet_zoo::checkpoint::{state_dict, write_safetensors, Checkpoint, NamingScheme};
use densenet_zoo::spec::LayerKind;
use densenet_zoo::VariantSpec;

fn wild(name: &str) -> PathBuf {
    fixtures_dir().join("wild").join(name)
}

fn read(name: &str) -> Checkpoint {
    Checkpoint::read(&wild(name), &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn temp(name: &str) -> PathBuf {
    common::temp("wild", name)
}

/// Asserts that `ckpt` holds exactly `want`'s tensors, each `want` value passed through `map`.
fn assert_tensors(ckpt: &Checkpoint, want: &HashMap<String, Tensor>, map: impl Fn(&Tensor) -> Tensor) {
    assert_eq!(ckpt.tensors.len(), want.len(), "{}", ckpt.origin);
    for (name, w) in want {
        let got = ckpt
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: no {name}", ckpt.origin));
        let w = map(w);
        assert_eq!(got.dtype(), w.dtype(), "{name}");
        assert_eq!(got.dims(), w.dims(), "{name}");
        // Zero exactly when every value is torch's.
        let error = common::relative_error(got, &w);
        assert_eq!(error, 0.0, "{}: {name} differs from torch's", ckpt.origin);
    }
}

fn identity(t: &Tensor) -> Tensor {
    t.clone()
}

/// Runs `spec`'s model from `ckpt` on `input` in eval mode.
fn logits(ckpt: Checkpoint, spec: &VariantSpec, input: &Tensor) -> Tensor {
    ckpt.into_model(spec, &Device::Cpu)
        .unwrap()
        .forward_t(input, false)
        .unwrap()
}

#[test]
fn pytorch_legacy_files_load_exactly_with_torchvisions_legacy_names() {
    let f = Fixture::load("tiny_bottleneck");
    let mut ckpt = read("legacy_torchvision.pth");
    assert_eq!(ckpt.scheme, NamingScheme::TorchvisionLegacy);
    assert_tensors(&ckpt, &f.state(), identity);
    // No metadata and no built-in variant: the architecture comes from the tensors.
    let spec = ckpt.spec(None).unwrap();
    assert_eq!(
        (
            spec.architecture.in_channels,
            spec.architecture.num_classes,
            spec.architecture.stem,
            spec.architecture.stem_features
        ),
        (3, 7, f.spec.architecture.stem, 8)
    );
    assert_eq!(
        (spec.architecture.growth_rate, &spec.architecture.block_config),
        (4, &vec![2, 3])
    );
    assert_eq!(spec.architecture.layer, LayerKind::Bottleneck { bn_size: 2 });
    assert_eq!(
        (spec.architecture.compression, spec.architecture.conv_bias),
        (0.5, false)
    );
    // An ImageNet stem is fed as the ImageNet nets are.
    assert_eq!(
        (
            spec.pretrained_cfg.preprocess.resize,
            spec.pretrained_cfg.preprocess.crop
        ),
        (256, 224)
    );
    assert_eq!(spec.pretrained_cfg.preprocess.mean, [0.485, 0.456, 0.406]);
    assert!(
        ckpt.notices
            .iter()
            .any(|n| n.contains("match no built-in variant") && n.contains("nearest built-in: densenet121")),
        "{:?}",
        ckpt.notices
    );
    assert_close(
        &logits(ckpt, &spec, f.get("input")),
        f.get("eval.logits"),
        1e-5,
        "logits",
    );
}

#[test]
fn shared_storages_offsets_and_strides_read_as_torch_does_in_both_formats() {
    let f = Fixture::load("tiny_bottleneck");
    for file in ["legacy_shared.pth", "zip_shared.pth"] {
        let ckpt = read(file);
        assert_tensors(&ckpt, &f.state(), identity);
        assert_eq!(ckpt.notices, ["read the state dict under `state_dict`"], "{file}");
    }
}

#[test]
fn other_float_dtypes_are_cast_to_float32_with_a_notice() {
    let f = Fixture::load("tiny_bottleneck");
    let floats = f.state().values().filter(|t| t.dtype() == DType::F32).count();
    let through = |dtype: DType| {
        move |t: &Tensor| match t.dtype() {
            DType::F32 => t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap(),
            _ => t.clone(),
        }
    };
    for (file, dtype, name) in [
        ("half.pth", DType::F16, "float16"),
        ("bfloat16_legacy.pth", DType::BF16, "bfloat16"),
        ("double.pth", DType::F64, "float64"),
    ] {
        let ckpt = read(file);
        assert_tensors(&ckpt, &f.state(), through(dtype));
        assert_eq!(
            ckpt.notices,
            [format!(
                "cast {floats} {name} tensors to float32, as PyTorch's load_state_dict does"
            )]
        );
    }
    // Through the command line, the notice is one line.
    let out = temp("half").join("out.safetensors");
    let result = zoo(&[
        "export",
        "--weights",
        wild("half.pth").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(stderr(&result).contains(&format!("note: cast {floats} float16 tensors to float32")));
}

#[test]
fn integer_and_bool_tensors_where_floats_belong_are_refused_by_name() {
    let out = zoo(&[
        "export",
        "--weights",
        wild("int_weight.pth").to_str().unwrap(),
        "--out",
        "x",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("tensor features.norm0.weight: expected dtype F32, found I32"),
        "{err}"
    );
    assert!(err.contains("int_weight.pth"), "{err}");

    // A bool tensor in a safetensors file.
    let dir = temp("bool");
    let f = Fixture::load("tiny_bottleneck");
    let mut tensors: Vec<(String, Tensor)> = state_dict(&f.spec, &f.state()).unwrap();
    tensors.retain(|(n, _)| n != "features.norm0.bias");
    let mut owned: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
    let data: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = tensors
        .iter()
        .map(|(n, t)| {
            let (bytes, dtype) = match t.dtype() {
                DType::F32 => (
                    t.flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                    safetensors::Dtype::F32,
                ),
                _ => (
                    t.flatten_all()
                        .unwrap()
                        .to_vec1::<i64>()
                        .unwrap()
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                    safetensors::Dtype::I64,
                ),
            };
            (n.clone(), bytes, t.dims().to_vec(), dtype)
        })
        .chain(std::iter::once((
            "features.norm0.bias".to_string(),
            vec![1u8; 8],
            vec![8],
            safetensors::Dtype::BOOL,
        )))
        .collect();
    for (n, bytes, shape, dtype) in &data {
        owned.push((
            n.clone(),
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
        ));
    }
    let path = dir.join("bool.safetensors");
    safetensors::serialize_to_file(owned, None, &path).unwrap();
    let out = zoo(&["export", "--weights", path.to_str().unwrap(), "--out", "x"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("bool.safetensors"), "{err}");
    assert!(
        err.contains("features.norm0.bias") && err.contains("BOOL"),
        "{err}"
    );
}

#[test]
fn a_prefix_every_name_shares_is_stripped_and_said() {
    let f = Fixture::load("tiny_bottleneck");
    let ckpt = read("lightning.pth");
    assert_tensors(&ckpt, &f.state(), identity);
    assert_eq!(
        ckpt.notices,
        [
            "read the state dict under `state_dict`",
            "stripped the prefix `model.` that every tensor name shares (a training wrapper's)"
        ]
    );
    let ckpt = read("compiled.pth");
    assert_tensors(&ckpt, &f.state(), identity);
    assert_eq!(
        ckpt.notices,
        ["stripped the prefix `_orig_mod.` that every tensor name shares (a training wrapper's)"]
    );

    // Any wrapper's prefix, in safetensors too, through the command line.
    let dir = temp("prefix");
    let tensors = state_dict(&f.spec, &f.state()).unwrap();
    for prefix in ["module.", "ema.module.", "backbone.", "student.encoder."] {
        let path = dir.join(format!("{prefix}safetensors"));
        let renamed: Vec<(String, Tensor)> = tensors
            .iter()
            .map(|(n, t)| (format!("{prefix}{n}"), t.clone()))
            .collect();
        write_safetensors(&path, &renamed, None).unwrap();
        let out = dir.join("out.safetensors");
        let result = zoo(&[
            "export",
            "--weights",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(result.status.success(), "{prefix}: {}", stderr(&result));
        assert!(
            stderr(&result).contains(&format!("note: stripped the prefix `{prefix}`")),
            "{}",
            stderr(&result)
        );
        let back = Checkpoint::read(&out, &Device::Cpu).unwrap();
        assert_tensors(&back, &f.state(), identity);
    }

    // An SWA average (torch.optim.swa_utils.AveragedModel): `module.` on every weight, and its
    // sample count beside them, which is no weight.
    let mut swa: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (format!("module.{n}"), t.clone()))
        .collect();
    swa.push(("n_averaged".into(), Tensor::new(5i64, &Device::Cpu).unwrap()));
    let path = dir.join("swa.safetensors");
    write_safetensors(&path, &swa, None).unwrap();
    let ckpt = Checkpoint::read(&path, &Device::Cpu).unwrap();
    assert_tensors(&ckpt, &f.state(), identity);
    assert_eq!(
        ckpt.notices,
        [
            format!(
                "stripped the prefix `module.` (a training wrapper's) from {} of {} tensor names; \
                 kept as they are: n_averaged",
                tensors.len(),
                tensors.len() + 1
            ),
            "ignored n_averaged: the count of torch.optim.swa_utils.AveragedModel, not a weight".to_string()
        ]
    );

    // A prefix on all names but one (a loss's weight saved beside a Lightning module's
    // `model.*`): stripped where it stands, and the odd tensor is named in the refusal.
    let mut renamed: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (format!("model.{n}"), t.clone()))
        .collect();
    renamed.push((
        "criterion.weight".into(),
        Tensor::ones(7, DType::F32, &Device::Cpu).unwrap(),
    ));
    let path = dir.join("mixed.safetensors");
    write_safetensors(&path, &renamed, None).unwrap();
    let result = zoo(&["export", "--weights", path.to_str().unwrap(), "--out", "x"]);
    let err = stderr(&result);
    assert!(!result.status.success());
    assert!(
        err.contains(&format!(
            "while reading it: stripped the prefix `model.` (a training wrapper's) from {} of {} tensor names; \
             kept as they are: criterion.weight",
            tensors.len(),
            tensors.len() + 1
        )),
        "{err}"
    );
    assert!(
        err.contains("does not fit variant from-tensors (1 problem):\n  unexpected tensor criterion.weight"),
        "{err}"
    );
}

#[test]
fn a_grayscale_fine_tune_gets_its_architecture_from_the_tensors() {
    let reference =
        candle_core::safetensors::load(wild("gray_densenet_ref.safetensors"), &Device::Cpu).unwrap();
    let mut ckpt = read("gray_densenet.pth");
    let spec = ckpt.spec(None).unwrap();
    assert_eq!(
        (spec.architecture.in_channels, spec.architecture.num_classes),
        (1, 2)
    );
    assert_eq!(
        (spec.architecture.stem_features, spec.architecture.growth_rate),
        (12, 6)
    );
    assert_eq!(spec.architecture.block_config, [2, 2, 3]);
    assert_eq!(spec.architecture.layer, LayerKind::Bottleneck { bn_size: 3 });
    assert_eq!(spec.pretrained_cfg.preprocess.mean.len(), 1);
    assert_close(
        &logits(ckpt, &spec, &reference["input"]),
        &reference["logits"],
        1e-5,
        "gray logits",
    );

    // DenseNet-121 fine-tuned on one channel and two classes, as users make.
    let dir = temp("gray121");
    let mut gray = VariantSpec::resolve("121").unwrap();
    gray.architecture.in_channels = 1;
    gray.architecture.num_classes = 2;
    gray.pretrained_cfg.preprocess.mean = vec![0.449];
    gray.pretrained_cfg.preprocess.std = vec![0.226];
    let varmap = densenet_zoo::train::seeded_varmap(&gray, 3, &Device::Cpu).unwrap();
    let path = dir.join("gray121.safetensors");
    let tensors = state_dict(&gray, &densenet_zoo::checkpoint::varmap_tensors(&varmap)).unwrap();
    write_safetensors(&path, &tensors, None).unwrap();

    let mut ckpt = Checkpoint::read(&path, &Device::Cpu).unwrap();
    let spec = ckpt.spec(None).unwrap();
    assert_eq!(
        (
            spec.architecture.in_channels,
            spec.architecture.num_classes,
            spec.architecture.growth_rate
        ),
        (1, 2, 32)
    );
    assert_eq!(spec.architecture.block_config, [6, 12, 24, 16]);
    assert_eq!(
        ckpt.notices,
        [
            "the tensors match no built-in variant: the architecture is read from them; nearest \
          built-in: densenet121, which differs in in_channels 1 (densenet121 has 3); input size \
          and preprocessing as densenet121's (resize 256, crop 224)"
        ]
    );
    // With --variant 121 the channels and classes come from the tensors too, said.
    let mut ckpt = Checkpoint::read(&path, &Device::Cpu).unwrap();
    let spec = ckpt.spec(Some("121")).unwrap();
    assert_eq!(
        (
            spec.name.as_str(),
            spec.architecture.in_channels,
            spec.architecture.num_classes
        ),
        ("densenet121", 1, 2)
    );
    assert_eq!(
        ckpt.notices,
        [
            "densenet121: 2 classes, as classifier.weight has (the variant has 1000)",
            "densenet121: 1 input channel, as features.conv0.weight has (the variant has 3)"
        ]
    );
    let x = Tensor::zeros((1, 1, 64, 64), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(logits(ckpt, &spec, &x).dims(), [1, 2]);
}

#[test]
fn when_nothing_fits_the_error_names_the_tensor() {
    let f = Fixture::load("tiny_bottleneck");
    let dir = temp("nofit");
    let mut tensors = state_dict(&f.spec, &f.state()).unwrap();
    // A classifier bias of the wrong length: the architecture is readable, one tensor is not.
    for (name, t) in tensors.iter_mut() {
        if name == "classifier.bias" {
            *t = Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap();
        }
    }
    let path = dir.join("bias.safetensors");
    write_safetensors(&path, &tensors, None).unwrap();
    let out = zoo(&["export", "--weights", path.to_str().unwrap(), "--out", "x"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("tensor classifier.bias: expected shape [7], found [5]"),
        "{err}"
    );
    // A dense layer missing: the tensors describe no DenseNet; the message says which.
    tensors.retain(|(n, _)| !n.starts_with("features.denseblock2.denselayer1."));
    let path = dir.join("hole.safetensors");
    write_safetensors(&path, &tensors, None).unwrap();
    let out = zoo(&["export", "--weights", path.to_str().unwrap(), "--out", "x"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("describe no DenseNet (no tensor features.denseblock2.denselayer1.conv1.weight)"),
        "{err}"
    );
    assert!(
        err.contains("tensors are named classifier.bias, classifier.weight, features.conv0.weight, "),
        "{err}"
    );
}

#[test]
fn the_books_current_edition_loads_whole_or_inner() {
    let reference =
        candle_core::safetensors::load(wild("d2l_current_ref.safetensors"), &Device::Cpu).unwrap();
    for file in ["d2l_current.pth", "d2l_current_inner.pth"] {
        let mut ckpt = read(file);
        assert_eq!(ckpt.scheme, NamingScheme::D2lCurrent, "{file}");
        let spec = ckpt.spec(None).unwrap();
        assert_eq!(
            (
                spec.architecture.in_channels,
                spec.architecture.num_classes,
                spec.architecture.conv_bias
            ),
            (1, 5, true)
        );
        assert_eq!(
            (
                spec.architecture.layer,
                spec.architecture.growth_rate,
                spec.architecture.stem_features
            ),
            (LayerKind::Plain, 8, 16)
        );
        assert_eq!(spec.architecture.block_config, [2, 3]);
        assert_close(
            &logits(ckpt, &spec, &reference["input"]),
            &reference["logits"],
            1e-5,
            file,
        );
    }
    // And it exports to the book's first-edition names, as before.
    let out = temp("d2l").join("book.safetensors");
    let result = zoo(&[
        "export",
        "--weights",
        wild("d2l_current.pth").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--format",
        "d2l",
    ]);
    assert!(result.status.success(), "{}", stderr(&result));
    let back = Checkpoint::read(&out, &Device::Cpu).unwrap();
    assert_eq!(back.scheme, NamingScheme::D2l);
    assert!(candle_core::safetensors::load(&out, &Device::Cpu)
        .unwrap()
        .contains_key("1.net.0.0.weight"));

    // And to the current class's own names, every key of its state dict and nothing else.
    let current = temp("d2l").join("current.safetensors");
    let result = zoo(&[
        "export",
        "--weights",
        wild("d2l_current_inner.pth").to_str().unwrap(),
        "--out",
        current.to_str().unwrap(),
        "--format",
        "d2l-current",
    ]);
    assert!(result.status.success(), "{}", stderr(&result));
    let bytes = std::fs::read(&current).unwrap();
    let mut written: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let reference = std::fs::read(wild("d2l_current_ref.safetensors")).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&reference).unwrap();
    let mut keys: Vec<String> =
        serde_json::from_str(&header.metadata().as_ref().unwrap()["state_dict_keys"]).unwrap();
    written.sort();
    keys.sort();
    assert_eq!(written, keys);
    let back = Checkpoint::read(&current, &Device::Cpu).unwrap();
    assert_eq!(back.scheme, NamingScheme::D2lCurrent);
    assert_tensors(&back, &read("d2l_current.pth").tensors, identity);
}

#[test]
fn the_format_comes_from_the_bytes_not_the_extension() {
    let f = Fixture::load("tiny_bottleneck");
    let dir = temp("ext");
    for (from, to) in [
        ("legacy_torchvision.pth", "weights.safetensors"),
        ("zip_shared.pth", "weights.bin"),
    ] {
        let path = dir.join(to);
        std::fs::copy(wild(from), &path).unwrap();
        let ckpt = Checkpoint::read(&path, &Device::Cpu).unwrap();
        assert_tensors(&ckpt, &f.state(), identity);
    }
    let path = dir.join("weights.pth");
    write_safetensors(&path, &state_dict(&f.spec, &f.state()).unwrap(), None).unwrap();
    assert_tensors(
        &Checkpoint::read(&path, &Device::Cpu).unwrap(),
        &f.state(),
        identity,
    );

    // Bytes of no format at all (a web page is named as one: tests/pipelines.rs).
    let junk = dir.join("junk.pth");
    std::fs::write(&junk, b"\x13\x37 404 not found, nor anything else").unwrap();
    let err = Checkpoint::read(&junk, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("junk.pth: not a valid safetensors file"), "{err}");
    assert!(err.contains("nor a PyTorch file (zip"), "{err}");
}

#[test]
fn cut_or_corrupt_legacy_files_are_refused_without_a_panic() {
    let bytes = std::fs::read(wild("legacy_torchvision.pth")).unwrap();
    let dir = temp("cut");
    // The cut points: inside the pickles, inside the storage list, inside the last storage.
    for cut in [20, 200, 2000, bytes.len() / 2, bytes.len() - 1] {
        let path = dir.join(format!("cut-{cut}.pth"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = Checkpoint::read(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains(&format!("cut-{cut}.pth: PyTorch legacy")),
            "{cut}: {err}"
        );
    }
    let path = dir.join("cut-end.pth");
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    let err = Checkpoint::read(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains(" elements of ") && err.contains(" bytes, but "),
        "{err}"
    );
    // A storage that claims more elements than the file holds.
    let mut huge = bytes.clone();
    let keys_end = find_storage_data(&bytes);
    huge[keys_end..keys_end + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let path = dir.join("huge.pth");
    std::fs::write(&path, &huge).unwrap();
    let err = Checkpoint::read(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("claims 1152921504606846976 elements"), "{err}");
}

/// Where the first storage's element count sits: right after the storage-key list, the
/// only pickle that starts with PROTO 2 and an empty list, and ends at its first `e.`
/// (APPENDS, STOP) since the keys are digits.
fn find_storage_data(bytes: &[u8]) -> usize {
    let start = bytes.windows(3).position(|w| w == b"\x80\x02]").unwrap();
    start + bytes[start..].windows(2).position(|w| w == b"e.").unwrap() + 2
}
