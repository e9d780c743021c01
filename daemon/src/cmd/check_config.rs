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

/// What `run` would fail on beyond the file itself, found with the code `run` uses: the
/// device opens, the cache folder can be one, the local model files read, the MQTT options
/// (password file, TLS files) build.
fn environment_problems(cfg: &Config) -> Vec<String> {
    let mut p = Vec::new();
    if let Err(e) = cfg.model.device.open() {
        p.push(format!("`model.device` = {}: {e}", cfg.model.device));
    }
    if cfg.cache_dir.exists() && !cfg.cache_dir.is_dir() {
        p.push(format!(
            "`cache_dir` = {}: exists and is not a folder",
            cfg.cache_dir.display()
        ));
    }
    if cfg.model.source == ModelSource::Local {
        let no_progress = &mut |_: crate::store::Progress<'_>| {};
        if let Err(e) = crate::store::resolve(cfg, &cfg.model.voice, no_progress) {
            p.push(format!("`model.local`: {e}"));
        }
    }
    if cfg.model.source == ModelSource::Remote {
        if let Err(e) = crate::satellite::check(cfg) {
            p.push(format!("`model.remote`: {e:#}"));
        }
    }
    if cfg.web.enabled {
        if let (Some(c), Some(k)) = (&cfg.web.cert_file, &cfg.web.key_file) {
            if let Err(e) = crate::web::tls::read_pair(c, k) {
                p.push(format!("`web.cert_file`: {e:#}"));
            }
        }
        web_paths(&cfg.web, &mut p);
    }
    if cfg.mqtt.enabled {
        let topics = crate::mqtt::Topics::new(&cfg.mqtt.base_topic, &cfg.device_id());
        if let Err(e) = crate::mqtt::options(&cfg.mqtt, &topics) {
            p.push(format!("`mqtt`: {e}"));
        }
    }
    p
}

/// The endpoint's state folder must be a folder and its token file a file (or absent: both
/// are made at first start); `run` could not start the endpoint otherwise.
fn web_paths(w: &crate::web::config::WebConfig, p: &mut Vec<String>) {
    let dir = w.state_dir();
    if dir.exists() && !dir.is_dir() {
        p.push(format!(
            "`web.state_dir` = {}: exists and is not a folder (the certificate and token \
             are kept there)",
            dir.display()
        ));
    }
    let token = w.token_path();
    if token.exists() && !token.is_file() {
        p.push(format!(
            "`web.token_file` = {}: exists and is not a file (remove it, or name a file \
             moshid may create)",
            token.display()
        ));
    }
}

/// Exits non-zero with every problem named when the file is invalid, or when what it names
/// (device, model files, MQTT credentials and certificates, cache folder) would make `run`
/// fail.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(&args.path)?;
    let problems = environment_problems(&cfg);
    if !problems.is_empty() {
        anyhow::bail!("{}: {}", args.path.display(), problems.join("; "));
    }
    println!("{}: OK", args.path.display());
    for line in cfg.summary() {
        println!("  {line}");
    }
    if cfg.web.enabled {
        let w = &cfg.web;
        println!(
            "  web:       {}://{}/ (token file {}, trusted {}, busy = {:?})",
            if w.tls == crate::web::config::TlsMode::Off {
                "http"
            } else {
                "https"
            },
            w.listen,
            w.token_path().display(),
            w.trusted.join(", "),
            w.busy
        );
    } else {
        println!("  web:       disabled");
    }
    Ok(())
}
