//! `moshid check-config PATH`: validates a configuration file and prints what it means.

use crate::config::{Config, ModelSource};
use std::path::PathBuf;

/// Arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The TOML file to check.
    #[arg(default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub path: PathBuf,
}

/// Exits non-zero with every problem named when the file is invalid.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(&args.path)?;
    let model = match cfg.model.source {
        ModelSource::Hub => {
            let v = &cfg.voices[&cfg.model.voice];
            format!(
                "{} ({}) from Hugging Face{}",
                v.repo,
                v.lm_file,
                if cfg.model.offline { ", offline" } else { "" }
            )
        }
        ModelSource::Local => match &cfg.model.local {
            Some(l) => format!("local files ({})", l.lm.display()),
            None => "local files".into(),
        },
        ModelSource::Demo => "the built-in random-weight demo model".into(),
    };
    println!("{}: OK", args.path.display());
    println!("  device_id: {}", cfg.device_id());
    println!(
        "  model:     {model} on {}, dtype {}, context {} (voice {})",
        cfg.model.device, cfg.model.dtype, cfg.model.context, cfg.model.voice
    );
    println!(
        "  audio:     mic {:?}, speaker {:?} at {} Hz, {:?}",
        cfg.audio.capture, cfg.audio.playback, cfg.audio.rate, cfg.audio.format
    );
    if cfg.mqtt.enabled {
        println!(
            "  mqtt:      {}:{} ({}), topics under {}/{}/",
            cfg.mqtt.host,
            cfg.mqtt.port,
            if cfg.mqtt.tls.is_some() {
                "TLS"
            } else {
                "plain TCP"
            },
            cfg.mqtt.base_topic,
            cfg.device_id()
        );
    } else {
        println!("  mqtt:      disabled");
    }
    Ok(())
}
