//! `moshid`: the full-duplex voice appliance daemon and its tools.

mod cmd;

use clap::{Parser, Subcommand};

/// moshid runs Kyutai's Mimi codec and Moshi model on the device, driven over MQTT and
/// managed by systemd.
#[derive(Parser, Debug)]
#[command(name = "moshid", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mimi codec tools: encode a WAV to codes, decode codes to a WAV.
    #[command(subcommand)]
    Codec(cmd::codec::Command),
    /// Print speed figures (one JSON line) for a model.
    #[command(subcommand)]
    Bench(cmd::bench::Command),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Codec(c) => cmd::codec::run(c),
        Command::Bench(c) => cmd::bench::run(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole cause chain: what was wrong and what to do.
            eprintln!("moshid: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
