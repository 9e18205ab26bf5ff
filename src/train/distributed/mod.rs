//! Data-parallel training across processes: the [`Collective`] operations a trainer needs
//! (sum across ranks, broadcast from one, barrier), one process ([`SingleProcess`]) or many
//! under `mpirun`/`srun` (`Mpi`, with the feature `mpi`), and what DDP does with them: every rank
//! starts from rank 0's weights ([`broadcast_tensors`]), takes its shard of each global batch
//! ([`shard`]), and averages the gradients in one flat buffer per step ([`average_gradients`]).
//!
//! Semantics follow PyTorch's `DistributedDataParallel`: gradients summed across ranks and
//! divided by the world size; batch norm uses each rank's own batch statistics, or with
//! [`Collective::batch_norm_group`] those of the whole batch (PyTorch's `SyncBatchNorm`).

use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::error::{Error, Result};
pub use crate::ops::BatchNormGroup;

#[cfg(feature = "mpi")]
mod mpi_backend;
mod replicas;
#[cfg(feature = "mpi")]
pub use mpi_backend::Mpi;
pub(crate) use replicas::{check_same_weights, sorted_variables, sum_over_ranks};

/// Values to reduce or broadcast in place: the dtypes a model's tensors have.
#[derive(Debug)]
pub enum Buffer<'a> {
    /// Single precision (training's).
    F32(&'a mut [f32]),
    /// Double precision (the exactness checks').
    F64(&'a mut [f64]),
}

/// The operations across the processes of one training run, each called by every rank in the
/// same order (as MPI's collectives).
pub trait Collective {
    /// This process's rank, 0 ≤ rank < [`Collective::world_size`].
    fn rank(&self) -> usize;
    /// Number of processes.
    fn world_size(&self) -> usize;
    /// Replaces `values` on every rank by their element-wise sum over the ranks.
    fn all_reduce_sum(&self, values: Buffer) -> Result<()>;
    /// Replaces `values` on every rank by rank `root`'s.
    fn broadcast(&self, values: Buffer, root: usize) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// The ranks as a group for synchronised batch norm
    /// ([`DenseNet::with_sync_batch_norm`](crate::DenseNet::with_sync_batch_norm)); `None`
    /// where each rank's batch is the whole batch (one process).
    fn batch_norm_group(&self) -> Option<Arc<dyn BatchNormGroup>> {
        None
    }
}

/// One process: the sums are the values themselves. What `train` runs without `mpirun`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, _: Buffer) -> Result<()> {
        Ok(())
    }

    fn broadcast(&self, _: Buffer, _: usize) -> Result<()> {
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// The number of processes a launcher started this one among, from the environment that
/// `mpirun` (Open MPI), MPICH/Hydra (PMI) and Slurm's `srun` set; `None` outside a launcher.
pub fn launched_world_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// This process's index among the processes a launcher started on this machine
/// (`OMPI_COMM_WORLD_LOCAL_RANK`, MPICH's `MPI_LOCALRANKID`, Slurm's `SLURM_LOCALID`): the GPU
/// it trains on, one process per GPU. `None` outside a launcher.
pub fn local_rank() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// How many processes a launcher started on this machine (`OMPI_COMM_WORLD_LOCAL_SIZE`,
/// MPICH's `MPI_LOCALNRANKS`, Slurm's `SLURM_NTASKS_PER_NODE`): they share its cores. `None`
/// outside a launcher.
pub fn local_world_size() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "MPI_LOCALNRANKS",
        "SLURM_NTASKS_PER_NODE",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

pub use crate::data::shard;

/// Flat buffers of `tensors` (in order), one per dtype, and their element counts.
fn flatten(tensors: &[Tensor]) -> Result<(Vec<f32>, Vec<f64>)> {
    let (mut f32s, mut f64s) = (Vec::new(), Vec::new());
    for t in tensors {
        match t.dtype() {
            DType::F32 => f32s.extend(t.flatten_all()?.to_vec1::<f32>()?),
            DType::F64 => f64s.extend(t.flatten_all()?.to_vec1::<f64>()?),
            other => {
                return Err(Error::Distributed(format!(
                    "tensors of {other:?} cannot be reduced: f32 and f64 only"
                )))
            }
        }
    }
    Ok((f32s, f64s))
}

/// `tensors`' shapes, dtypes and devices filled back from the flat buffers of [`flatten`].
fn unflatten(tensors: &[Tensor], f32s: &[f32], f64s: &[f64]) -> Result<Vec<Tensor>> {
    let (mut at32, mut at64) = (0, 0);
    tensors
        .iter()
        .map(|t| {
            let n = t.elem_count();
            let out = match t.dtype() {
                DType::F32 => {
                    at32 += n;
                    Tensor::from_slice(&f32s[at32 - n..at32], t.shape(), t.device())?
                }
                _ => {
                    at64 += n;
                    Tensor::from_slice(&f64s[at64 - n..at64], t.shape(), t.device())?
                }
            };
            Ok(out)
        })
        .collect()
}

/// Sets every variable of `vars` (parameters and buffers, in the same order on every rank:
/// sort them by name) to rank `root`'s values, in one broadcast per dtype. DDP does this once
/// at the start, so that every rank trains the same model.
pub fn broadcast_tensors(collective: &dyn Collective, vars: &[Var], root: usize) -> Result<()> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_detached_tensor()).collect();
    let (mut f32s, mut f64s) = flatten(&tensors)?;
    collective.broadcast(Buffer::F32(&mut f32s), root)?;
    collective.broadcast(Buffer::F64(&mut f64s), root)?;
    for (var, value) in vars.iter().zip(unflatten(&tensors, &f32s, &f64s)?) {
        var.set(&value)?;
    }
    Ok(())
}

/// Replaces each parameter's gradient in `grads` by its mean over the ranks, in one
/// all-reduce per dtype over a flat buffer: DDP's gradient averaging. `params` must be in the
/// same order on every rank (sorted by name); a parameter without a gradient on this rank
/// takes part as zeros (and gets the mean).
pub fn average_gradients(collective: &dyn Collective, params: &[Var], grads: &mut GradStore) -> Result<()> {
    let world = collective.world_size();
    if world == 1 {
        return Ok(());
    }
    let tensors = params
        .iter()
        .map(|p| match grads.get(p.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => Ok(p.as_detached_tensor().zeros_like()?),
        })
        .collect::<Result<Vec<_>>>()?;
    let (mut f32s, mut f64s) = flatten(&tensors)?;
    collective.all_reduce_sum(Buffer::F32(&mut f32s))?;
    collective.all_reduce_sum(Buffer::F64(&mut f64s))?;
    let scale = 1.0 / world as f64;
    f32s.iter_mut().for_each(|v| *v *= scale as f32);
    f64s.iter_mut().for_each(|v| *v *= scale);
    for (p, mean) in params.iter().zip(unflatten(&tensors, &f32s, &f64s)?) {
        grads.insert(p.as_tensor(), mean);
    }
    Ok(())
}

/// True on every rank when `flag` is true on any: how a NaN or a Ctrl-C on one rank stops
/// every rank at the same step.
pub fn any_rank(collective: &dyn Collective, flag: bool) -> Result<bool> {
    let mut value = [f64::from(u8::from(flag))];
    collective.all_reduce_sum(Buffer::F64(&mut value))?;
    Ok(value[0] > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Range;

    #[test]
    fn shards_partition_a_batch_in_rank_order() {
        for (len, world) in [(10, 3), (2, 2), (7, 4), (3, 5)] {
            let parts: Vec<Range<usize>> = (0..world).map(|r| shard(len, r, world)).collect();
            assert_eq!(parts[0].start, 0);
            assert_eq!(parts[world - 1].end, len);
            for w in parts.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            let sizes: Vec<usize> = parts.iter().map(|p| p.len()).collect();
            assert!(
                sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                "{sizes:?}"
            );
        }
    }

    #[test]
    fn flat_buffers_round_trip_mixed_dtypes() {
        let dev = candle_core::Device::Cpu;
        let a = Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap();
        let b = Tensor::new(&[5f64, 6.], &dev).unwrap();
        let c = Tensor::new(&[7f32], &dev).unwrap();
        let ts = [a, b, c];
        let (f32s, f64s) = flatten(&ts).unwrap();
        assert_eq!(
            (f32s.as_slice(), f64s.as_slice()),
            (&[1f32, 2., 3., 4., 7.][..], &[5f64, 6.][..])
        );
        let back = unflatten(&ts, &f32s, &f64s).unwrap();
        for (x, y) in ts.iter().zip(&back) {
            assert_eq!((x.dims(), x.dtype()), (y.dims(), y.dtype()));
            assert_eq!(
                x.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap(),
                y.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()
            );
        }
    }
}
