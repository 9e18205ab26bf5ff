//! What fine-tuners meet: short runs at the learning rate asked for, frozen levels kept as
//! loaded, class names for checkpoints that record none, and EMA copies of the weights.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{fixtures_dir, image_folder, metrics, slice_of_fashion_mnist, stderr, zoo};
use densenet_zoo::checkpoint::Checkpoint;

fn temp(name: &str) -> PathBuf {
    common::temp("fine-tuning", name)
}

/// Every tensor of a checkpoint by name, as f64 values (integers too), with its dtype.
fn tensors(path: &Path) -> HashMap<String, Vec<f64>> {
    Checkpoint::read(path, &Device::Cpu)
        .unwrap()
        .tensors
        .into_iter()
        .map(|(k, t)| {
            (
                k,
                t.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn short_runs_train_their_first_epoch_at_the_rate_asked_for() {
    // The issue's case: DenseNet-121's ImageNet recipe (step at 1/3 and 2/3), one and two
    // epochs, --lr 0.01; at 32×32 to be quick.
    let dir = temp("short-runs");
    image_folder(&dir, &["a", "b"], 16, 32);
    let data = dir.to_str().unwrap();
    for (epochs, want_lr, note) in [
        (
            "1",
            vec![0.01],
            "fall outside a run of 1 epoch: it trains at lr 0.01 throughout",
        ),
        (
            "2",
            vec![0.01, 0.001],
            "the milestone at 67 % (epoch 2) is left out",
        ),
    ] {
        let out = dir.join(format!("run-{epochs}"));
        let run = zoo(&[
            "train",
            "--variant",
            "121",
            "--data",
            data,
            "--image-size",
            "32",
            "--batch-size",
            "16",
            "--epochs",
            epochs,
            "--lr",
            "0.01",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{}", stderr(&run));
        assert!(stderr(&run).contains(note), "{}", stderr(&run));
        let lrs: Vec<f64> = metrics(&out).iter().map(|m| m["lr"].as_f64().unwrap()).collect();
        assert_eq!(lrs.len(), want_lr.len());
        for (lr, want) in lrs.iter().zip(&want_lr) {
            assert!((lr - want).abs() < 1e-12, "{epochs} epochs: {lrs:?}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The frozen and trained tensors of a d2l fine-tune with `--freeze level`, from the
/// embedded weights on a slice of Fashion-MNIST: the names in `frozen` must come back
/// bit-identical (weights, running statistics, `num_batches_tracked`), every other one changed.
fn check_freeze(level: &str, frozen: &[&str]) {
    let data = slice_of_fashion_mnist(&format!("freeze-{level}"), 256, 64);
    let out = data.join("run");
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/d2l-fashion-mnist.safetensors");
    let run = zoo(&[
        "train",
        "--variant",
        "d2l",
        "--data",
        data.to_str().unwrap(),
        "--image-size",
        "32",
        "--batch-size",
        "32",
        "--epochs",
        "2",
        "--weight-decay",
        "0.01",
        "--momentum",
        "0.9",
        "--weights",
        weights.to_str().unwrap(),
        "--freeze",
        level,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let before = tensors(&weights);
    let last = tensors(&out.join("last.safetensors"));
    let is_frozen = |name: &str| frozen.iter().any(|p| name.starts_with(p));
    let mut counted = (0, 0);
    for (name, was) in &before {
        let now = &last[name];
        if is_frozen(name) {
            assert_eq!(now, was, "{level}: {name} changed");
            counted.0 += 1;
        } else if !name.ends_with("num_batches_tracked") {
            assert_ne!(now, was, "{level}: {name} did not train");
            counted.1 += 1;
        }
    }
    assert!(counted.0 > 0 && counted.1 > 0, "{counted:?}");
    // The optimiser holds no state for what it never updates.
    let ckpt = Checkpoint::read(&out.join("last.safetensors"), &Device::Cpu).unwrap();
    assert!(ckpt
        .optimizer
        .keys()
        .all(|k| !is_frozen(k.split_once('.').unwrap().1)));
    assert!(!ckpt.optimizer.is_empty());
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
fn freezing_keeps_the_frozen_tensors_bit_identical() {
    check_freeze(
        "block2",
        &[
            "features.conv0.",
            "features.norm0.",
            "features.denseblock1.",
            "features.transition1.",
            "features.denseblock2.",
        ],
    );
    // Head only: the whole backbone, norm5 included; only the classifier trains.
    check_freeze("features", &["features."]);
}

#[test]
fn freezing_is_refused_without_weights_and_for_a_level_the_net_lacks() {
    let data = slice_of_fashion_mnist("freeze-refused", 64, 16);
    let d = data.to_str().unwrap();
    let out = data.join("run");
    let o = out.to_str().unwrap();
    let base = [
        "train",
        "--variant",
        "d2l",
        "--data",
        d,
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--out",
        o,
    ];
    let run = zoo(&[&base[..], &["--freeze", "block1"]].concat());
    assert!(
        stderr(&run)
            .contains("--freeze block1 keeps what was loaded as it is, and this run starts from new weights"),
        "{}",
        stderr(&run)
    );
    let run = zoo(&[
        &base[..],
        &[
            "--freeze",
            "block9",
            "--weights",
            "weights/d2l-fashion-mnist.safetensors",
        ],
    ]
    .concat());
    assert!(
        stderr(&run)
            .contains("no level `block9`: the levels are stem, block1, block2, block3, block4, and features"),
        "{}",
        stderr(&run)
    );
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
fn a_frozen_prefix_gets_no_gradient_and_keeps_its_running_statistics_in_training() {
    use candle_nn::{VarBuilder, VarMap};
    use densenet_zoo::{DenseNet, VariantSpec};
    let dev = Device::Cpu;
    let spec = VariantSpec::resolve("d2l").unwrap();
    let varmap: VarMap = densenet_zoo::train::seeded_varmap(&spec, 1, &dev).unwrap();
    let model = DenseNet::new(&spec, VarBuilder::from_varmap(&varmap, DType::F32, &dev))
        .unwrap()
        .with_frozen(Some("block1"))
        .unwrap();
    assert_eq!(model.frozen_level(), Some(1));
    let running = |name: &str| {
        varmap.data().lock().unwrap()[name]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let frozen_mean = running("features.denseblock1.denselayer1.norm1.running_mean");
    let trained_mean = running("features.denseblock2.denselayer1.norm1.running_mean");
    let x = Tensor::randn(0f32, 1.0, (4, 1, 32, 32), &dev).unwrap();
    let loss = model
        .forward_t(&x, true)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    for (name, var) in data.iter() {
        let has = grads.get(var.as_tensor()).is_some();
        if model.is_frozen(name) {
            assert!(!has, "{name} got a gradient");
        } else if !densenet_zoo::checkpoint::is_buffer(name) {
            assert!(has, "{name} got no gradient");
        }
    }
    drop(data);
    assert_eq!(
        running("features.denseblock1.denselayer1.norm1.running_mean"),
        frozen_mean
    );
    assert_ne!(
        running("features.denseblock2.denselayer1.norm1.running_mean"),
        trained_mean
    );
    // block1 ends before the transition that follows it.
    assert!(model.is_frozen("features.denseblock1.denselayer4.conv1.weight"));
    assert!(!model.is_frozen("features.transition1.conv.weight"));
}

#[test]
fn class_names_from_a_file_name_a_foreign_checkpoints_outputs() {
    let dir = temp("labels");
    let weights = fixtures_dir().join("fine_tune/three_classes.pth");
    let w = weights.to_str().unwrap();
    image_folder(&dir, &["cat", "dog", "fox"], 2, 40);
    let names = dir.join("names.txt");
    std::fs::write(&names, "tabby cat\nretriever\nred fox\n").unwrap();
    let n = names.to_str().unwrap();
    let image = dir.join("val/cat/00.png");
    // Without names: class0 ... class2; with them, each index gets its own name.
    let out = zoo(&["infer", image.to_str().unwrap(), "--weights", w, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"class0\""));
    let out = zoo(&[
        "infer",
        image.to_str().unwrap(),
        "--weights",
        w,
        "--json",
        "--labels",
        n,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = ["tabby cat", "retriever", "red fox"];
    for top in line["top"].as_array().unwrap() {
        assert_eq!(top["label"], want[top["index"].as_u64().unwrap() as usize]);
    }
    // A file of another count is refused, naming it; for eval and features too.
    let two = dir.join("two.txt");
    std::fs::write(&two, "cat\ndog\n").unwrap();
    for args in [
        vec![
            "infer",
            image.to_str().unwrap(),
            "--weights",
            w,
            "--labels",
            two.to_str().unwrap(),
        ],
        vec![
            "eval",
            "--weights",
            w,
            "--data",
            dir.to_str().unwrap(),
            "--labels",
            two.to_str().unwrap(),
        ],
    ] {
        let out = zoo(&args);
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(
            err.contains(&format!(
                "class names {}: 2 class names, but the classifier has 3 outputs",
                two.display()
            )),
            "{err}"
        );
    }
    let out = zoo(&[
        "eval",
        "--weights",
        w,
        "--data",
        dir.to_str().unwrap(),
        "--labels",
        n,
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // features records the outputs' names with the logits.
    let feats = dir.join("logits.safetensors");
    let out = zoo(&[
        "features",
        image.to_str().unwrap(),
        "--weights",
        w,
        "--labels",
        n,
        "--layer",
        "logits",
        "--out",
        feats.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let meta = Checkpoint::read(&feats, &Device::Cpu).unwrap().metadata.unwrap();
    assert_eq!(meta.classes, want);
    // Over an ImageFolder, its class names (of `labels`) go beside the outputs' names.
    let out = zoo(&[
        "features",
        dir.join("val").to_str().unwrap(),
        "--weights",
        w,
        "--labels",
        n,
        "--layer",
        "logits",
        "--out",
        feats.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(&feats).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let header = header.metadata().clone().unwrap();
    assert_eq!(header["densenet_zoo.label_names"], r#"["cat","dog","fox"]"#);
    assert_eq!(
        header["densenet_zoo.classes"],
        r#"["tabby cat","retriever","red fox"]"#
    );
    // train records the names it is given in its checkpoints, for infer to show.
    let run = dir.join("run");
    let out = zoo(&[
        "train",
        "--variant",
        "d2l",
        "--data",
        dir.to_str().unwrap(),
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--labels",
        n,
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let meta = Checkpoint::read(&run.join("best.safetensors"), &Device::Cpu)
        .unwrap()
        .metadata
        .unwrap();
    assert_eq!(meta.classes, want);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_ema_copy_or_any_key_of_a_training_checkpoint_is_read_when_asked() {
    let dir = temp("ema");
    let fine = fixtures_dir().join("fine_tune");
    let ema = tensors(&fine.join("ema_ref.safetensors"));
    let timm = fine.join("timm_ema.pth.tar");
    let export = |weights: &Path, extra: &[&str]| {
        let out = dir.join("out.safetensors");
        let _ = std::fs::remove_file(&out);
        let run = zoo(&[
            &[
                "export",
                "--weights",
                weights.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            extra,
        ]
        .concat());
        (run, out)
    };
    // By default the model's state dict, and the notice says the EMA copy is there.
    let (run, out) = export(&timm, &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains(
            "also present, not read: state_dict_ema, timm's EMA of the weights, which use_ema reads"
        ),
        "{}",
        stderr(&run)
    );
    assert_ne!(
        tensors(&out)["features.conv0.weight"],
        ema["features.conv0.weight"]
    );
    // --use-ema, --weights-key state_dict_ema, and a nested key all read the EMA copy.
    for (weights, extra) in [
        (&timm, &["--use-ema"][..]),
        (&timm, &["--weights-key", "state_dict_ema"]),
        (&fine.join("nested_ema.pth"), &["--weights-key", "ema.module"]),
    ] {
        let (run, out) = export(weights, extra);
        assert!(run.status.success(), "{extra:?}: {}", stderr(&run));
        let got = tensors(&out);
        for (name, want) in &ema {
            if !name.ends_with("num_batches_tracked") {
                assert_eq!(&got[name], want, "{extra:?}: {name}");
            }
        }
    }
    // Refused: no EMA copy, a key that is not there, a safetensors file.
    for (weights, extra, want) in [
        (
            fixtures_dir().join("tiny_bottleneck_nested.pth"),
            vec!["--use-ema"],
            "has no EMA copy of the weights (state_dict_ema or model_ema)",
        ),
        (
            timm.clone(),
            vec!["--weights-key", "teacher"],
            "has no key `teacher`: its dicts of tensors are under",
        ),
        (
            fixtures_dir().join("tiny_bottleneck.safetensors"),
            vec!["--use-ema"],
            "a safetensors file holds one state dict",
        ),
    ] {
        let (run, _) = export(&weights, &extra);
        assert!(!run.status.success());
        let err = stderr(&run);
        assert!(
            err.contains(&weights.display().to_string()) && err.contains(want),
            "{err}"
        );
    }
    // Found without a key when it is the only dict of tensors, however deep; a key that is
    // not a dict of tensors says what it is, and what the file holds.
    let deep = fine.join("deep_ema.pth");
    let (run, out) = export(&deep, &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("read the state dict under `model.ema.module`"),
        "{}",
        stderr(&run)
    );
    assert_eq!(
        tensors(&out)["features.conv0.weight"],
        ema["features.conv0.weight"]
    );
    for (key, want) in [
        (
            "model.ema",
            "`model.ema` is a dict without tensors: its dicts of tensors are under model.ema.module",
        ),
        ("epoch", "`epoch` holds a number, not a state dict"),
    ] {
        let (run, _) = export(&deep, &["--weights-key", key]);
        assert!(stderr(&run).contains(want), "{key}: {}", stderr(&run));
    }
    // Without --weights there is nothing for them to choose from.
    let run = zoo(&[
        "train",
        "--use-ema",
        "--epochs",
        "1",
        "--out",
        dir.join("run").to_str().unwrap(),
    ]);
    assert!(
        stderr(&run).contains("--use-ema and --weights-key choose what --weights reads: pass --weights"),
        "{}",
        stderr(&run)
    );
    // The flags conflict; infer takes them too.
    let (run, _) = export(&timm, &["--use-ema", "--weights-key", "x"]);
    assert!(stderr(&run).contains("cannot be used with"), "{}", stderr(&run));
    std::fs::remove_dir_all(&dir).unwrap();
}
