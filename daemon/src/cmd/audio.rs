//! `moshid audio list|passthrough|aec`: audio device tools.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use moshid_hal::aec::{erle_db, AecOptions, EchoCanceller};
use moshid_hal::{
    CaptureConfig, CaptureStream, PlaybackConfig, PlaybackStream, SampleFormat, FRAME_SAMPLES,
    MODEL_RATE,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Audio subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List capture and playback PCMs.
    List,
    /// Run the whole audio path: capture -> channel pick -> 24 kHz frames -> [AEC] -> playback.
    Passthrough(PassthroughArgs),
    /// Run the echo canceller offline on recordings and print the ERLE.
    Aec(AecArgs),
}

/// `moshid audio passthrough` options.
#[derive(Args, Debug)]
pub struct PassthroughArgs {
    /// Capture PCM (ALSA name, or wav:PATH).
    #[arg(long)]
    pub capture: String,
    /// Playback PCM (ALSA name, or wav:PATH).
    #[arg(long)]
    pub playback: String,
    /// Capture rate in Hz.
    #[arg(long, default_value_t = 48_000, value_parser = super::rate)]
    pub capture_rate: u32,
    /// Capture channel count (e.g. 6 for a microphone array).
    #[arg(long, default_value_t = 1, value_parser = super::channels)]
    pub capture_channels: usize,
    /// Capture sample format: S16, S32 or F32.
    #[arg(long, default_value = "S16")]
    pub capture_format: SampleFormat,
    /// Channels averaged into the microphone signal, e.g. 0 or 1,2,3,4 (default: all).
    #[arg(long, value_delimiter = ',', value_parser = super::channel)]
    pub mic_channels: Vec<usize>,
    /// Linear gain after the channel mix.
    #[arg(long, default_value_t = 1.0, value_parser = super::gain)]
    pub gain: f32,
    /// Playback rate in Hz.
    #[arg(long, default_value_t = 48_000, value_parser = super::rate)]
    pub playback_rate: u32,
    /// Playback channel count.
    #[arg(long, default_value_t = 2, value_parser = super::channels)]
    pub playback_channels: usize,
    /// Playback sample format: S16, S32 or F32.
    #[arg(long, default_value = "S16")]
    pub playback_format: SampleFormat,
    /// Stop after this many seconds of audio (default: until the capture ends or Ctrl-C).
    #[arg(long, value_parser = super::seconds)]
    pub seconds: Option<f64>,
    /// Cancel the echo of the playback from the capture.
    #[arg(long)]
    pub aec: bool,
    /// Noise suppression (with --aec).
    #[arg(long)]
    pub ns: bool,
    /// Automatic gain control (with --aec).
    #[arg(long)]
    pub agc: bool,
    /// Pace devices that are not paced themselves (WAV files, ALSA file/null plugins).
    #[arg(long)]
    pub pace: bool,
}

/// `moshid audio aec` options.
#[derive(Args, Debug)]
pub struct AecArgs {
    /// Far end: what the speaker played (WAV, any format).
    #[arg(long)]
    pub far: PathBuf,
    /// Microphone recording made while FAR played (WAV, any format).
    #[arg(long)]
    pub mic: PathBuf,
    /// Echo-cancelled microphone signal (24 kHz mono float WAV).
    #[arg(long)]
    pub out: PathBuf,
    /// Seconds of convergence left out of the steady-state ERLE.
    #[arg(long, default_value_t = 2.0, value_parser = super::seconds_or_zero)]
    pub skip_seconds: f64,
    /// First guess of the far-to-mic delay in ms.
    #[arg(long)]
    pub delay_ms: Option<i32>,
    /// Noise suppression.
    #[arg(long)]
    pub ns: bool,
    /// Automatic gain control.
    #[arg(long)]
    pub agc: bool,
}

/// Runs an audio subcommand.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::List => list(),
        Command::Passthrough(a) => passthrough(a),
        Command::Aec(a) => aec(a),
    }
}

fn list() -> anyhow::Result<()> {
    let devs = moshid_hal::list_devices()?;
    for (title, want_capture) in [("capture", true), ("playback", false)] {
        println!("{title}:");
        for d in devs
            .iter()
            .filter(|d| if want_capture { d.capture } else { d.playback })
        {
            println!("  {:<32} {}", d.name, d.description);
        }
    }
    Ok(())
}

fn passthrough(a: PassthroughArgs) -> anyhow::Result<()> {
    let mut ccfg = CaptureConfig::new(&a.capture);
    ccfg.rate = a.capture_rate;
    ccfg.channels = a.capture_channels;
    ccfg.format = a.capture_format;
    ccfg.mic_channels = a.mic_channels.clone();
    ccfg.gain = a.gain;
    ccfg.pace = a.pace;
    let mut pcfg = PlaybackConfig::new(&a.playback);
    pcfg.rate = a.playback_rate;
    pcfg.channels = a.playback_channels;
    pcfg.format = a.playback_format;
    pcfg.pace = a.pace;
    let cap = CaptureStream::start(&ccfg).context("opening the capture side")?;
    let play = PlaybackStream::start(&pcfg).context("opening the playback side")?;
    let (cp, pp) = (cap.params().clone(), play.params().clone());
    println!(
        "capture {}: {} Hz, {} ch, {:?}, period {}, buffer {}",
        a.capture, cp.rate, cp.channels, cp.format, cp.period_frames, cp.buffer_frames
    );
    println!(
        "playback {}: {} Hz, {} ch, {:?}, period {}, buffer {}",
        a.playback, pp.rate, pp.channels, pp.format, pp.period_frames, pp.buffer_frames
    );
    let mut canceller = if a.aec {
        Some(EchoCanceller::new(&AecOptions::for_playback(
            &pp, a.ns, a.agc,
        ))?)
    } else {
        None
    };
    let limit = a
        .seconds
        .map(|s| (s * MODEL_RATE as f64 / FRAME_SAMPLES as f64).round() as u64);
    let mut far = vec![0.0f32; FRAME_SAMPLES];
    let (mut passed, mut play_full) = (0u64, 0u64);
    let start = Instant::now();
    let mut next_report = start + Duration::from_secs(1);
    let report =
        |t: f64, cap: &CaptureStream, play: &PlaybackStream, aec: Option<&EchoCanceller>| {
            let (c, p) = (cap.stats(), play.stats());
            let aec = aec
                .and_then(|x| x.metrics())
                .map(|m| format!(" aec_erle={:.1}dB aec_delay={}ms", m.erle_db, m.delay_ms))
                .unwrap_or_default();
            println!(
            "t={t:.0}s capture: frames={} xruns={} reopens={} dropped={} queue={} state={:?} | \
             playback: frames={} xruns={} reopens={} silence={} queue={} state={:?}{aec}",
            c.frames, c.xruns, c.reopens, c.dropped, c.queue_depth, c.state,
            p.frames, p.xruns, p.reopens, p.dropped, p.queue_depth, p.state
        );
        };
    while limit.is_none_or(|l| passed < l) {
        if Instant::now() >= next_report {
            report(
                start.elapsed().as_secs_f64(),
                &cap,
                &play,
                canceller.as_ref(),
            );
            next_report += Duration::from_secs(1);
        }
        let Some(mut frame) = cap.recv(Duration::from_millis(200)) else {
            if cap.is_finished() {
                break;
            }
            continue;
        };
        if let Some(c) = canceller.as_mut() {
            // The reference is what the playback thread handed to the device; when none
            // is ready the speaker is playing silence.
            match play.reference().try_recv() {
                Ok(r) => far.copy_from_slice(&r.samples),
                Err(_) => far.iter_mut().for_each(|v| *v = 0.0),
            }
            c.process(&far, &mut frame.samples)?;
        }
        let res = if a.pace {
            play.send(frame)
        } else {
            // Unpaced runs (files) keep every frame.
            play.send_blocking(frame)
        };
        if res.is_err() {
            if play.has_stopped() {
                break; // failed for good: finish() says why
            }
            play_full += 1;
        }
        passed += 1;
    }
    let c = cap.stats();
    cap.stop();
    play.finish()
        .with_context(|| format!("--playback {}", a.playback))?;
    println!(
        "done: {passed} frames ({:.2} s of audio) in {:.2} s; capture xruns={} reopens={} \
         dropped={}; playback queue full {play_full} times",
        passed as f64 * FRAME_SAMPLES as f64 / MODEL_RATE as f64,
        start.elapsed().as_secs_f64(),
        c.xruns,
        c.reopens,
        c.dropped
    );
    Ok(())
}

fn aec(a: AecArgs) -> anyhow::Result<()> {
    let mut far = moshid_hal::wav::read_mono_24k(&a.far).context("reading --far")?;
    let mic = moshid_hal::wav::read_mono_24k(&a.mic).context("reading --mic")?;
    if mic.len() < FRAME_SAMPLES {
        bail!(
            "{}: shorter than one 80 ms frame; record at least a few seconds",
            a.mic.display()
        );
    }
    // The far end lines up with the mic from sample 0; pad or cut it to the mic's length.
    far.resize(mic.len(), 0.0);
    let mut c = EchoCanceller::new(&AecOptions {
        noise_suppression: a.ns,
        agc: a.agc,
        initial_delay_ms: a.delay_ms,
    })?;
    let n = mic.len() / FRAME_SAMPLES * FRAME_SAMPLES;
    let mut out = mic[..n].to_vec();
    let t = Instant::now();
    for (f, o) in far[..n]
        .chunks_exact(FRAME_SAMPLES)
        .zip(out.chunks_exact_mut(FRAME_SAMPLES))
    {
        c.process(f, o)?;
    }
    let per_frame_us = t.elapsed().as_secs_f64() * 1e6 / (n / FRAME_SAMPLES) as f64;
    moshid_hal::wav::write_mono_f32(&a.out, &out, MODEL_RATE).context("writing --out")?;
    let skip = (a.skip_seconds * MODEL_RATE as f64) as usize;
    if skip >= n {
        bail!(
            "--skip-seconds {} leaves nothing of the {:.2} s recording to measure",
            a.skip_seconds,
            n as f64 / MODEL_RATE as f64
        );
    }
    println!(
        "ERLE {:.1} dB (whole signal after {:.1} s: 10*log10(sum mic^2 / sum out^2)); \
         whole file {:.1} dB",
        erle_db(&mic[..n], &out, skip),
        a.skip_seconds,
        erle_db(&mic[..n], &out, 0)
    );
    if let Some(m) = c.metrics() {
        println!(
            "AEC3 estimates: delay {} ms, ERL {:.1} dB, ERLE {:.1} dB",
            m.delay_ms, m.erl_db, m.erle_db
        );
    }
    println!(
        "{} frames, {per_frame_us:.0} us per 80 ms frame; wrote {}",
        n / FRAME_SAMPLES,
        a.out.display()
    );
    Ok(())
}
