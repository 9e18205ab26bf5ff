//! The `densenet-zoo` command line: thin commands over the library.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    densenet_zoo::allocator::keep_freed_memory();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
