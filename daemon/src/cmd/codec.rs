//! `moshid codec encode|decode` (issue 2: being written).

use clap::Subcommand;

/// Codec subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Encode a WAV file to Mimi codes (JSON).
    Encode,
    /// Decode Mimi codes (JSON) to a 24 kHz WAV file.
    Decode,
}

/// Runs a codec subcommand.
pub fn run(_cmd: Command) -> anyhow::Result<()> {
    anyhow::bail!("codec is not implemented yet")
}
