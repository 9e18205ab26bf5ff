//! Data-parallel training on MPI (feature `mpi`): `examples/data_parallel_check.rs` and
//! `densenet-zoo train` run by `mpirun -np 2`. Needs Debian's openmpi-bin and libopenmpi-dev
//! (`.ci/run` installs them) and dataset-fashion-mnist.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use densenet_zoo::checkpoint::Checkpoint;

mod common;
use common::{metrics, slice_of_fashion_mnist, train_args, weights_of};

/// The example binary cargo built beside this test (target/<profile>/examples/).
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    profile_dir.join("examples").join("data_parallel_check")
}

fn mpirun(args: &[&str]) -> Output {
    assert!(
        example().is_file(),
        "{} is missing: cargo build --features mpi --example data_parallel_check (cargo test \
         --test data_parallel does not build examples)",
        example().display()
    );
    Command::new("mpirun")
        .args(["-np", "2", "--oversubscribe"])
        .arg(example())
        .args(args)
        // Containers run CI as root; Open MPI refuses root without these.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("mpirun (apt-get install openmpi-bin)")
}

#[test]
fn two_ranks_train_as_one_process_with_ghost_batch_norm() {
    let out = mpirun(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for rank in 0..2 {
        assert!(text.contains(&format!("rank {rank} of 2:")), "{text}");
    }
    assert_eq!(text.matches("bit-identical to rank 0: true").count(), 2, "{text}");
}

#[test]
fn the_check_fails_without_the_gradient_average() {
    let out = mpirun(&["--no-average"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("bit-identical to rank 0: false"), "{text}");
}

#[test]
fn two_ranks_with_sync_bn_train_as_one_process_on_the_whole_batch() {
    // Also in the memory-efficient mode, whose backward pass recomputes each batch norm.
    for extra in [None, Some("--memory-efficient")] {
        let args: Vec<&str> = ["--sync-bn"].into_iter().chain(extra).collect();
        let out = mpirun(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text.matches("(synchronised batch norm)").count(), 2, "{text}");
        assert_eq!(text.matches("bit-identical to rank 0: true").count(), 2, "{text}");
    }
}

/// `mpirun -np 2` with the environment Open MPI needs to run as root in a container.
fn mpirun_command(ranks: &str) -> Command {
    let mut command = Command::new("mpirun");
    command
        .args(["-np", ranks, "--oversubscribe"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    command
}

/// `densenet-zoo ARGS` on 2 ranks.
fn zoo_on_two_ranks(args: &[&str]) -> Output {
    mpirun_command("2")
        .arg(env!("CARGO_BIN_EXE_densenet-zoo"))
        .args(args)
        .output()
        .expect("mpirun (apt-get install openmpi-bin)")
}

fn succeeded(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

#[test]
fn two_ranks_train_one_model_and_rank_0_alone_writes_and_shows_it() {
    // 650 test images: the ranks' evaluation shards (5 batches of 64 split in two, and 10
    // left) must add up to the whole split.
    let data = slice_of_fashion_mnist("dp-two-ranks", 640, 650);
    let out = data.join("run");
    let run = zoo_on_two_ranks(&train_args(data.to_str().unwrap(), out.to_str().unwrap(), "2"));
    let err = succeeded(&run);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(err.matches("data-parallel over 2 processes").count(), 1, "{err}");
    assert_eq!(
        stdout.matches("epoch ").count(),
        2,
        "one line per epoch, from rank 0: {stdout}"
    );
    let m = metrics(&out);
    assert_eq!(m.len(), 2, "rank 0 alone appends the metrics");
    for epoch in &m {
        let correct = epoch["test_acc"].as_f64().unwrap() * 650.0;
        assert!(
            (correct - correct.round()).abs() < 1e-6,
            "{epoch}: not a count of 650"
        );
        let train = epoch["train_acc"].as_f64().unwrap() * 640.0;
        assert!(
            (train - train.round()).abs() < 1e-6,
            "{epoch}: not a count of 640"
        );
    }
    assert!(
        m[1]["loss"].as_f64().unwrap() < m[0]["loss"].as_f64().unwrap(),
        "{m:?}"
    );
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "best.safetensors",
            "curves.svg",
            "last.safetensors",
            "metrics.jsonl"
        ]
    );
}

/// For each tensor of checkpoint `a`, max |a − b| over max |b|; the largest over the tensors.
/// The biases of the convolutions, each followed by a batch norm that cancels them, are left
/// out: their gradient is zero but for rounding, and they stay at rounding noise.
fn relative_deviation(a: &Path, b: &Path) -> f64 {
    let (a, b) = (weights_of(a), weights_of(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .filter(|((name, _), _)| !(name.contains("conv") && name.ends_with(".bias")))
        .map(|((name, x), (other, y))| {
            assert_eq!(name, other);
            let scale = y.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
            x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale
        })
        .fold(0f32, f32::max) as f64
}

#[test]
fn train_with_sync_bn_on_two_ranks_follows_the_one_process_run() {
    // Two steps: a short run, since training from scratch at this rate is chaotic (one process
    // with one thread and with two ends ten steps with weights 2 % apart).
    let data = slice_of_fashion_mnist("dp-sync-bn", 128, 64);
    let d = data.to_str().unwrap();
    let (one, synced, per_rank) = (data.join("one"), data.join("synced"), data.join("per-rank"));
    let single = Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
        .args(train_args(d, one.to_str().unwrap(), "1"))
        .output()
        .unwrap();
    succeeded(&single);
    let mut args = train_args(d, synced.to_str().unwrap(), "1");
    args.push("--sync-bn");
    let err = succeeded(&zoo_on_two_ranks(&args));
    assert!(
        err.contains("batch norm over the whole batch (--sync-bn)"),
        "{err}"
    );
    succeeded(&zoo_on_two_ranks(&train_args(d, per_rank.to_str().unwrap(), "1")));
    // The synchronised run differs from one process by rounding only (the ranks' sums are
    // added in another order); per-rank batch norm is another computation.
    let last = |dir: &Path| dir.join("last.safetensors");
    let (synced, per_rank) = (
        relative_deviation(&last(&synced), &last(&one)),
        relative_deviation(&last(&per_rank), &last(&one)),
    );
    eprintln!("deviation from one process: synchronised {synced:e}, per rank {per_rank:e}");
    // Measured: 1.1e-6 and 1.0.
    assert!(synced < 1e-4, "{synced:e}");
    assert!(per_rank > 1e-2, "{per_rank:e}");
}

/// `args` with `--batch-size` set to `batch`.
fn with_batch<'a>(mut args: Vec<&'a str>, batch: &'a str) -> Vec<&'a str> {
    let at = args.iter().position(|a| *a == "--batch-size").unwrap();
    args[at + 1] = batch;
    args
}

#[test]
fn with_sync_bn_each_rank_needs_an_image_and_the_whole_batch_two_values() {
    // The book's net at 32×32 ends on 1×1 maps: per-rank batch norm needs two images per rank,
    // synchronised batch norm one per rank and two in the batch. 129 images in batches of 2:
    // the last holds one.
    let data = slice_of_fashion_mnist("dp-sync-small", 129, 64);
    let d = data.to_str().unwrap();
    let out = data.join("run");
    let per_rank = data.join("per-rank");
    let mut args = with_batch(train_args(d, out.to_str().unwrap(), "1"), "2");
    args.push("--sync-bn");
    let err = succeeded(&zoo_on_two_ranks(&args));
    assert!(
        err.contains(
            "batch 65 holds 1 image(s), too few for batch norm on the last block's 1×1 maps: left out"
        ),
        "{err}"
    );
    assert_eq!(metrics(&out).len(), 1);
    // On three ranks, 131 images in batches of 3: the last two are enough for batch norm, but
    // leave a rank none.
    let three = slice_of_fashion_mnist("dp-sync-three", 131, 64);
    let run = three.join("run");
    let mut on_three = with_batch(
        train_args(three.to_str().unwrap(), run.to_str().unwrap(), "1"),
        "3",
    );
    on_three.push("--sync-bn");
    let out3 = mpirun_command("3")
        .arg(env!("CARGO_BIN_EXE_densenet-zoo"))
        .args(&on_three)
        .output()
        .unwrap();
    let err = succeeded(&out3);
    assert!(
        err.contains(
            "batch 44 holds 2 image(s), none for some of the 3 processes, which each need one: left out"
        ),
        "{err}"
    );
    let refused = zoo_on_two_ranks(&with_batch(train_args(d, per_rank.to_str().unwrap(), "1"), "2"));
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("use a batch of at least 4"), "{err}");
    let refused = zoo_on_two_ranks(&with_batch(args, "1"));
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("leaves some with no image per batch: use a batch of at least 2"),
        "{err}"
    );
}

/// Starts a 2-epoch, 2-rank run into `out`, waits until its first epoch is saved and
/// 1.5 s more (into the second epoch), and returns it still running.
fn two_rank_run_into_its_second_epoch(data: &str, out: &Path) -> std::process::Child {
    let mut child = mpirun_command("2")
        .arg(env!("CARGO_BIN_EXE_densenet-zoo"))
        .args(train_args(data, out.to_str().unwrap(), "2"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !out.join("last.safetensors").exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no checkpoint after 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run finished before it could be stopped"
    );
    child
}

/// Resumes the run in `out` on two ranks and checks it ends as `straight` did.
fn resumes_to(out: &Path, straight: &Path) {
    let resumed = zoo_on_two_ranks(&["train", "--resume", "--out", out.to_str().unwrap()]);
    assert!(succeeded(&resumed).contains("resuming from"));
    let (a, b) = (metrics(straight), metrics(out));
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        for key in ["loss", "train_acc", "test_acc"] {
            assert_eq!(x[key], y[key], "{key}");
        }
    }
    assert_eq!(
        weights_of(&straight.join("last.safetensors")),
        weights_of(&out.join("last.safetensors"))
    );
}

#[test]
fn a_two_rank_run_killed_or_interrupted_resumes_to_the_same_end() {
    let data = slice_of_fashion_mnist("dp-kill", 1920, 128);
    let d = data.to_str().unwrap();
    let straight = data.join("straight");
    succeeded(&zoo_on_two_ranks(&train_args(d, straight.to_str().unwrap(), "2")));

    // SIGKILL to every process: nothing is saved. mpirun puts each rank in a process group of
    // its own: every process whose command line names this run's folder is killed at once.
    let killed = data.join("killed");
    let mut child = two_rank_run_into_its_second_epoch(d, &killed);
    let _ = Command::new("pkill")
        .args(["-KILL", "-f", killed.to_str().unwrap()])
        .status();
    child.wait().unwrap();
    assert_eq!(metrics(&killed).len(), 1);
    resumes_to(&killed, &straight);

    // SIGTERM (what Slurm sends at a time limit) to one rank alone: both stop after the same
    // batch, through the all-reduced stop flag, and rank 0 saves the state mid-epoch.
    let interrupted = data.join("interrupted");
    let mut child = two_rank_run_into_its_second_epoch(d, &interrupted);
    let ranks = Command::new("pgrep")
        .args(["-P", &child.id().to_string()])
        .output()
        .unwrap();
    let ranks = String::from_utf8(ranks.stdout).unwrap();
    let one_rank = ranks.lines().last().expect("mpirun's ranks");
    let _ = Command::new("kill").args(["-TERM", one_rank]).status();
    child.wait().unwrap();
    let saved = Checkpoint::read(&interrupted.join("last.safetensors"), &candle_core::Device::Cpu).unwrap();
    let progress = &saved.metadata.unwrap().training.unwrap()["progress"];
    assert_eq!(progress["epoch"], 1, "{progress}");
    assert!(
        progress["batch"].as_u64().unwrap() > 0,
        "not saved mid-epoch: {progress}"
    );
    assert_eq!(metrics(&interrupted).len(), 1);
    resumes_to(&interrupted, &straight);
}

#[test]
fn a_one_process_run_resumes_on_two_ranks_with_a_note() {
    let data = slice_of_fashion_mnist("dp-regrow", 640, 128);
    let d = data.to_str().unwrap();
    let out = data.join("run");
    let first = Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
        .args(train_args(d, out.to_str().unwrap(), "1"))
        .output()
        .unwrap();
    succeeded(&first);
    let resumed = zoo_on_two_ranks(&[
        "train",
        "--resume",
        "--epochs",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = succeeded(&resumed);
    assert!(
        err.contains("trained with 1 process(es) until now and goes on with 2"),
        "{err}"
    );
    assert_eq!(metrics(&out).len(), 2);
}

#[test]
fn an_error_on_the_ranks_ends_them_all() {
    let dir = std::env::temp_dir().join(format!("zoo-dp-error-{}", std::process::id()));
    let missing = dir.join("no-such-data");
    let started = Instant::now();
    let run = zoo_on_two_ranks(&train_args(
        missing.to_str().unwrap(),
        dir.join("run").to_str().unwrap(),
        "1",
    ));
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    // The first rank to fail ends the other, whose message may then not be printed.
    assert!(err.contains(" of 2): data "), "{err}");
    assert!(err.contains("no-such-data"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(120), "the ranks hung");
}

#[test]
fn a_batch_too_small_to_share_between_the_ranks_is_refused() {
    let data = slice_of_fashion_mnist("dp-small-batch", 64, 16);
    let out = data.join("run");
    let mut args = train_args(data.to_str().unwrap(), out.to_str().unwrap(), "1");
    let at = args.iter().position(|a| *a == "--batch-size").unwrap();
    args[at + 1] = "1";
    let run = zoo_on_two_ranks(&args);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("--batch-size 1 over 2 processes leaves some with 0 image(s) per batch"),
        "{err}"
    );
    assert!(!out.join("last.safetensors").exists());
}
