//! `moshid client`: a headless client of Kyutai's `/api/chat` protocol. Streams a WAV in
//! real time (40 ms Opus packets, one per page, both header pages in the first message, as
//! `moshi-cli`), writes what it hears and reads, and prints one JSON line of figures.

use crate::web::chat_client::{ChatSocket, ChatTarget};
use crate::web::ogg::{OggWriter, FLAG_BOS};
use crate::web::opus::{self, Encoder, PACKET_SAMPLES};
use crate::web::protocol::Kind;
use crate::web::stream::AudioIn;
use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use moshid_hal::{FRAME_SAMPLES, MODEL_RATE};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The server: ws[s]://HOST:PORT/api/chat (query parameters are passed on).
    #[arg(long)]
    pub url: String,
    /// Access token (added as ?token=).
    #[arg(long)]
    pub token: Option<String>,
    /// Accept any server certificate (appliances use self-signed ones).
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// Trust this PEM CA file instead of the system's bundle.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// What to say: a WAV file (any rate and channels; resampled to 24 kHz mono).
    #[arg(long, value_name = "IN.wav")]
    pub input: PathBuf,
    /// Where to write what the server said (24 kHz mono WAV).
    #[arg(long, value_name = "OUT.wav")]
    pub output: Option<PathBuf>,
    /// Where to write the text the server sent.
    #[arg(long, value_name = "OUT.txt")]
    pub transcript: Option<PathBuf>,
    /// Send at most this many seconds of the input.
    #[arg(long)]
    pub seconds: Option<f64>,
}

/// What one run measured.
#[derive(Default)]
struct Run {
    handshake_ms: Option<f64>,
    metadata: Option<serde_json::Value>,
    first_audio_ms: Option<f64>,
    heard: Vec<f32>,
    text: String,
    /// Send time of the packet that completed each input frame.
    frame_sent: Vec<Instant>,
    /// Per output frame: its arrival minus the completion of the input frame it answers.
    latency_ms: Vec<f64>,
    errors: Vec<String>,
}

/// Runs the client.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut pcm = moshid_hal::wav::read_mono_24k(&args.input)
        .with_context(|| format!("cannot read --input {}", args.input.display()))?;
    if let Some(s) = args.seconds {
        pcm.truncate((s.max(0.0) * MODEL_RATE as f64) as usize);
    }
    if pcm.len() < FRAME_SAMPLES {
        anyhow::bail!("the input has less than 80 ms of audio");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let run = rt.block_on(session(&args, &pcm))?;
    write_outputs(&args, &run)?;
    println!("{}", serde_json::to_string(&report(&run, pcm.len()))?);
    if let Some(e) = run.errors.first() {
        anyhow::bail!("the server said: {e}");
    }
    if run.handshake_ms.is_none() {
        anyhow::bail!("no handshake from the server");
    }
    Ok(())
}

async fn session(args: &Args, pcm: &[f32]) -> anyhow::Result<Run> {
    // Everything the client prepares comes before the clock starts: encoding the whole input
    // (about 0.5 ms per 40 ms packet) and loading CA certificates used to count as server
    // time in `handshake_ms` (~400 ms for 10 s of input).
    let messages = encode_input(pcm)?;
    let tls = args
        .url
        .starts_with("wss://")
        .then(|| crate::web::client_tls::client_config(args.insecure, args.ca.as_deref()))
        .transpose()?
        .map(std::sync::Arc::new);
    let query: Vec<(&str, String)> = args.token.iter().map(|t| ("token", t.clone())).collect();
    let target = ChatTarget::new(&args.url, &query, tls)?;
    let t0 = Instant::now();
    let ws = target.connect(Duration::from_secs(30)).await?;
    converse(ws, &messages, t0).await
}

/// The input as messages: header pages first, then one 40 ms packet per page.
fn encode_input(pcm: &[f32]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut enc = Encoder::new()?;
    let mut w = OggWriter::new(0x6d6f_7368);
    let mut first = vec![Kind::Audio as u8];
    w.page(&opus::opus_head(MODEL_RATE), 0, FLAG_BOS, &mut first);
    w.page(&opus::opus_tags("moshid client"), 0, 0, &mut first);
    let mut messages = Vec::new();
    let mut packet = Vec::new();
    for chunk in pcm.chunks_exact(PACKET_SAMPLES) {
        enc.encode(chunk, &mut packet)?;
        let mut m = if messages.is_empty() {
            std::mem::take(&mut first)
        } else {
            vec![Kind::Audio as u8]
        };
        w.page(&packet, 2 * PACKET_SAMPLES as u64, 0, &mut m);
        messages.push(m);
    }
    Ok(messages)
}

async fn converse(mut ws: ChatSocket, messages: &[Vec<u8>], t0: Instant) -> anyhow::Result<Run> {
    let per_frame = FRAME_SAMPLES / PACKET_SAMPLES;
    let mut run = Run::default();
    let mut input = AudioIn::new()?;
    let packet_time = Duration::from_secs_f64(PACKET_SAMPLES as f64 / MODEL_RATE as f64);
    let mut next = 0usize;
    let mut start: Option<tokio::time::Instant> = None;
    // After the last packet, wait this long for the replies still owed.
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let send_at = start.map(|s| s + packet_time * next as u32);
        let sending = send_at.filter(|_| next < messages.len());
        tokio::select! {
            _ = tokio::time::sleep_until(sending.unwrap_or(deadline)), if sending.is_some() => {
                ws.send(Message::Binary(messages[next].clone().into())).await?;
                next += 1;
                if next.is_multiple_of(per_frame) {
                    run.frame_sent.push(Instant::now());
                }
                if next == messages.len() {
                    deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
            m = ws.next() => {
                let Some(m) = m else { break };
                let m = m?;
                let Message::Binary(b) = m else {
                    if m.is_close() { break }
                    continue;
                };
                if receive(&b, &mut run, &mut input, t0)? && start.is_none() {
                    // Handshake received: start talking, in real time from now.
                    start = Some(tokio::time::Instant::now());
                    deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
                }
                if !run.errors.is_empty() || run.latency_ms.len() >= messages.len() / per_frame {
                    break;
                }
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(run)
}

/// Handles one server message; true when it was the handshake.
fn receive(b: &[u8], run: &mut Run, input: &mut AudioIn, t0: Instant) -> anyhow::Result<bool> {
    let ms = || t0.elapsed().as_secs_f64() * 1000.0;
    match Kind::of(b) {
        Some(Kind::Handshake) if run.handshake_ms.is_none() => {
            run.handshake_ms = Some(ms());
            return Ok(true);
        }
        Some(Kind::Metadata) => run.metadata = serde_json::from_slice(&b[1..]).ok(),
        Some(Kind::Text) => run.text.push_str(&String::from_utf8_lossy(&b[1..])),
        Some(Kind::ColoredText) if b.len() > 1 => {
            run.text.push_str(&String::from_utf8_lossy(&b[2..]))
        }
        Some(Kind::Error) => run
            .errors
            .push(String::from_utf8_lossy(&b[1..]).into_owned()),
        Some(Kind::Audio) => {
            run.first_audio_ms.get_or_insert_with(ms);
            input.push(&b[1..])?;
            let mut frame = vec![0.0; FRAME_SAMPLES];
            while input.next_frame(&mut frame) {
                let n = run.heard.len() / FRAME_SAMPLES;
                if let Some(sent) = run.frame_sent.get(n) {
                    run.latency_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                run.heard.extend_from_slice(&frame);
            }
        }
        _ => {}
    }
    Ok(false)
}

fn write_outputs(args: &Args, run: &Run) -> anyhow::Result<()> {
    if let Some(p) = &args.output {
        moshid_hal::wav::write_mono_f32(p, &run.heard, MODEL_RATE)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = &args.transcript {
        std::fs::write(p, format!("{}\n", run.text.trim()))
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let i = ((q * sorted.len() as f64).ceil() as usize)
        .saturating_sub(1)
        .min(last);
    Some((sorted[i] * 10.0).round() / 10.0)
}

fn report(run: &Run, sent_samples: usize) -> Report<'_> {
    let mut lat = run.latency_ms.clone();
    lat.sort_by(f64::total_cmp);
    let rms = (run.heard.iter().map(|x| x * x).sum::<f32>() / run.heard.len().max(1) as f32).sqrt();
    let round = |v: Option<f64>| v.map(|v| (v * 10.0).round() / 10.0);
    Report {
        handshake_ms: round(run.handshake_ms),
        first_audio_ms: round(run.first_audio_ms),
        audio_s: run.heard.len() as f64 / MODEL_RATE as f64,
        sent_s: sent_samples as f64 / MODEL_RATE as f64,
        text: run.text.trim(),
        latency_ms: Latency {
            count: lat.len(),
            p50: percentile(&lat, 0.5),
            p95: percentile(&lat, 0.95),
            max: round(lat.last().copied()),
        },
        audio_rms_dbfs: ((20.0 * rms.max(1e-9).log10()) as f64 * 10.0).round() / 10.0,
        metadata: run.metadata.as_ref(),
        errors: &run.errors,
    }
}

/// The line `moshid client` prints (times to 0.1 ms).
#[derive(Serialize)]
struct Report<'a> {
    /// From the TCP connect to the server's handshake message (None if none came).
    handshake_ms: Option<f64>,
    /// From the TCP connect to the server's first audio message.
    first_audio_ms: Option<f64>,
    /// Seconds of audio heard.
    audio_s: f64,
    /// Seconds of audio sent.
    sent_s: f64,
    /// The text the server sent.
    text: &'a str,
    /// Per output frame: its arrival minus the completion of the input frame it answers.
    latency_ms: Latency,
    /// Level of what was heard (-180 for silence).
    audio_rms_dbfs: f64,
    /// The server's metadata message, passed on as it came.
    metadata: Option<&'a serde_json::Value>,
    /// What went wrong, in order.
    errors: &'a [String],
}

/// Distribution of the reply latency.
#[derive(Serialize)]
struct Latency {
    /// Output frames measured.
    count: usize,
    /// Median.
    p50: Option<f64>,
    /// 95th percentile.
    p95: Option<f64>,
    /// Worst.
    max: Option<f64>,
}
