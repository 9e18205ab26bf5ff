//! Command-line parsing: one file per subcommand, each thin: parse, call the library, print.

mod export;
mod summary;

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
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Summary(args) => summary::run(args),
        Command::Export(args) => export::run(args),
    }
}
