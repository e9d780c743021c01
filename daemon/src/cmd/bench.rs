//! `moshid bench ...`: speed figures as one JSON line.

use clap::Subcommand;

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Streaming Mimi encode + decode, per 80 ms frame.
    Mimi,
}

/// Runs a benchmark.
pub fn run(_cmd: Command) -> anyhow::Result<()> {
    anyhow::bail!("bench is not implemented yet")
}
