//! The `densenet-zoo` command line: thin commands over the library.

#[macro_use]
mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    end_quietly_when_the_reader_goes();
    densenet_zoo::train::keep_freed_memory();
    spin_briefly_in_candles_pool();
    let args = cli::Cli::parse();
    cli::handle_interrupts();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = cli::write_line(
                &mut std::io::stderr().lock(),
                format_args!("error: {}", message_of(&e)),
            );
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once: a cause whose text the message already holds (the
/// library's errors quote their source) is not repeated; the settings they name are named by
/// their flags.
fn message_of(error: &anyhow::Error) -> String {
    let mut message = cli::with_flags(&error.to_string());
    for cause in error.chain().skip(1) {
        let cause = cli::with_flags(&cause.to_string());
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}

/// Restores the default action of SIGPIPE, which Rust's runtime ignores: a write to a pipe
/// whose reader has gone (`densenet-zoo infer --json DIR | head -1`) then ends the process
/// quietly, as it ends `cat` or `grep`, instead of making `println!` panic. Anything being
/// written then is written atomically (a temporary file and a rename), so nothing is lost.
fn end_quietly_when_the_reader_goes() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE and no handler of ours is replaced.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// candle runs its element-wise ops on a thread pool of its own, whose threads spin 25,000
/// times after each op before they sleep: on the cores that our kernels' threads then need.
/// At 1,000 (unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` is set), training ran 5–16 % faster
/// (the book's net at 32×32, DenseNet-121 and DenseNet-BC-100; AMD EPYC, 2 cores).
fn spin_briefly_in_candles_pool() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        // Called first thing in main, before any other thread exists, and before candle
        // reads it (when its pool starts, at the first element-wise op).
        std::env::set_var(VAR, "1000");
    }
}
