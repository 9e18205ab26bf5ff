//! The data-parallel check of `tests/data_parallel.rs`, run by `mpirun -np 2`: DDP with
//! per-rank batch norm against one process with "ghost" batch norm, and with synchronised batch
//! norm against one process on the whole batch, in float64.
//!
//! Every rank builds a small book-style DenseNet from weights of its own seed, takes rank 0's
//! ([`broadcast_tensors`]), and trains a few SGD steps with momentum on its shard of each
//! global batch, gradients averaged across ranks ([`average_gradients`]). Each rank also trains
//! the reference alone: the same global batches, each half normalised and scored by itself, the
//! two losses averaged (what per-rank batch norm computes). Prints one line per rank and exits
//! with 1 when the weights differ from the reference by more than 1e-10 (relative) or from
//! rank 0's by a single bit.
//!
//! ```sh
//! cargo build --features mpi --example data_parallel_check
//! mpirun -np 2 --oversubscribe target/debug/examples/data_parallel_check
//! ```
//!
//! With `--sync-bn` every batch norm takes the statistics of the whole global batch across the
//! ranks ([`DenseNet::with_sync_batch_norm`], PyTorch's `SyncBatchNorm`), and the reference is
//! one process training on the whole batches with plain batch norm; the running statistics are
//! compared too. `--memory-efficient` trains both in the memory-efficient mode (each batch norm
//! recomputed in the backward pass). With `--no-average` the ranks skip the gradient average,
//! and the check fails. With
//! `--time-all-reduce MB` it times instead the all-reduce of MB megabytes of f32 (DenseNet-121's
//! gradients are 31.9 MB): the median of 20, after 3 untimed, printed by rank 0.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use densenet_zoo::train::distributed::{
    average_gradients, broadcast_tensors, shard, Buffer, Collective, Mpi,
};
use densenet_zoo::train::{cross_entropy, seeded_varmap, Optimizer, OptimizerKind};
use densenet_zoo::{DenseNet, VariantSpec};

const SPEC: &str = r#"{"name": "tiny", "in_channels": 1, "num_classes": 4, "stem": "cifar",
  "stem_features": 6, "growth_rate": 3, "block_config": [2, 2], "layer": {"kind": "plain"},
  "compression": 0.5, "conv_bias": true, "preprocess": {"resize": 8, "crop": 8, "mean": [0.0],
  "std": [1.0]}}"#;
const GLOBAL_BATCH: usize = 6;
const STEPS: usize = 3;

/// The model's variables in name order, as f64, from a generated f32 map.
fn f64_varmap(spec: &VariantSpec, seed: u64) -> densenet_zoo::Result<(VarMap, Vec<(String, Var)>)> {
    let generated = seeded_varmap(spec, seed, &Device::Cpu)?;
    let varmap = VarMap::new();
    let mut vars = Vec::new();
    {
        let source = generated.data().lock().expect("varmap lock");
        let mut data = varmap.data().lock().expect("varmap lock");
        let mut names: Vec<&String> = source.keys().collect();
        names.sort();
        for name in names {
            let var = Var::from_tensor(&source[name].as_tensor().to_dtype(DType::F64)?)?;
            data.insert(name.clone(), var.clone());
            vars.push((name.clone(), var));
        }
    }
    Ok((varmap, vars))
}

/// Global batch `step`: the same images and labels on every rank.
fn batch(step: usize) -> densenet_zoo::Result<(Tensor, Tensor)> {
    let n = GLOBAL_BATCH * 64;
    let values: Vec<f64> = (0..n)
        .map(|i| ((i * 7919 + step * 104_729) % 1000) as f64 / 500.0 - 1.0)
        .collect();
    let labels: Vec<u32> = (0..GLOBAL_BATCH).map(|i| ((i + step) % 4) as u32).collect();
    Ok((
        Tensor::from_vec(values, (GLOBAL_BATCH, 1, 8, 8), &Device::Cpu)?,
        Tensor::from_vec(labels, GLOBAL_BATCH, &Device::Cpu)?,
    ))
}

fn parameters(vars: &[(String, Var)]) -> Vec<Var> {
    vars.iter()
        .filter(|(n, _)| !densenet_zoo::checkpoint::is_buffer(n))
        .map(|(_, v)| v.clone())
        .collect()
}

fn flat(vars: &[Var]) -> densenet_zoo::Result<Vec<f64>> {
    let mut out = Vec::new();
    for v in vars {
        out.extend(v.as_tensor().flatten_all()?.to_vec1::<f64>()?);
    }
    Ok(out)
}

/// Seconds of `Collective::all_reduce_sum` over `mb` megabytes of f32: (median, min, max) of 20.
fn time_all_reduce(mpi: &Mpi, mb: f64) -> densenet_zoo::Result<(f64, f64, f64)> {
    let mut values = vec![1f32; (mb * 1e6 / 4.0) as usize];
    let mut times = Vec::new();
    for i in 0..23 {
        mpi.barrier()?;
        let start = std::time::Instant::now();
        mpi.all_reduce_sum(Buffer::F32(&mut values))?;
        if i >= 3 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0], times[times.len() - 1]))
}

fn main() -> densenet_zoo::Result<()> {
    let mpi = Mpi::init()?;
    let (rank, world) = (mpi.rank(), mpi.world_size());
    let args: Vec<String> = std::env::args().collect();
    if let Some(mb) = args.iter().position(|a| a == "--time-all-reduce") {
        let mb: f64 = args.get(mb + 1).and_then(|v| v.parse().ok()).unwrap_or(31.9);
        let (median, min, max) = time_all_reduce(&mpi, mb)?;
        if rank == 0 {
            println!(
                "all-reduce of {mb} MB of f32 over {world} ranks: median {:.1} ms (min {:.1}, max {:.1})",
                median * 1e3,
                min * 1e3,
                max * 1e3
            );
        }
        return Ok(());
    }
    // `--no-average`: each rank steps on its own gradients, which the check must catch.
    let average = std::env::args().all(|a| a != "--no-average");
    let sync_bn = std::env::args().any(|a| a == "--sync-bn");
    let memory_efficient = std::env::args().any(|a| a == "--memory-efficient");
    let spec = VariantSpec::from_json(SPEC, "data_parallel_check")?;
    let sgd = |varmap: &VarMap| Optimizer::new(OptimizerKind::Sgd, varmap, 0.9, false, 1e-4);

    // Data-parallel: this rank's own weights, replaced by rank 0's.
    let (varmap, vars) = f64_varmap(&spec, 100 + rank as u64)?;
    let all: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    broadcast_tensors(&mpi, &all, 0)?;
    let model = DenseNet::new(&spec, VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu))?
        .with_sync_batch_norm(if sync_bn { mpi.batch_norm_group() } else { None })
        .with_memory_efficient(memory_efficient);
    let params = parameters(&vars);
    let mut optimizer = sgd(&varmap);
    for step in 0..STEPS {
        let (x, y) = batch(step)?;
        let rows = shard(GLOBAL_BATCH, rank, world);
        let (x, y) = (
            x.narrow(0, rows.start, rows.len())?,
            y.narrow(0, rows.start, rows.len())?,
        );
        let loss = cross_entropy(&model.forward_t(&x, true)?, &y, 0.0)?;
        let mut grads = loss.backward()?;
        if average {
            average_gradients(&mpi, &params, &mut grads)?;
        }
        optimizer.step(&grads, 0.1)?;
    }

    // The reference, alone: rank 0's initial weights, on the whole batches (synchronised batch
    // norm) or with ghost batch norm over the same shards (per-rank batch norm).
    let (ref_varmap, ref_vars) = f64_varmap(&spec, 100)?;
    let reference = DenseNet::new(
        &spec,
        VarBuilder::from_varmap(&ref_varmap, DType::F64, &Device::Cpu),
    )?
    .with_memory_efficient(memory_efficient);
    let mut ref_optimizer = sgd(&ref_varmap);
    for step in 0..STEPS {
        let (x, y) = batch(step)?;
        if sync_bn {
            let loss = cross_entropy(&reference.forward_t(&x, true)?, &y, 0.0)?;
            ref_optimizer.step(&loss.backward()?, 0.1)?;
            continue;
        }
        let mut losses = Vec::new();
        for r in 0..world {
            let rows = shard(GLOBAL_BATCH, r, world);
            let (x, y) = (
                x.narrow(0, rows.start, rows.len())?,
                y.narrow(0, rows.start, rows.len())?,
            );
            losses.push(cross_entropy(&reference.forward_t(&x, true)?, &y, 0.0)?);
        }
        let loss = (Tensor::stack(&losses, 0)?.sum_all()? / world as f64)?;
        ref_optimizer.step(&loss.backward()?, 0.1)?;
    }

    // With synchronised batch norm the running statistics are the whole batch's too.
    let compared = |vars: &[(String, Var)]| -> Vec<Var> {
        match sync_bn {
            true => vars.iter().map(|(_, v)| v.clone()).collect(),
            false => parameters(vars),
        }
    };
    let ours = flat(&compared(&vars))?;
    let want = flat(&compared(&ref_vars))?;
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let deviation = ours
        .iter()
        .zip(&want)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    let mut rank0 = ours.clone();
    mpi.broadcast(Buffer::F64(&mut rank0), 0)?;
    let identical = rank0.iter().zip(&ours).all(|(a, b)| a.to_bits() == b.to_bits());
    println!(
        "rank {rank} of {world}{}: {} {} after {STEPS} steps, relative deviation from one process {deviation:e}, \
         bit-identical to rank 0: {identical}",
        if sync_bn { " (synchronised batch norm)" } else { "" },
        ours.len(),
        if sync_bn { "values of parameters and buffers" } else { "parameters" }
    );
    let changed = ours
        .iter()
        .zip(&flat(&compared(&f64_varmap(&spec, 100)?.1))?)
        .any(|(a, b)| a != b);
    std::io::Write::flush(&mut std::io::stdout()).ok();
    // Every rank reports before any exits; dropping `mpi` finalises MPI, so that mpirun
    // forwards the lines before it sees a failure.
    mpi.barrier()?;
    drop(mpi);
    if deviation > 1e-10 || !identical || !changed {
        std::process::exit(1);
    }
    Ok(())
}
