//! `moshid demo --web`: the offline demo model behind the web endpoint (the page at `/`,
//! Kyutai's `/api/chat`), with no sound card, MQTT or weights. Runs until SIGINT/SIGTERM.

use crate::config::Config;
use crate::web::backend::ModelInfo;
use crate::web::config::{TlsMode, WebConfig};
use crate::web::local::LocalBackend;
use crate::web::server::WebServer;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Options of the web demo.
#[derive(clap::Args, Debug, Clone)]
pub struct WebArgs {
    /// Serve the demo model over the web endpoint instead of running a WAV through it.
    #[arg(long)]
    pub web: bool,
    /// Where the web demo listens.
    #[arg(long, default_value = "127.0.0.1:8998")]
    pub listen: SocketAddr,
    /// Plain http (only on a loopback address) instead of https with a self-signed
    /// certificate.
    #[arg(long)]
    pub no_tls: bool,
    /// Where the certificate and the token are kept (default: the model cache).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Networks that need no token (CIDR, repeatable; default loopback).
    #[arg(long)]
    pub trusted: Vec<String>,
    /// What a client beyond --max-conversations gets: wait or reject.
    #[arg(long, default_value = "wait")]
    pub busy: String,
    /// Web sessions served at once, sharing the model's steps (default: `[web]
    /// max_conversations`, 4).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_conversations: Option<u16>,
}

fn name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// Serves `cfg`'s model (the demo model unless --config) until a signal.
pub fn run(cfg: &Config, a: &WebArgs) -> anyhow::Result<()> {
    let voice = cfg.model.voice.clone();
    println!("moshid demo --web: loading the model (voice {voice})");
    let files = crate::store::resolve(cfg, &voice, &mut |_| {})?;
    let capacity = a
        .max_conversations
        .map_or(cfg.web.max_conversations, usize::from);
    let (batch, personas) = crate::moshi_engine::load_batch_with_personas(&files, cfg, capacity)?;
    let hub = crate::hub::Hub::start(Box::new(batch), crate::hub::Timing::realtime())
        .context("cannot start the conversation scheduler")?;
    println!("moshid demo --web: up to {capacity} conversations at once");
    let s = &cfg.sampling;
    let info = ModelInfo {
        lm_file: name(&files.lm),
        mimi_file: name(&files.mimi),
        text_temperature: s.temp_text,
        text_topk: s.top_k,
        audio_temperature: s.temp_audio,
        audio_topk: s.top_k,
    };
    let backend = LocalBackend::new(hub, info, &voice, cfg.audio.volume).with_personas(personas);
    let backend = Arc::new(backend);
    let mut web = WebConfig {
        listen: a.listen,
        tls: if a.no_tls {
            TlsMode::Off
        } else {
            TlsMode::Auto
        },
        state_dir: Some(
            a.state_dir
                .clone()
                .unwrap_or_else(|| cfg.cache_dir.join("web")),
        ),
        max_conversations: capacity,
        // With --config, its [web] limits and names apply (hosts, max_connections...).
        ..cfg.web.clone()
    };
    if !a.trusted.is_empty() {
        web.trusted = a.trusted.clone();
    }
    web.busy = match a.busy.as_str() {
        "wait" => crate::web::config::Busy::Wait,
        "reject" => crate::web::config::Busy::Reject,
        b => anyhow::bail!("--busy {b:?}: use wait or reject"),
    };
    let token_path = web.token_path();
    let server = WebServer::start(web, backend).context("cannot start the web endpoint")?;
    let addr = server.local_addr();
    let scheme = if a.no_tls { "http" } else { "https" };
    println!("serving the page at {scheme}://{addr}/ and Kyutai's protocol at {scheme}://{addr}/api/chat");
    println!("token for other addresses: {}", token_path.display());
    println!("ready");
    wait_for_signal()?;
    server.stop(std::time::Duration::from_secs(1));
    Ok(())
}

fn wait_for_signal() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    let _ = signals.forever().next();
    Ok(())
}
