//! One process's part of every batch in data-parallel training: which rows it takes.

use std::ops::Range;

/// Rank `rank` of `world_size` processes: a loader makes rows
/// [`shard`]`(len, rank, world_size)` of each batch of `len` samples, so
/// that the ranks' batches together are the one process's batch, each sample drawn as there
/// (its random draws come from its position in the epoch). A rank's batch may be empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This process's rank, below `world_size`.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
}

impl Default for Shard {
    /// One process: whole batches.
    fn default() -> Self {
        Self {
            rank: 0,
            world_size: 1,
        }
    }
}

impl Shard {
    /// The rows of a batch of `len` that this process takes ([`shard`]).
    pub fn rows(&self, len: usize) -> Range<usize> {
        shard(len, self.rank, self.world_size)
    }

    /// The fewest and the most images a process takes of a batch of `batch_size`.
    pub fn part_sizes(batch_size: usize, world_size: usize) -> (usize, usize) {
        (batch_size / world_size, batch_size.div_ceil(world_size))
    }
}

/// The rows of a global batch of `len` examples that `rank` of `world_size` takes: contiguous
/// parts whose sizes differ by at most one, in rank order, so that the ranks' shards together
/// are the batch, without overlap.
pub fn shard(len: usize, rank: usize, world_size: usize) -> Range<usize> {
    rank * len / world_size..(rank + 1) * len / world_size
}
