//! Data-parallel training on MPI (feature `mpi`): `examples/data_parallel_check.rs` run by
//! `mpirun -np 2`. Needs Debian's openmpi-bin and libopenmpi-dev (`.ci/run` installs them).
#![cfg(feature = "mpi")]

use std::path::PathBuf;
use std::process::{Command, Output};

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
