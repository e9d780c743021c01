//! `moshid fetch`: downloads the configured voice's model files into the cache, with a
//! progress bar, and verifies them.

use crate::config::{Config, ModelSource};
use crate::store::Progress;
use std::path::PathBuf;

/// Arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Configuration file.
    #[arg(long, default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Voice preset to fetch (default: model.voice; `all` for every preset).
    #[arg(long)]
    pub voice: Option<String>,
    /// Override cache_dir.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

/// Downloads (or finds in the cache) and verifies every file.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = Config::load(&args.config)?;
    if let Some(d) = args.cache_dir {
        cfg.cache_dir = d;
    }
    let voices: Vec<String> = match args.voice.as_deref() {
        Some("all") => cfg.voices.keys().cloned().collect(),
        Some(v) if cfg.voices.contains_key(v) => vec![v.to_string()],
        Some(v) => anyhow::bail!(
            "unknown voice {v:?}: use one of {} or `all`",
            cfg.voices.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
        None => vec![cfg.model.voice.clone()],
    };
    if cfg.model.source == ModelSource::Local {
        println!("model.source = \"local\": nothing to download; checking the files");
    }
    for voice in voices {
        let mut bar: Option<(String, indicatif::ProgressBar)> = None;
        let mut announced = 0;
        let files = crate::store::resolve(&cfg, &voice, &mut |p| {
            let (file, done, total) = match p {
                Progress::Bytes { file, done, total } => (file, done, total),
                Progress::Retrying { next, .. } => {
                    // Once per attempt (it is reported every second), above the bar.
                    if next != announced {
                        announced = next;
                        let line = format!("retrying {p}");
                        match &bar {
                            Some((_, b)) => b.suspend(|| eprintln!("{line}")),
                            None => eprintln!("{line}"),
                        }
                    }
                    return;
                }
            };
            if bar.as_ref().is_none_or(|(f, _)| f != file) {
                if let Some((_, b)) = bar.take() {
                    b.finish();
                }
                let b = indicatif::ProgressBar::new(total);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                b.set_message(file.to_string());
                bar = Some((file.to_string(), b));
            }
            if let Some((_, b)) = &bar {
                b.set_length(total);
                b.set_position(done);
            }
        })?;
        if let Some((_, b)) = bar.take() {
            b.finish();
        }
        println!("voice {voice}: verified");
        for (what, p) in [
            ("lm", &files.lm),
            ("mimi", &files.mimi),
            ("tokenizer", &files.tokenizer),
        ] {
            let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            println!("  {what:9} {} ({:.1} MB)", p.display(), size as f64 / 1e6);
        }
    }
    Ok(())
}
