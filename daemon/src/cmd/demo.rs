//! `moshid demo`: the whole pipeline offline, from a WAV file to a WAV file plus a
//! transcript, with the built-in random-weight model. No weights, network or sound card.

use crate::config::{Config, ModelSource};
use crate::pipeline::Event;
use crate::service::{self, ServiceOptions};
use anyhow::Context;
use moshid_hal::MODEL_RATE;
use std::path::{Path, PathBuf};

/// Arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input WAV (any rate, mono or stereo). Default: a spoken sentence made with
    /// espeak-ng, or a synthetic speech-like signal when espeak-ng is missing.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Where to write Moshi's audio (24 kHz mono WAV).
    #[arg(long, default_value = "moshid-demo-out.wav")]
    pub output: PathBuf,
    /// Where to write the transcript (one JSON object a line).
    #[arg(long, default_value = "moshid-demo-transcript.jsonl")]
    pub transcript: PathBuf,
    /// Attach to an MQTT broker (HOST:PORT): state, transcript, commands, discovery.
    #[arg(long, value_name = "HOST:PORT")]
    pub mqtt: Option<String>,
    /// MQTT device id (default: `demo`).
    #[arg(long, default_value = "demo")]
    pub device_id: String,
    /// Where the demo model is cached (default: $XDG_CACHE_HOME/moshid or ~/.cache/moshid).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Voice preset (each demo voice is a different random model).
    #[arg(long, default_value = "moshiko")]
    pub voice: String,
    /// Feed the input as fast as the model takes it instead of in real time.
    #[arg(long)]
    pub fast: bool,
    /// Seconds of generated input when no --input is given.
    #[arg(long, default_value_t = 10.0, value_parser = super::seconds)]
    pub seconds: f64,
    /// Take the model (source, voices, device, dtype, sampling) and AEC settings from
    /// this config instead of the built-in demo model: the same offline run with real
    /// weights, e.g. to measure a board. Audio stays WAV; MQTT only with --mqtt.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub web: super::demo_web::WebArgs,
}

fn default_cache() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("moshid");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache/moshid");
    }
    std::env::temp_dir().join("moshid-cache")
}

/// A spoken sentence from espeak-ng, else a synthetic voice-like signal.
fn generated_input(seconds: f64, dir: &Path) -> anyhow::Result<(Vec<f32>, &'static str)> {
    let text = "Hello Moshi. Can you hear me? What is the weather like in the kitchen today? \
                Please turn off the lights and tell me a short story.";
    let wav = dir.join("moshid-demo-in.wav");
    let ok = std::process::Command::new("espeak-ng")
        .args(["-s", "150", "-w"])
        .arg(&wav)
        .arg(text)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let n = (seconds * MODEL_RATE as f64) as usize;
    if ok {
        if let Ok(mut s) = moshid_hal::wav::read_mono_24k(&wav) {
            s.resize(n, 0.0);
            return Ok((s, "espeak-ng speech"));
        }
    }
    // Voice-like: a gliding 120-220 Hz pulse train through two formants, in syllables.
    let mut out = Vec::with_capacity(n);
    let (mut phase, mut f1, mut f2) = (0.0f32, 0.0f32, 0.0f32);
    for i in 0..n {
        let t = i as f32 / MODEL_RATE as f32;
        let pitch = 170.0 + 50.0 * (t * 0.7).sin();
        phase += pitch / MODEL_RATE as f32;
        let pulse = if phase >= 1.0 {
            phase -= 1.0;
            1.0
        } else {
            0.0
        };
        f1 = 0.95 * f1 + pulse;
        f2 = 0.8 * f2 - 0.5 * pulse;
        let syllable = ((t * 4.0 * std::f32::consts::PI).sin().max(0.0)).powf(0.5);
        let phrase = if (t % 3.0) < 2.4 { 1.0 } else { 0.0 };
        out.push(0.15 * (f1 + f2) * syllable * phrase);
    }
    Ok((out, "synthetic speech-like signal (espeak-ng not found)"))
}

/// The demo's microphone and speaker are WAV files, through hal's WAV device like any
/// `wav:` endpoint: the input paced like a microphone (or as fast as the model takes it),
/// the output collecting what the speaker would have played.
fn wav_audio(cfg: &mut Config, input: &Path, output: &Path, fast: bool) {
    let a = &mut cfg.audio;
    a.capture = format!("wav:{}", input.display());
    a.playback = format!("wav:{}", output.display());
    a.rate = MODEL_RATE;
    a.capture_channels = 1;
    a.mic_channels.clear();
    a.playback_channels = 1;
    a.pace = !fast;
}

/// Runs the demo and prints its figures.
pub fn run(args: Args) -> anyhow::Result<()> {
    crate::logging::init();
    let mut cfg = match &args.config {
        Some(p) => {
            let mut c = Config::load(p)?;
            c.mqtt = Config::demo_default().mqtt;
            c
        }
        None => {
            let mut c = Config::demo_default();
            c.model.source = ModelSource::Demo;
            c.cache_dir = default_cache();
            c
        }
    };
    if let Some(d) = &args.cache_dir {
        cfg.cache_dir = d.clone();
    }
    let random = cfg.model.source == ModelSource::Demo;
    cfg.device_id = Some(args.device_id.clone());
    cfg.idle_timeout_s = 0;
    cfg.autostart = true;
    if !cfg.voices.contains_key(&args.voice) {
        anyhow::bail!(
            "unknown voice {:?}: use one of {}",
            args.voice,
            cfg.voices.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if args.config.is_none() || args.voice != "moshiko" {
        cfg.model.voice = args.voice.clone();
    }
    if let Some(hp) = &args.mqtt {
        let (host, port) = hp
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .with_context(|| format!("--mqtt {hp:?}: use HOST:PORT, e.g. localhost:1883"))?;
        cfg.mqtt.enabled = true;
        cfg.mqtt.host = host;
        cfg.mqtt.port = port;
    }
    let problems = cfg.problems();
    if !problems.is_empty() {
        anyhow::bail!("invalid demo settings: {}", problems.join("; "));
    }

    if args.web.web {
        return super::demo_web::run(&cfg, &args.web);
    }
    // The WAV demo serves nothing: the web endpoint is `demo --web`.
    cfg.web.enabled = false;
    let out_dir = args
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (input, origin) = match &args.input {
        Some(p) => (
            moshid_hal::wav::read_mono_24k(p)
                .with_context(|| format!("cannot read --input {}", p.display()))?,
            "your WAV file",
        ),
        None => generated_input(args.seconds, &out_dir)?,
    };
    if input.is_empty() {
        anyhow::bail!("the input has no audio: give a longer --input WAV");
    }
    let input_path = match &args.input {
        Some(p) => p.clone(),
        None => {
            let p = out_dir.join("moshid-demo-in.wav");
            moshid_hal::wav::write_mono_f32(&p, &input, MODEL_RATE)
                .with_context(|| format!("cannot write the generated input {}", p.display()))?;
            p
        }
    };
    wav_audio(&mut cfg, &input_path, &args.output, args.fast);
    let seconds = input.len() as f64 / MODEL_RATE as f64;
    if random {
        println!("moshid demo: THE MODEL WEIGHTS ARE RANDOM. The architecture is Moshi's");
        println!("(Mimi codec + temporal and depth transformers) at a small size; what it says");
        println!("is noise. The point is the pipeline: capture -> echo cancellation -> Mimi");
        println!("encode -> LM step -> Mimi decode -> playback.");
    } else {
        println!(
            "moshid demo: the configured model ({:?} source, voice {}) on {}, offline from a WAV file.",
            cfg.model.source, cfg.model.voice, cfg.model.device
        );
    }
    println!(
        "input: {origin}, {seconds:.1} s, fed {}",
        if args.fast {
            "as fast as possible"
        } else {
            "in real time (like a microphone)"
        }
    );
    if random {
        println!("model cache: {}", cfg.cache_dir.join("demo").display());
    }

    // Fail now, naming the file, rather than after the run (a missing folder, a directory,
    // no permission).
    for p in [&args.output, &args.transcript] {
        std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(16_384);
    let started = std::time::Instant::now();
    let summary = service::run(ServiceOptions {
        config: cfg,
        config_path: None,
        engine: crate::moshi_engine::load_model,
        exit_when_source_ends: true,
        extra_events: vec![tx],
    })?;
    let wall = started.elapsed().as_secs_f64();

    let mut lines = String::new();
    let mut text = String::new();
    while let Ok(ev) = rx.try_recv() {
        if let Event::Transcript { text: t, time } = ev {
            lines.push_str(&crate::mqtt::messages::TranscriptPiece::new(&t, time).to_json());
            lines.push('\n');
            text.push_str(&t);
        }
    }
    std::fs::write(&args.transcript, lines)
        .with_context(|| format!("cannot write {}", args.transcript.display()))?;

    let st = &summary.state;
    let steps = st.steps;
    println!();
    println!(
        "model load (cached after the first run): {:.2} s",
        summary.load_s
    );
    println!(
        "steps: {steps} x 80 ms ({:.1} s of audio) in {:.1} s wall",
        steps as f64 * 0.08,
        wall - summary.load_s
    );
    let sf = summary.steps;
    let lf = summary.latency;
    println!(
        "model step: mean {:.1} ms, p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms -> RTF {:.3} (below 1 = faster than real time)",
        sf.mean_ms, sf.p50_ms, sf.p95_ms, sf.max_ms, sf.mean_ms / 80.0
    );
    if !args.fast {
        println!(
            "end-to-end latency (capture of a frame's first sample -> its reply played): mean {:.0} ms, p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
            lf.mean_ms, lf.p50_ms, lf.p95_ms, lf.max_ms
        );
    }
    println!(
        "frames skipped because inference fell behind: {}",
        st.dropped_frames
    );
    println!(
        "transcript ({} words{}): {}",
        text.split_whitespace().count(),
        if random { ", random" } else { "" },
        text.trim()
    );
    // The phase goes back to idle when the input ends; an error recorded on the way (the
    // speaker's file could not be written) stays in `error`. An offline run has no
    // reloads, so any error there failed it.
    if let Some(e) = &st.error {
        anyhow::bail!("the pipeline failed: {e}");
    }
    if st.phase == crate::control::Phase::Error {
        anyhow::bail!("the pipeline failed");
    }
    check_output(&args.output, steps)?;
    println!(
        "wrote {} and {}",
        args.output.display(),
        args.transcript.display()
    );
    Ok(())
}

/// A regular output file must be a WAV holding the audio of (nearly) every step. A write
/// that failed on the way (a full disk) already failed the run: the playback stream reports
/// it. Anything else (`/dev/null`, a FIFO) cannot be read back, so only a file is checked.
fn check_output(path: &Path, steps: u64) -> anyhow::Result<()> {
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(());
    }
    let (samples, channels, rate) = moshid_hal::wav::read_interleaved(path).with_context(|| {
        format!(
            "the output {} was not written completely (disk full?)",
            path.display()
        )
    })?;
    let seconds = samples.len() as f64 / channels as f64 / rate as f64;
    // The last frames may still be in the playback queue when the input ends.
    let expected = steps.saturating_sub(10) as f64 * 0.08;
    if seconds < expected {
        anyhow::bail!(
            "the output {} holds {seconds:.2} s of audio, expected about {:.2} s: it was not written completely (disk full?)",
            path.display(),
            steps as f64 * 0.08
        );
    }
    Ok(())
}
