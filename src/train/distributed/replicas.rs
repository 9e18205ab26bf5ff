//! Keeping the ranks of a data-parallel run one model: the variables in one order on every
//! rank, sums over the ranks, and a check that their weights have not drifted apart.

use candle_core::Var;
use candle_nn::VarMap;

use super::{Buffer, Collective};
use crate::checkpoint::is_buffer;
use crate::error::{Error, Result};

/// `values` summed over the ranks, in one all-reduce.
pub(crate) fn sum_over_ranks<const N: usize>(
    collective: &dyn Collective,
    mut values: [f64; N],
) -> Result<[f64; N]> {
    collective.all_reduce_sum(Buffer::F64(&mut values))?;
    Ok(values)
}

/// The variables of `varmap` sorted by name, as every rank orders them: the trainable ones
/// (not `frozen`) and the batch-norm buffers.
pub(crate) fn sorted_variables(varmap: &VarMap, frozen: &dyn Fn(&str) -> bool) -> (Vec<Var>, Vec<Var>) {
    let data = varmap.data().lock().expect("varmap lock");
    let mut named: Vec<(&String, &Var)> = data
        .iter()
        .filter(|(name, _)| is_buffer(name) || !frozen(name))
        .collect();
    named.sort_by_key(|(name, _)| *name);
    let (buffers, parameters): (Vec<_>, Vec<_>) = named.into_iter().partition(|(name, _)| is_buffer(name));
    let vars = |list: Vec<(&String, &Var)>| list.into_iter().map(|(_, v)| v.clone()).collect();
    (vars(parameters), vars(buffers))
}

/// Refuses to go on when this rank's weights differ, by a hash of their bits, from rank 0's
/// after `epoch`: the ranks would no longer train one model (different builds, or data).
pub(crate) fn check_same_weights(
    collective: &dyn Collective,
    parameters: &[Var],
    epoch: usize,
) -> Result<()> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for p in parameters {
        for v in p
            .as_detached_tensor()
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?
        {
            hash = (hash ^ u64::from(v.to_bits())).wrapping_mul(0x0100_0000_01b3);
        }
    }
    // 32 bits, exact in an f64.
    let own = f64::from((hash ^ (hash >> 32)) as u32);
    let mut root = [own];
    collective.broadcast(Buffer::F64(&mut root), 0)?;
    if root[0] != own {
        return Err(Error::Distributed(format!(
            "after epoch {epoch}, rank {}'s weights differ from rank 0's: the ranks no longer train one \
             model (are they running the same build on the same data?)",
            collective.rank()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use candle_core::Device;

    use super::*;
    use crate::error::Result;

    /// Rank `rank` of two: its broadcasts record what it held and bring `root`'s value (rank
    /// 0's own when `None`).
    struct FakeRank {
        rank: usize,
        root: Option<f64>,
        held: Cell<Option<f64>>,
    }

    impl Collective for FakeRank {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&self, _: Buffer) -> Result<()> {
            Ok(())
        }
        fn broadcast(&self, values: Buffer, _: usize) -> Result<()> {
            if let Buffer::F64(v) = values {
                self.held.set(Some(v[0]));
                if let Some(root) = self.root {
                    v.fill(root);
                }
            }
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
    }

    fn rank(rank: usize, root: Option<f64>) -> FakeRank {
        FakeRank {
            rank,
            root,
            held: Cell::new(None),
        }
    }

    #[test]
    fn weights_that_differ_from_rank_0s_stop_the_run() {
        let dev = Device::Cpu;
        let weights = Var::new(&[1f32, 2., 3.], &dev).unwrap();
        let rank_0 = rank(0, None);
        check_same_weights(&rank_0, std::slice::from_ref(&weights), 1).unwrap();
        let sent = rank_0.held.get();
        check_same_weights(&rank(1, sent), &[weights], 1).unwrap();
        // One bit of one weight apart.
        let changed = Var::new(&[1f32, 2., f32::from_bits(3f32.to_bits() + 1)], &dev).unwrap();
        let err = check_same_weights(&rank(1, sent), &[changed], 3).unwrap_err();
        assert!(
            err.to_string()
                .contains("after epoch 3, rank 1's weights differ from rank 0's"),
            "{err}"
        );
    }
}
