//! `moshid`: the full-duplex voice appliance daemon and its tools.

mod audio;
mod cmd;
mod codes;
mod config;
mod control;
mod demo_model;
mod endpoint;
mod engine;
#[cfg(test)]
mod fuzz;
mod hub;
mod logging;
mod memory;
mod model_spec;
mod moshi_engine;
mod mqtt;
mod notify;
mod pipeline;
mod room;
mod satellite;
mod service;
mod sound;
mod store;
mod web;

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
    /// Audio devices: list PCMs, run the capture/playback path, cancel echo offline.
    #[command(subcommand)]
    Audio(cmd::audio::Command),
    /// Print speed figures (one JSON line) for a model.
    #[command(subcommand)]
    Bench(cmd::bench::Command),
    /// Run the appliance (what the systemd unit starts).
    Run(cmd::run::Args),
    /// Offline demo: random-weight model, WAV in -> WAV + transcript out, latency and RTF.
    Demo(cmd::demo::Args),
    /// Download and verify the configured voice's model files into the cache.
    Fetch(cmd::fetch::Args),
    /// Validate a configuration file.
    CheckConfig(cmd::check_config::Args),
    /// Run Moshi's LM offline over a WAV or Mimi codes: trace, transcript, WAV out.
    Infer(cmd::infer::Args),
    /// Convert a safetensors LM checkpoint to GGUF (q8_0, q4_0, q4k), keeping names.
    Quantize(cmd::quantize::Args),
    /// Talk to a `/api/chat` server (moshid's or Kyutai's) from a WAV file; one JSON line.
    Client(cmd::client::Args),
    /// Mimi and the LM on a device and dtype against the committed reference fixtures.
    Parity(cmd::parity::Args),
    /// Listen for a wake word in a WAV file (built-in microWakeWord models); JSON lines.
    Wake(cmd::wake::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Codec(c) => cmd::codec::run(c),
        Command::Audio(c) => cmd::audio::run(c),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Run(a) => cmd::run::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Fetch(a) => cmd::fetch::run(a),
        Command::CheckConfig(a) => cmd::check_config::run(a),
        Command::Infer(a) => cmd::infer::run(a),
        Command::Quantize(a) => cmd::quantize::run(a),
        Command::Client(a) => cmd::client::run(a),
        Command::Parity(a) => cmd::parity::run(a),
        Command::Wake(a) => cmd::wake::run(a),
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
