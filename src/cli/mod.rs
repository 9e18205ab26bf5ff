//! Command-line parsing: one file per subcommand, each thin: parse, call the library, print.

/// Prints one line to standard output; a write that fails (a full disk, a closed descriptor)
/// is an error of the command, not a panic. A reader that went away ends the process by
/// SIGPIPE (see `main`).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_line(&mut std::io::stdout().lock(), format_args!($($arg)*))
            .map_err(|e| anyhow::anyhow!("standard output: {e}"))
    };
}

/// Prints one line to standard error: notes and progress, unless [`quiet`] was called; the
/// settings the library's notes name are named by their flags ([`with_flags`]). A failed
/// write is ignored: there is nowhere left to report it.
macro_rules! say {
    ($($arg:tt)*) => {{
        if !$crate::cli::QUIET.load(std::sync::atomic::Ordering::Relaxed) {
            let line = $crate::cli::with_flags(&format!($($arg)*));
            let _ = $crate::cli::write_line(&mut std::io::stderr().lock(), format_args!("{line}"));
        }
    }};
}

/// Set on the ranks other than 0 of a data-parallel run: rank 0 alone shows the run.
pub static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Silences [`say!`] for the rest of the process (errors are still printed).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub fn quiet() {
    QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Set by Ctrl-C, SIGTERM or SIGHUP while a command that stops cleanly runs (`train`: it saves
/// its state after the current batch; mpirun passes Ctrl-C to its ranks as SIGTERM, and Slurm
/// sends it at a job's time limit).
static STOP: AtomicBool = AtomicBool::new(false);
/// True once a command has said it stops cleanly on [`STOP`].
static STOPS_CLEANLY: AtomicBool = AtomicBool::new(false);

/// Ctrl-C, SIGTERM and SIGHUP: a command that stops cleanly ([`stop_flag`]) is asked to,
/// and finishes its batch and its save whatever more signals come (launchers such as `timeout`
/// and `mpirun` send one to the process and one to its group); any other command ends at once,
/// with status 130, after removing the temporary file of any write under way, so that an
/// interrupt leaves no hidden `.NAME.tmp-PID` behind and every earlier output intact.
pub fn handle_interrupts() {
    let _ = ctrlc::set_handler(|| {
        if STOPS_CLEANLY.load(Ordering::SeqCst) {
            STOP.store(true, Ordering::SeqCst);
            return;
        }
        densenet_zoo::checkpoint::remove_unfinished_writes();
        std::process::exit(130);
    });
}

/// The flag an interrupt sets from now on instead of ending the process: for a command that
/// checks it and stops cleanly.
pub fn stop_flag() -> &'static AtomicBool {
    STOPS_CLEANLY.store(true, Ordering::SeqCst);
    &STOP
}

mod bench;
mod cam;
mod check_device;
mod eval;
mod export;
mod features;
mod images;
mod infer;
mod progress;
mod results;
mod summary;
mod tabular;
mod train;
mod weights;

use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

/// DenseNets in Rust: the book's, torchvision's and the paper's, on candle.
#[derive(Debug, Parser)]
#[command(name = "densenet-zoo", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print each stage's output shape, parameters and multiply-adds, then the totals.
    Summary(summary::Args),
    /// Write a checkpoint as canonical safetensors (torchvision's names, or the book's).
    Export(export::Args),
    /// Classify images: top-k classes per image (the embedded Fashion-MNIST model by default);
    /// or predict a CSV file's rows with a tabular model.
    Infer(infer::Args),
    /// Write embeddings or feature maps of images to a safetensors file.
    Features(features::Args),
    /// Time inference or a training step: examples/s, GFLOP/s, peak memory.
    Bench(bench::Args),
    /// Train a variant on a data set (the book's recipe for d2l, the paper's for the others), or a
    /// tabular variant on a CSV file.
    Train(Box<train::Args>),
    /// Top-1, top-5 and loss of a checkpoint on a data set's test split.
    Eval(eval::Args),
    /// Check a device (a GPU) against the CPU and PyTorch on the committed fixtures.
    CheckDevice(check_device::Args),
}

/// clap's parser for counts that must be at least 1 (`--topk`, `--batch-size`, `--epochs`):
/// "invalid value '0' for '--topk <TOPK>': must be at least 1".
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<i128>() {
        Ok(n) if (1..=usize::MAX as i128).contains(&n) => Ok(n as usize),
        Ok(n) if n > 0 => Err(format!("must be at most {}", usize::MAX)),
        Ok(_) => Err("must be at least 1".into()),
        Err(_) => Err("not a whole number".into()),
    }
}

/// clap's parser for counts that may be 0 (`--warmup-epochs`; `--workers`, where 0 means
/// one per core): refuses negatives by name, not as a digit error.
pub fn zero_or_more(text: &str) -> Result<usize, String> {
    match text.trim().parse::<i128>() {
        Ok(n) if (0..=usize::MAX as i128).contains(&n) => Ok(n as usize),
        Ok(n) if n > 0 => Err(format!("must be at most {}", usize::MAX)),
        Ok(_) => Err("must be 0 or more".into()),
        Err(_) => Err("not a whole number".into()),
    }
}

/// clap's parser for real numbers: NaN and infinities refused (the ranges are the library's
/// to check, with the field's name).
pub fn finite(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("must be a finite number, found {v}")),
        Err(_) => Err("not a number".into()),
    }
}

/// clap's parser for a positive real number (`--tolerance`).
pub fn positive(text: &str) -> Result<f64, String> {
    match finite(text)? {
        v if v > 0.0 => Ok(v),
        v => Err(format!("must be more than 0, found {v}")),
    }
}

/// The library's settings, as its messages name them (in backticks), and their flags.
const FLAGS: &[(&str, &str)] = &[
    ("batch", "--batch"),
    ("batch_size", "--batch-size"),
    ("categorical", "--categorical"),
    ("class_names", "--labels"),
    ("epochs", "--epochs"),
    ("freeze", "--freeze"),
    ("id_column", "--id-column"),
    ("image_size", "--image-size"),
    ("labels", "--labels"),
    ("lr", "--lr"),
    ("num_classes", "--num-classes"),
    ("size", "--size"),
    ("sync_batch_norm", "--sync-bn"),
    ("transition_pool", "--transition-pool"),
    ("warmup_epochs", "--warmup-epochs"),
    ("weights", "--weights"),
];

/// A message of the library as the command line says it: each setting it names in backticks
/// (`batch_size`) becomes its flag (--batch-size).
pub fn with_flags(text: &str) -> String {
    let mut out = text.to_string();
    for (field, flag) in FLAGS {
        out = out.replace(&format!("`{field}`"), flag);
    }
    out
}

/// Writes `args` and a newline to `to`, flushed.
pub fn write_line(to: &mut impl std::io::Write, args: std::fmt::Arguments) -> std::io::Result<()> {
    to.write_fmt(args)?;
    to.write_all(b"\n")?;
    to.flush()
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Summary(args) => summary::run(args),
        Command::Export(args) => export::run(args),
        Command::Train(args) => train::run(*args),
        Command::Infer(args) => infer::run(args),
        Command::Features(args) => features::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Eval(args) => eval::run(args),
        Command::CheckDevice(args) => check_device::run(args),
    }
}
