//! `train` as one rank of a data-parallel run under `mpirun`/`srun` (feature `mpi`).

#[cfg(feature = "mpi")]
use std::rc::Rc;

use super::Args;
#[cfg(feature = "mpi")]
use super::{parse_device, train_images};
#[cfg(feature = "mpi")]
use densenet_zoo::train::distributed::Collective;

/// One rank of a data-parallel run under `mpirun`/`srun`: rank 0 shows the run and writes
/// `--out`; an error on any rank ends every rank (`MPI_Abort`), since the others would wait for
/// it.
#[cfg(feature = "mpi")]
pub fn train_on_ranks(args: Args, processes: usize) -> anyhow::Result<()> {
    share_cores_between_local_ranks();
    let mpi = Rc::new(densenet_zoo::train::distributed::Mpi::init()?);
    let (rank, world) = (mpi.rank(), mpi.world_size());
    anyhow::ensure!(
        world == processes,
        "the launcher started {processes} processes, but MPI counts {world}: is the binary linked \
         with the MPI library that mpirun belongs to?"
    );
    if rank > 0 {
        crate::cli::quiet();
    }
    let result = rank_device(&args.device, rank).and_then(|device| train_images(args, device, mpi.clone()));
    if let Err(e) = result {
        // One write: the abort of another rank may end this one mid-line.
        let line = format!("error (rank {rank} of {world}): {}\n", crate::message_of(&e));
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
        mpi.abort(1);
    }
    Ok(())
}

#[cfg(not(feature = "mpi"))]
pub fn train_on_ranks(_args: Args, processes: usize) -> anyhow::Result<()> {
    anyhow::bail!(
        "started as one of {processes} processes (mpirun or srun), but this build has no MPI: \
         build with `--features mpi` to train across processes (each would otherwise train alone \
         into the same --out), or run one process"
    )
}

/// Gives this rank's kernels its share of the machine's cores, unless `RAYON_NUM_THREADS` says
/// otherwise: N ranks on one machine, each with a thread per core, contend for them (the book's
/// net at 32×32 on 2 cores: 2 ranks of 1 thread trained 1.2–1.6× as fast as 2 ranks of 2).
/// Through the variable, which our kernels' thread pool and candle's both read when they start:
/// called before any other thread exists.
#[cfg(feature = "mpi")]
fn share_cores_between_local_ranks() {
    let Some(local) = densenet_zoo::train::distributed::local_world_size().filter(|&n| n > 1) else {
        return;
    };
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", (cores / local).max(1).to_string());
    }
}

/// The device of rank `rank`: with `auto` or `cuda` on a GPU machine, the GPU of its local
/// rank (one process per GPU); else as `--device` says.
#[cfg(feature = "mpi")]
fn rank_device(name: &str, rank: usize) -> anyhow::Result<candle_core::Device> {
    if matches!(name, "auto" | "cuda") && candle_core::utils::cuda_is_available() {
        let gpu = densenet_zoo::train::distributed::local_rank().unwrap_or(rank);
        return Ok(parse_device(&format!("cuda:{gpu}"))?);
    }
    Ok(parse_device(name)?)
}
