//! Where the kernels run: on the threads of rayon's pool, not beside them.

/// Runs `f` on a thread of rayon's global pool, or at once when the caller is one, and returns
/// its result.
///
/// Every kernel splits its work with rayon. Called from a thread outside the pool (a program's
/// main thread), each parallel op is sent into the pool and its caller sleeps until it ends: a
/// wake-up and a sleep per op, several hundred per DenseNet-121 forward pass. Run on a worker,
/// the op's parts go onto that worker's own queue, and the other workers take them from there.
/// The model's forward passes run so ([`crate::DenseNet::run`]); run a backward pass or an
/// optimiser step through `DenseNet::run` as well: DenseNet-121 inference at batch 1 ran 18 %
/// faster so, training 6–16 % (AMD EPYC, 2 cores). Not for work that communicates through MPI,
/// which must stay on the thread that started it.
pub fn on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}
