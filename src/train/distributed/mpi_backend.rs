//! [`Collective`] over MPI (Open MPI, MPICH): the processes that `mpirun -np N` or Slurm's
//! `srun` started, through the `mpi` crate.

use std::sync::Arc;
use std::thread::ThreadId;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

use super::{BatchNormGroup, Buffer, Collective};
use crate::error::{Error, Result};

/// The world communicator of an MPI job. MPI is finalised when this is dropped; create it
/// once per process.
pub struct Mpi {
    // Kept alive: dropping the universe finalises MPI.
    _universe: Universe,
    world: SimpleCommunicator,
    /// The thread that initialised MPI: the only one that may communicate.
    thread: ThreadId,
}

impl Mpi {
    /// Initialises MPI (threading "funneled": only the thread that called this communicates;
    /// candle's own threads do not).
    ///
    /// # Errors
    /// [`Error::Distributed`] when MPI was already initialised in this process, or the library
    /// does not give the threading level.
    pub fn init() -> Result<Self> {
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| Error::Distributed("MPI is already initialised in this process".into()))?;
        if threading < mpi::Threading::Funneled {
            return Err(Error::Distributed(format!(
                "the MPI library gives threading level {threading:?}; funneled is needed"
            )));
        }
        let world = universe.world();
        Ok(Self {
            _universe: universe,
            world,
            thread: std::thread::current().id(),
        })
    }
}

impl Mpi {
    /// Ends every process of the job with `code` (`MPI_Abort`): what a rank that fails alone
    /// does, since the others would wait for it in their next collective operation.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, values: Buffer) -> Result<()> {
        // MPI's in-place reduction is not in the crate's safe API: reduce from a copy.
        match values {
            Buffer::F32(v) => {
                let send = v.to_vec();
                self.world.all_reduce_into(&send[..], v, SystemOperation::sum());
            }
            Buffer::F64(v) => {
                let send = v.to_vec();
                self.world.all_reduce_into(&send[..], v, SystemOperation::sum());
            }
        }
        Ok(())
    }

    fn broadcast(&self, values: Buffer, root: usize) -> Result<()> {
        let root = self.world.process_at_rank(root as i32);
        match values {
            Buffer::F32(v) => root.broadcast_into(v),
            Buffer::F64(v) => root.broadcast_into(v),
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }

    fn batch_norm_group(&self) -> Option<Arc<dyn BatchNormGroup>> {
        Some(Arc::new(WorldGroup { thread: self.thread }))
    }
}

/// Every rank of `MPI_COMM_WORLD`, for synchronised batch norm. It holds no handle, so it can
/// sit in the model's ops; MPI runs "funneled", so it communicates only from the thread that
/// initialised MPI and refuses any other.
#[derive(Debug)]
struct WorldGroup {
    thread: ThreadId,
}

impl BatchNormGroup for WorldGroup {
    fn all_reduce_sum(&self, values: &mut [f64]) -> candle_core::Result<()> {
        if std::thread::current().id() != self.thread {
            candle_core::bail!(
                "synchronised batch norm: MPI communicates from the thread that initialised it \
                 only (threading level funneled); the model ran on another"
            );
        }
        let send = values.to_vec();
        SimpleCommunicator::world().all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }
}
