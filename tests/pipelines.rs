//! What pipelines meet: two processes on one run folder, outputs that cannot be written,
//! interrupts during writes, files that are not checkpoints, numbers out of range, very large
//! images and the progress bar.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{slice_of_fashion_mnist, stderr, train_args, zoo};

fn temp(name: &str) -> PathBuf {
    common::temp("pipelines", name)
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_densenet-zoo")
}

fn spawn(args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A `side`×`side` RGB PNG whose pixels depend on `seed`.
fn png(path: &Path, side: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(side, side, |x, y| {
        let v = ((x * 7 + y * 13 + seed * 31) % 251) as u8;
        image::Rgb([v, v / 2, 255 - v])
    })
    .save(path)
    .unwrap();
}

/// The hidden temporary files of atomic writes in `dir`.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n.contains(".tmp-"))
        .collect()
}

fn interrupt(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_second_process_on_a_busy_run_folder_is_refused_and_a_killed_holder_leaves_no_lock() {
    let data = slice_of_fashion_mnist("lock", 4096, 128);
    let d = data.to_str().unwrap();
    let out = data.join("run");
    let o = out.to_str().unwrap();
    let mut first = spawn(&train_args(d, o, "5"));
    // The holder has written its record once the lock is taken.
    let lock = out.join(".densenet-zoo.lock");
    let started = Instant::now();
    while std::fs::read_to_string(&lock).map_or(true, |t| t.trim().is_empty()) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the first run never took its lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A fresh run, a resume and a tabular run into the same folder are each refused, naming
    // the folder and the holder, and leave the holder's files alone.
    for args in [
        train_args(d, o, "1"),
        vec!["train", "--resume", "--out", o],
        vec![
            "train",
            "--variant",
            "dense-mlp",
            "--data",
            "houses.csv",
            "--target",
            "y",
            "--out",
            o,
        ],
    ] {
        let second = zoo(&args);
        assert!(!second.status.success(), "{args:?}");
        let err = stderr(&second);
        let holder = format!("is in use by another run (process {} on ", first.id());
        assert!(err.contains(o) && err.contains(&holder), "{args:?}: {err}");
    }
    assert!(first.try_wait().unwrap().is_none(), "the holder still runs");
    // kill -9: the kernel drops the lock with the process; the next run starts.
    first.kill().unwrap();
    first.wait().unwrap();
    let next = zoo(&train_args(d, o, "1"));
    assert!(next.status.success(), "{}", stderr(&next));
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
fn every_command_that_writes_checks_its_outputs_before_reading_any_input() {
    let dir = temp("outputs");
    let file = dir.join("file.jpg");
    std::fs::write(&file, b"a file, not a folder").unwrap();
    let under = |rest: &str| file.join(rest).to_str().unwrap().to_string();
    // Every input is missing: reading any would fail with another message.
    let missing = "/nonexistent/input.png";
    let weights = "/nonexistent/weights.pth";
    let commands: Vec<Vec<String>> = vec![
        vec![
            "features".into(),
            missing.into(),
            "--weights".into(),
            weights.into(),
            "--out".into(),
            under("x.safetensors"),
        ],
        vec![
            "export".into(),
            "--weights".into(),
            weights.into(),
            "--out".into(),
            under("x.safetensors"),
        ],
        vec![
            "infer".into(),
            missing.into(),
            "--weights".into(),
            weights.into(),
            "--cam".into(),
            under("maps"),
        ],
        vec![
            "train".into(),
            "--data".into(),
            "/nonexistent/data".into(),
            "--out".into(),
            under("run"),
        ],
        vec![
            "train".into(),
            "--variant".into(),
            "dense-mlp".into(),
            "--data".into(),
            "/nonexistent/houses.csv".into(),
            "--target".into(),
            "y".into(),
            "--out".into(),
            under("run"),
        ],
    ];
    let is_file = format!("{} is a file, not a folder", file.display());
    for args in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = zoo(&args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            err.contains(&is_file) && !err.contains("nonexistent"),
            "{args:?}: {err}"
        );
    }
    // A missing folder, and a folder that takes no new file (even for root).
    let out = zoo(&[
        "features",
        missing,
        "--out",
        dir.join("no/such/x.safetensors").to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("does not exist; nothing was written"),
        "{}",
        stderr(&out)
    );
    let out = zoo(&["export", "--weights", weights, "--out", "/sys/x.safetensors"]);
    assert!(
        stderr(&out).contains("cannot write in /sys: Permission denied"),
        "{}",
        stderr(&out)
    );
    // A read-only file system, where this user may mount one in a private namespace.
    let ro = dir.join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    let script = format!(
        "mount -t tmpfs -o ro tmpfs {ro} && exec {bin} features {missing} --out {ro}/x.safetensors",
        ro = ro.display(),
        bin = bin()
    );
    match Command::new("unshare").args(["-m", "sh", "-c", &script]).output() {
        Ok(out) if !stderr(&out).contains("mount") && !stderr(&out).contains("unshare") => {
            let err = stderr(&out);
            assert!(
                err.contains("Read-only file system") && !err.contains("nonexistent"),
                "{err}"
            );
        }
        _ => eprintln!("note: skipped the read-only file system case: this user cannot mount one"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `args` and interrupts it once a temporary file appears in `dir`: true when the
/// interrupt landed inside the write (no finished `out`), checking that nothing is left.
fn interrupted_during_write(args: &[&str], dir: &Path, out: &Path) -> bool {
    let _ = std::fs::remove_file(out);
    let mut child = spawn(args);
    let caught = loop {
        if !temporaries(dir).is_empty() {
            interrupt(&child);
            break true;
        }
        if child.try_wait().unwrap().is_some() {
            break false;
        }
    };
    let status = child.wait().unwrap();
    if !caught || out.exists() {
        return false; // the rename won the race
    }
    assert_eq!(status.code(), Some(130), "{args:?}");
    assert_eq!(
        temporaries(dir),
        Vec::<String>::new(),
        "{args:?} left a temporary file"
    );
    true
}

#[test]
fn an_interrupt_during_a_write_leaves_no_temporary_file() {
    let dir = temp("interrupt");
    // Features: 240 images' stem maps, 64 channels of 16×16 each, 15 MiB.
    let images = dir.join("images");
    for i in 0..240 {
        png(&images.join(format!("{i:03}.png")), 40, i);
    }
    let outs = dir.join("out");
    std::fs::create_dir_all(&outs).unwrap();
    let feats = outs.join("f.safetensors");
    let features = [
        "features",
        images.to_str().unwrap(),
        "--layer",
        "stem",
        "--out",
        feats.to_str().unwrap(),
    ];
    // Export: a DenseNet-121 state dict, 32 MiB.
    let big = dir.join("121.safetensors");
    let spec = densenet_zoo::VariantSpec::resolve("121").unwrap();
    let varmap = densenet_zoo::train::seeded_varmap(&spec, 0, &candle_core::Device::Cpu).unwrap();
    let tensors =
        densenet_zoo::checkpoint::state_dict(&spec, &densenet_zoo::checkpoint::varmap_tensors(&varmap))
            .unwrap();
    densenet_zoo::checkpoint::write_safetensors(&big, &tensors, None).unwrap();
    let exported = outs.join("e.safetensors");
    let export = [
        "export",
        "--weights",
        big.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ];
    for (args, out) in [(&features[..], &feats), (&export[..], &exported)] {
        // The write is milliseconds long: a miss is retried.
        assert!(
            (0..20).any(|_| interrupted_during_write(args, &outs, out)),
            "no interrupt landed inside the write of {args:?} in 20 runs"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn files_that_are_not_checkpoints_are_named_with_what_to_do() {
    let dir = temp("foreign");
    let image = dir.join("cat.png");
    png(&image, 32, 1);
    let mut hdf5 = b"\x89HDF\r\n\x1a\n".to_vec();
    hdf5.resize(4096, 0);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("model.h5", hdf5, "a Keras/HDF5 file"),
        (
            "model.onnx",
            b"\x08\x08\x12\x07pytorch\x1a\x052.5.1".to_vec(),
            "an ONNX model",
        ),
        (
            "model.gguf",
            b"GGUF\x03\x00\x00\x00\x00\x00".to_vec(),
            "a GGUF file",
        ),
        (
            "weights.npy",
            b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}".to_vec(),
            "a NumPy array",
        ),
        (
            "model.tflite",
            b"\x1c\x00\x00\x00TFL3\x00\x00\x00\x00".to_vec(),
            "a TensorFlow Lite model",
        ),
        (
            "w.bin",
            b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n".to_vec(),
            "a Git LFS pointer",
        ),
        (
            "w.safetensors",
            b"<!DOCTYPE html>\n<html><body>hub page</body></html>".to_vec(),
            "a web page",
        ),
    ];
    for (name, bytes, format) in &cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = zoo(&[
            "infer",
            image.to_str().unwrap(),
            "--weights",
            path.to_str().unwrap(),
        ]);
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(
            err.contains(&path.display().to_string()) && err.contains(format),
            "{name}: {err}"
        );
    }
    // Real files, as torch.onnx.export, torch.jit.save, h5py, NumPy and gguf write them
    // (tests/fixtures/make_fine_tune_fixtures.py).
    let real = common::fixtures_dir().join("fine_tune");
    for (name, format) in [
        ("tiny.onnx", "an ONNX model"),
        ("tiny_script.pt", "a TorchScript archive"),
        ("tiny.h5", "a Keras/HDF5 file"),
        ("tiny.npy", "a NumPy array"),
        ("tiny.npz", "a NumPy archive"),
        ("tiny.gguf", "a GGUF file"),
    ] {
        let path = real.join(name);
        let out = zoo(&[
            "infer",
            image.to_str().unwrap(),
            "--weights",
            path.to_str().unwrap(),
        ]);
        let err = stderr(&out);
        assert!(
            err.contains(&path.display().to_string()) && err.contains(format),
            "{name}: {err}"
        );
    }
    // Folders: a TensorFlow SavedModel, and a hub snapshot holding one weights file.
    let saved = dir.join("saved_model");
    std::fs::create_dir_all(saved.join("variables")).unwrap();
    std::fs::write(saved.join("saved_model.pb"), b"\x08\x01\x12\x00").unwrap();
    let snapshot = dir.join("snapshot");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/d2l-fashion-mnist.safetensors"),
        snapshot.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(snapshot.join("config.json"), b"{}").unwrap();
    for (folder, want) in [
        (&saved, "a TensorFlow SavedModel folder".to_string()),
        (
            &snapshot,
            format!(
                "pass the file in it, {}",
                snapshot.join("model.safetensors").display()
            ),
        ),
    ] {
        let out = zoo(&[
            "infer",
            image.to_str().unwrap(),
            "--weights",
            folder.to_str().unwrap(),
        ]);
        assert!(stderr(&out).contains(&want), "{}", stderr(&out));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn refused_flag(args: &[&str], want: &str) {
    let out: Output = zoo(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = stderr(&out);
    assert!(err.contains(want), "{args:?}: {err}");
}

#[test]
fn numbers_out_of_range_are_refused_by_flag() {
    let img = "weights/examples";
    for (args, want) in [
        (
            &["infer", img, "--topk", "0"][..],
            "invalid value '0' for '--topk <TOPK>': must be at least 1",
        ),
        (
            &["infer", img, "--topk", "-3"],
            "'--topk <TOPK>': must be at least 1",
        ),
        (
            &["infer", img, "--batch-size", "0"],
            "'--batch-size <BATCH_SIZE>': must be at least 1",
        ),
        (
            &[
                "features",
                img,
                "--out",
                "/tmp/x.safetensors",
                "--batch-size",
                "0",
            ],
            "must be at least 1",
        ),
        (
            &["eval", "--weights", "w", "--batch-size", "0"],
            "must be at least 1",
        ),
        (
            &["train", "--epochs", "0"],
            "'--epochs <EPOCHS>': must be at least 1",
        ),
        (&["train", "--batch-size", "-1"], "must be at least 1"),
        (&["train", "--lr", "nan"], "'--lr <LR>': must be a finite number"),
        (&["train", "--momentum", "inf"], "must be a finite number"),
        (
            &["train", "--warmup-epochs", "-1"],
            "'--warmup-epochs <WARMUP_EPOCHS>': must be 0 or more",
        ),
        (&["train", "--image-size", "0"], "must be at least 1"),
        (&["train", "--num-classes", "0"], "must be at least 1"),
        (
            &["bench", "--iters", "0"],
            "'--iters <ITERS>': must be at least 1",
        ),
        (&["bench", "--batch", "0"], "must be at least 1"),
        (&["summary", "--input-size", "0"], "must be at least 1"),
        (
            &["check-device", "--tolerance", "0"],
            "'--tolerance <TOLERANCE>': must be more than 0",
        ),
        (
            &["infer", img, "--cam", "/tmp/m", "--cam-class", "-1"],
            "must be 0 or more",
        ),
    ] {
        refused_flag(args, want);
    }
    // In range for the flag, but not for the run: the library's check names the field, and
    // the command line its flag.
    let data = slice_of_fashion_mnist("warmup", 64, 16);
    let out = data.join("run");
    refused_flag(
        &[
            "train",
            "--data",
            data.to_str().unwrap(),
            "--epochs",
            "2",
            "--warmup-epochs",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
        "--warmup-epochs 2 leaves no epoch of the 2 at the full learning rate",
    );
    std::fs::remove_dir_all(&data).unwrap();
    // More classes than the model has: all are shown, and said.
    let out = zoo(&[
        "infer",
        "weights/examples/t10k-00000-ankle-boot.png",
        "--json",
        "--topk",
        "20",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("--topk 20: "), "{}", stderr(&out));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["top"].as_array().unwrap().len(), 10);
}

#[test]
fn images_are_opened_up_to_pils_limit_and_refused_beyond_it_with_the_size() {
    let dir = temp("large");
    // A 17000×3000 panorama, 51 million pixels: PIL opens it, and so does infer.
    let panorama = dir.join("panorama.png");
    image::GrayImage::from_fn(17_000, 3_000, |x, _| image::Luma([(x % 256) as u8]))
        .save(&panorama)
        .unwrap();
    let out = zoo(&["infer", panorama.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["top"].as_array().unwrap().len(), 5);
    // 13400×13400 is 179,560,000 pixels, more than PIL's 178,956,970: named, before decoding.
    let huge = dir.join("huge.png");
    std::fs::write(&huge, common::png_header_only(13_400, 13_400)).unwrap();
    let out = zoo(&["infer", huge.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("13400×13400 is 179,560,000 pixels, more than the 178,956,970 that PIL opens"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn infer_and_features_show_a_progress_bar_on_a_terminal_and_nothing_elsewhere() {
    let dir = temp("progress");
    for i in 0..48 {
        png(&dir.join(format!("images/{i:02}.png")), 32, i);
    }
    let images = dir.join("images");
    let feats = dir.join("f.safetensors");
    let runs = [
        (vec!["infer", images.to_str().unwrap()], "classifying ["),
        (
            vec![
                "features",
                images.to_str().unwrap(),
                "--out",
                feats.to_str().unwrap(),
            ],
            "embedding [",
        ),
    ];
    for (args, bar) in runs {
        // Not a terminal: no bar in stderr.
        let out = zoo(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!stderr(&out).contains(bar), "{}", stderr(&out));
        // A terminal (a pseudo-terminal from util-linux's script): the bar is drawn.
        let command = format!("{} {} --batch-size 4", bin(), args.join(" "));
        let Ok(tty) = Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env("TERM", "xterm")
            .output()
        else {
            eprintln!("note: skipped the terminal case: util-linux's script is not installed");
            return;
        };
        assert!(tty.status.success(), "{}", String::from_utf8_lossy(&tty.stdout));
        let shown = String::from_utf8_lossy(&tty.stdout);
        assert!(shown.contains(bar) && shown.contains("/48 images"), "{shown}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_diverged_model_is_refused_not_scored_nor_saved() {
    // One batch an epoch at an absurd rate: the step leaves the weights overflowing before
    // any loss is NaN; the test split's outputs are then not finite, and nothing is saved.
    let data = slice_of_fashion_mnist("diverge", 64, 32);
    let d = data.to_str().unwrap();
    let out = data.join("run");
    let o = out.to_str().unwrap();
    let mut args = train_args(d, o, "1");
    args.extend(["--lr", "1e38"]);
    let run = zoo(&args);
    assert!(!run.status.success());
    let err = stderr(&run);
    assert!(
        err.contains("the model's outputs are not finite (NaN or infinite) for")
            && err.contains("no checkpoint was written"),
        "{err}"
    );
    assert!(!out.join("best.safetensors").exists() && !out.join("last.safetensors").exists());
    // A checkpoint whose outputs overflow: infer refuses each image; eval counts misses.
    let mut ckpt = densenet_zoo::checkpoint::Checkpoint::read(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/d2l-fashion-mnist.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    // Finite weights (loading refuses others) whose products overflow to infinity.
    let w = ckpt.tensors["classifier.weight"].ones_like().unwrap();
    ckpt.tensors
        .insert("classifier.weight".into(), (w * 3e38).unwrap());
    let spec = ckpt.spec(None).unwrap();
    let tensors = densenet_zoo::checkpoint::state_dict(&spec, &ckpt.tensors).unwrap();
    let broken = data.join("overflow.safetensors");
    let metadata = ckpt.metadata.clone().unwrap();
    densenet_zoo::checkpoint::write_safetensors(&broken, &tensors, Some(&metadata)).unwrap();
    let b = broken.to_str().unwrap();
    let run = zoo(&[
        "infer",
        "weights/examples/t10k-00000-ankle-boot.png",
        "--weights",
        b,
    ]);
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains("the model's outputs for it are not finite"),
        "{}",
        stderr(&run)
    );
    let run = zoo(&["eval", "--weights", b, "--data", d, "--json"]);
    assert!(stderr(&run).contains("they count as misses"), "{}", stderr(&run));
    let line: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(line["top1"], 0.0);
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
fn an_interrupted_run_lets_its_folder_go_and_a_refused_one_leaves_none() {
    let data = slice_of_fashion_mnist("interrupt-lock", 4096, 64);
    let out = data.join("run");
    let o = out.to_str().unwrap();
    let mut child = spawn(&train_args(data.to_str().unwrap(), o, "3"));
    while !out.join("metrics.jsonl").exists() && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Two interrupts at once, as `timeout` and `mpirun` send them: still a clean stop.
    interrupt(&child);
    interrupt(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(out.join("last.safetensors").exists());
    assert!(
        !out.join(".densenet-zoo.lock").exists(),
        "the lock file outlived the run"
    );
    // A run refused before its first write leaves no folder behind.
    let never = data.join("never/made");
    let run = zoo(&[
        "train",
        "--data",
        "/nonexistent/data",
        "--out",
        never.to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    assert!(!data.join("never").exists());
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
fn benchmarks_that_cannot_fit_are_refused_before_allocating() {
    let out = zoo(&[
        "bench",
        "--variant",
        "d2l",
        "--batch",
        "100000000",
        "--iters",
        "1",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--batch 100000000 at 96×96 needs at least") && err.contains("GiB"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{err}"
    );
    let out = zoo(&["bench", "--variant", "d2l", "--size", "100000", "--iters", "1"]);
    assert!(stderr(&out).contains("more than the limit"), "{}", stderr(&out));
    refused_flag(
        &["infer", "x", "--topk", "99999999999999999999"],
        "must be at most",
    );
}
