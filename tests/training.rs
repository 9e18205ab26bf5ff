//! `densenet-zoo train` on the real Fashion-MNIST files (Debian's `dataset-fashion-mnist`, which
//! `.ci/run` installs): the loss falls, a killed or interrupted run resumes exactly, a NaN stops.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

use densenet_zoo::checkpoint::Checkpoint;

mod common;
use common::{metrics, slice_of_fashion_mnist, train_args, weights_of};

fn zoo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_books_net_learns_real_fashion_mnist() {
    let data = slice_of_fashion_mnist("learn", 3072, 1000);
    let out = data.join("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let started = std::time::Instant::now();
    let result = zoo(&train_args(d, o, "2"));
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let stdout = String::from_utf8(result.stdout).unwrap();
    assert!(stdout.contains("epoch 2: loss"), "{stdout}");
    let m = metrics(&out);
    assert_eq!(m.len(), 2);
    for key in [
        "epoch",
        "loss",
        "train_acc",
        "test_acc",
        "examples_per_s",
        "wall_s",
    ] {
        assert!(m[1].get(key).is_some(), "metrics.jsonl lacks {key}");
    }
    // wall_s counts the run's seconds once: never more than the command took.
    let (w1, w2) = (m[0]["wall_s"].as_f64().unwrap(), m[1]["wall_s"].as_f64().unwrap());
    assert!(
        0.0 < w1 && w1 < w2 && w2 <= elapsed,
        "wall_s {w1}, {w2} for a run of {elapsed} s"
    );
    let (l1, l2) = (m[0]["loss"].as_f64().unwrap(), m[1]["loss"].as_f64().unwrap());
    assert!(l2 < l1, "loss did not fall: {l1} then {l2}");
    // Ten classes: chance is 0.1.
    assert!(m[1]["test_acc"].as_f64().unwrap() > 0.5, "{:?}", m[1]);
    for file in ["last.safetensors", "best.safetensors", "curves.svg"] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 3);

    // The best checkpoint carries everything needed to use it, and evaluates to what training saw.
    let best = Checkpoint::read(&out.join("best.safetensors"), &candle_core::Device::Cpu).unwrap();
    let meta = best.metadata.unwrap();
    assert_eq!(meta.spec.input_size(), 32);
    assert_eq!(meta.classes[9], "Ankle boot");
    let eval = zoo(&[
        "eval",
        "--weights",
        out.join("best.safetensors").to_str().unwrap(),
        "--data",
        d,
        "--json",
    ]);
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let e: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let best_acc = m
        .iter()
        .map(|m| m["test_acc"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        (e["top1"].as_f64().unwrap() - best_acc).abs() < 1e-9,
        "{e} vs {best_acc}"
    );
    assert!(e["top5"].as_f64().unwrap() >= e["top1"].as_f64().unwrap());
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let data = slice_of_fashion_mnist("resume", 640, 128);
    let d = data.to_str().unwrap();
    let (a, b) = (data.join("straight"), data.join("resumed"));
    let straight = zoo(&train_args(d, a.to_str().unwrap(), "2"));
    assert!(
        straight.status.success(),
        "{}",
        String::from_utf8_lossy(&straight.stderr)
    );
    let first = zoo(&train_args(d, b.to_str().unwrap(), "1"));
    assert!(first.status.success());
    let resumed = zoo(&["train", "--resume", "--epochs", "2", "--out", b.to_str().unwrap()]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("resuming from"));
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(mb.len(), 2);
    for key in ["loss", "train_acc", "test_acc"] {
        assert_eq!(ma[1][key], mb[1][key], "epoch 2 {key}");
    }
    assert_eq!(
        weights_of(&a.join("last.safetensors")),
        weights_of(&b.join("last.safetensors"))
    );
}

#[test]
fn ctrl_c_saves_mid_epoch_and_resume_finishes_the_same_run() {
    let data = slice_of_fashion_mnist("ctrlc", 4096, 128);
    let d = data.to_str().unwrap();
    let (a, b) = (data.join("straight"), data.join("interrupted"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
        .args(train_args(d, b.to_str().unwrap(), "1"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    // What Ctrl-C sends, through the shell's own `kill`.
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    if status.success() {
        panic!("the run finished before Ctrl-C; make the slice larger: {stderr}");
    }
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted: saved"), "{stderr}");
    let resumed = zoo(&["train", "--resume", "--out", b.to_str().unwrap()]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(String::from_utf8_lossy(&resumed.stderr).contains(", batch "));
    let straight = zoo(&train_args(d, a.to_str().unwrap(), "1"));
    assert!(straight.status.success());
    assert_eq!(metrics(&a)[0]["loss"], metrics(&b)[0]["loss"]);
    assert_eq!(
        weights_of(&a.join("last.safetensors")),
        weights_of(&b.join("last.safetensors"))
    );
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let data = slice_of_fashion_mnist("nan", 512, 64);
    let d = data.to_str().unwrap();
    let out = data.join("run");
    let o = out.to_str().unwrap();
    let first = zoo(&train_args(d, o, "1"));
    assert!(first.status.success());
    let before = std::fs::read(out.join("last.safetensors")).unwrap();
    let result = zoo(&["train", "--resume", "--epochs", "2", "--lr", "1e30", "--out", o]);
    assert!(!result.status.success());
    let err = String::from_utf8(result.stderr).unwrap();
    assert!(
        err.contains("error: training: the loss is NaN at epoch 2") || err.contains("the loss is inf"),
        "{err}"
    );
    assert!(err.contains("last.safetensors"), "{err}");
    assert_eq!(std::fs::read(out.join("last.safetensors")).unwrap(), before);
}

/// Names in `out` of the temporary files that checkpoint writes use.
fn temporary_files(out: &Path) -> Vec<String> {
    std::fs::read_dir(out)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| densenet_zoo::checkpoint::is_temporary(n))
                .collect()
        })
        .unwrap_or_default()
}

/// The epoch a run's last checkpoint was saved after; it must load.
fn saved_epoch(out: &Path) -> u64 {
    let ckpt = Checkpoint::read(&out.join("last.safetensors"), &candle_core::Device::Cpu)
        .expect("the last checkpoint loads");
    ckpt.metadata.unwrap().training.unwrap()["epoch"]
        .as_u64()
        .unwrap()
}

/// Resumes the run in `out` to its end and checks it equals the uninterrupted run in `straight`.
fn resume_matches(out: &Path, straight: &Path) {
    let resumed = zoo(&["train", "--resume", "--out", out.to_str().unwrap()]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(temporary_files(out).is_empty(), "{:?}", temporary_files(out));
    let (a, b) = (metrics(straight), metrics(out));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        for key in ["epoch", "loss", "train_acc", "test_acc"] {
            assert_eq!(x[key], y[key], "{key}");
        }
    }
    assert_eq!(
        weights_of(&straight.join("last.safetensors")),
        weights_of(&out.join("last.safetensors"))
    );
}

#[test]
fn kill_9_mid_epoch_loses_only_that_epoch() {
    let data = slice_of_fashion_mnist("kill-epoch", 1920, 128);
    let d = data.to_str().unwrap();
    let (straight, killed) = (data.join("straight"), data.join("killed"));
    assert!(zoo(&train_args(d, straight.to_str().unwrap(), "2"))
        .status
        .success());

    let mut child = Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
        .args(train_args(d, killed.to_str().unwrap(), "2"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !killed.join("last.safetensors").exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Into the second epoch, then SIGKILL: no handler runs, nothing is saved.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run finished before the kill"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(saved_epoch(&killed), 1);
    resume_matches(&killed, &straight);
}

#[test]
fn kill_9_during_a_checkpoint_write_keeps_the_previous_checkpoint() {
    let data = slice_of_fashion_mnist("kill-write", 640, 128);
    let d = data.to_str().unwrap();
    let straight = data.join("straight");
    assert!(zoo(&train_args(d, straight.to_str().unwrap(), "2"))
        .status
        .success());

    // The kill must land between the temporary file's creation and its rename; that window is
    // milliseconds long, so a miss is retried on a fresh run.
    for attempt in 0..5 {
        let killed = data.join(format!("killed-{attempt}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
            .args(train_args(d, killed.to_str().unwrap(), "2"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Epoch 1's checkpoint exists; wait for epoch 2's write to begin.
        while !killed.join("last.safetensors").exists() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let caught = loop {
            if temporary_files(&killed)
                .iter()
                .any(|n| n.starts_with(".last.safetensors"))
            {
                child.kill().unwrap();
                break true;
            }
            if child.try_wait().unwrap().is_some() {
                break false;
            }
        };
        child.wait().unwrap();
        if !caught || temporary_files(&killed).is_empty() {
            continue; // the rename won the race
        }
        assert_eq!(
            saved_epoch(&killed),
            1,
            "the half-written file replaced the last one"
        );
        resume_matches(&killed, &straight);
        return;
    }
    panic!("no kill landed inside a checkpoint write in 5 runs");
}

#[test]
fn a_full_disk_fails_the_write_clearly_and_keeps_the_previous_checkpoint() {
    let data = slice_of_fashion_mnist("full-disk", 512, 64);
    let d = data.to_str().unwrap();
    let out = data.join("run");
    let o = out.to_str().unwrap();
    assert!(zoo(&train_args(d, o, "1")).status.success());
    let before: Vec<_> = ["last.safetensors", "best.safetensors"]
        .iter()
        .map(|n| std::fs::read(out.join(n)).unwrap())
        .collect();

    // A file-size limit of 512 KiB makes every checkpoint write fail as a full disk would;
    // SIGXFSZ is ignored so that the write returns the error instead of killing the process.
    let full = Command::new("sh")
        .args([
            "-c",
            &format!(
                "trap '' XFSZ; ulimit -f 1024; exec {} train --resume --epochs 2 --out {o}",
                env!("CARGO_BIN_EXE_densenet-zoo")
            ),
        ])
        .output()
        .unwrap();
    assert!(!full.status.success());
    let err = String::from_utf8_lossy(&full.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("safetensors: not written (File too large")
            && err.contains("the previous file is unchanged"),
        "{err}"
    );
    for (name, bytes) in ["last.safetensors", "best.safetensors"].iter().zip(&before) {
        assert_eq!(&std::fs::read(out.join(name)).unwrap(), bytes, "{name} changed");
    }
    assert!(temporary_files(&out).is_empty());

    // With room again, the run goes on from the intact checkpoint.
    let resumed = zoo(&["train", "--resume", "--epochs", "2", "--out", o]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(metrics(&out).len(), 2);
}

#[test]
fn memory_efficient_training_matches_the_default_and_resumes_as_it_started() {
    let data = slice_of_fashion_mnist("memory-efficient", 640, 128);
    let d = data.to_str().unwrap();
    let (a, b) = (data.join("default"), data.join("efficient"));
    assert!(zoo(&train_args(d, a.to_str().unwrap(), "2")).status.success());
    let mut args = train_args(d, b.to_str().unwrap(), "1");
    args.push("--memory-efficient");
    let first = zoo(&args);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(stderr.contains("memory-efficient"), "{stderr}");
    // The mode is saved with the run: the resume trains the second epoch the same way.
    let resumed = zoo(&["train", "--resume", "--epochs", "2", "--out", b.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("memory-efficient"), "{stderr}");
    let (ma, mb) = (metrics(&a), metrics(&b));
    for epoch in 0..2 {
        for key in ["loss", "train_acc", "test_acc"] {
            assert_eq!(ma[epoch][key], mb[epoch][key], "epoch {} {key}", epoch + 1);
        }
    }
    assert_eq!(
        weights_of(&a.join("last.safetensors")),
        weights_of(&b.join("last.safetensors"))
    );
}

/// The library refuses a recipe that cannot run, with the field, before touching any data (a
/// batch size of 0 used to panic in the epoch's batch count).
#[test]
fn the_library_refuses_a_recipe_that_cannot_run() {
    use densenet_zoo::train::{train, Start, TrainConfig};
    let spec = densenet_zoo::VariantSpec::resolve("d2l").unwrap();
    let mut config = TrainConfig::new(spec, "/nonexistent");
    config.image_size = 32;
    let out = std::env::temp_dir().join(format!("zoo-recipe-{}", std::process::id()));
    config.recipe.batch_size = 0;
    let never = std::sync::atomic::AtomicBool::new(false);
    let refusal = |config: &TrainConfig| {
        let start = Start::default();
        let err = train(config, &out, &start, &candle_core::Device::Cpu, &never, &mut ()).unwrap_err();
        err.to_string()
    };
    assert_eq!(
        refusal(&config),
        "training: batch_size must be at least 1, found 0"
    );
    config.recipe.batch_size = 8;
    config.recipe.lr = f64::NAN;
    let err = refusal(&config);
    assert_eq!(err, "training: lr must be positive, found NaN");
}

/// Resuming notes what changed in the configuration, and refuses what would change the
/// batches of an epoch stopped in the middle.
#[test]
fn a_resume_with_another_configuration_is_noted_or_refused() {
    use densenet_zoo::train::{saved_config, Observer, Start, TrainConfig, Trainer};
    use std::sync::atomic::{AtomicBool, Ordering};
    let data = slice_of_fashion_mnist("resume-config", 40, 10);
    let out = std::env::temp_dir().join(format!("zoo-resume-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut config = TrainConfig::new(densenet_zoo::VariantSpec::resolve("d2l").unwrap(), &data);
    config.image_size = 32;
    config.recipe.batch_size = 8;
    config.recipe.epochs = 1;
    /// Stops the run after its first batch, and keeps the notes.
    struct StopAfterOne<'a>(&'a AtomicBool, Vec<String>);
    impl Observer for StopAfterOne<'_> {
        fn note(&mut self, message: &str) {
            self.1.push(message.to_string());
        }
        fn batch_done(&mut self, _: f64, _: f64) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let stop = AtomicBool::new(false);
    let mut observer = StopAfterOne(&stop, Vec::new());
    let device = candle_core::Device::Cpu;
    let mut trainer = Trainer::new(&config, &out, &Start::default(), &device, &mut observer).unwrap();
    assert!(
        trainer.run_epoch(&stop, &mut observer).unwrap().is_none(),
        "stopped mid-epoch"
    );
    // The saved configuration records the run's input size in its spec.
    let saved = saved_config(&out).unwrap();
    assert_eq!(saved.spec.input_size(), 32);
    let resume = Start {
        resume: true,
        ..Default::default()
    };
    let mut other = saved.clone();
    other.recipe.batch_size = 16;
    let err = Trainer::new(&other, &out, &resume, &device, &mut observer)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("stopped in the middle of epoch 1") && err.contains("recipe.batch_size 8 → 16"),
        "{err}"
    );
    let mut longer = saved.clone();
    longer.recipe.epochs = 2;
    let stop = AtomicBool::new(false);
    let mut observer = StopAfterOne(&stop, Vec::new());
    Trainer::new(&longer, &out, &resume, &device, &mut observer).unwrap();
    assert!(
        observer
            .1
            .iter()
            .any(|n| n == "resuming with a changed configuration: recipe.epochs 1 → 2"),
        "{:?}",
        observer.1
    );
    let err = Trainer::new(&saved, &data, &resume, &device, &mut observer)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nothing to resume in"), "{err}");
}

/// `--transition-pool max` (the book's exercise 1) trains, is recorded in the checkpoint so
/// that inference builds the same net with no flag, and a resume cannot change it.
#[test]
fn max_pooling_transitions_train_are_recorded_and_kept_on_resume() {
    let data = slice_of_fashion_mnist("maxpool", 320, 64);
    let d = data.to_str().unwrap();
    let out = data.join("max");
    let o = out.to_str().unwrap();
    let mut args = train_args(d, o, "1");
    args.extend(["--transition-pool", "max"]);
    let run = zoo(&args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("transitions pool by max"), "{stderr}");
    let ckpt = densenet_zoo::checkpoint::Checkpoint::open(
        &out.join("last.safetensors").display().to_string(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let spec = &ckpt.metadata.as_ref().unwrap().spec;
    assert_eq!(
        spec.architecture.transition_pool,
        densenet_zoo::spec::TransitionPool::Max
    );
    // Evaluation builds the net from the checkpoint and reproduces the test accuracy training
    // recorded; naming the built-in variant (average pooling) keeps the checkpoint's net, and
    // says so.
    let recorded = metrics(&out)[0]["test_acc"].as_f64().unwrap();
    let eval = zoo(&[
        "eval",
        "--weights",
        &out.join("last.safetensors").display().to_string(),
        "--data",
        d,
        "--json",
    ]);
    let text = String::from_utf8_lossy(&eval.stdout);
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(
        (v["top1"].as_f64().unwrap() - recorded).abs() < 1e-9,
        "{text} against {recorded}"
    );
    let weights = out.join("last.safetensors").display().to_string();
    let named = zoo(&[
        "eval",
        "--weights",
        &weights,
        "--variant",
        "d2l",
        "--data",
        d,
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&named.stderr);
    assert!(stderr.contains("transitions pool by max"), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&named.stdout).trim()).unwrap();
    assert!((v["top1"].as_f64().unwrap() - recorded).abs() < 1e-9);
    let resumed = zoo(&[
        "train",
        "--resume",
        "--epochs",
        "2",
        "--transition-pool",
        "avg",
        "--out",
        o,
    ]);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(!resumed.status.success());
    assert!(stderr.contains("trained with max pooling"), "{stderr}");
}
