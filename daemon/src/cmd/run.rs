//! `moshid run`: the appliance (what the systemd unit starts).

use crate::config::Config;
use crate::service::{self, ServiceOptions};
use std::path::PathBuf;

/// Arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Configuration file.
    #[arg(long, default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// Runs until SIGTERM.
pub fn run(args: Args) -> anyhow::Result<()> {
    crate::logging::init();
    let cfg = Config::load(&args.config)?;
    service::run(ServiceOptions {
        config: cfg,
        config_path: Some(args.config),
        engine: crate::moshi_engine::load_model,
        exit_when_source_ends: false,
        extra_events: Vec::new(),
    })?;
    Ok(())
}
