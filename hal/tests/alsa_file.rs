//! Real alsa-lib through the `file` plugin (no sound card needed): a 4-channel 16 kHz array
//! captured to 24 kHz frames and played to a 48 kHz stereo file, xrun recovery, a device
//! that vanishes and returns, and the error for a missing device.
//!
//! ALSA_CONFIG_PATH is process-wide, so every test here shares one configuration written
//! once; each test uses its own PCM names and files.

mod common;
use common::*;
use moshid_hal::alsa::{AlsaCapture, AlsaRequest};
use moshid_hal::device::{CaptureDevice, DeviceError, DeviceParams};
use moshid_hal::{
    CaptureConfig, CaptureStream, PlaybackConfig, PlaybackStream, SampleFormat, StreamState,
    FRAME_SAMPLES,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

struct Env {
    dir: PathBuf,
}

/// Writes the ALSA configuration and the input files, once per process.
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let d = dir.display();
        let cap = |name: &str, infile: &str| {
            format!(
                "pcm.{name} {{ type file; slave.pcm \"null\"; file \"/dev/null\"; \
                 infile \"{d}/{infile}\"; format \"raw\"; \
                 hint {{ show on; description \"test capture {name}\" }} }}\n"
            )
        };
        let conf = [
            cap("array16", "array16.raw"),
            cap("mic48", "mic48.raw"),
            cap("vanish", "vanish.raw"),
            cap("chk", "chk.raw"),
            format!(
                "pcm.spk48 {{ type file; slave.pcm \"null\"; file \"{d}/spk48.raw\"; \
                 format \"raw\"; hint {{ show on; description \"test playback\" }} }}\n"
            ),
        ]
        .concat();
        std::fs::write(dir.join("test.conf"), conf).unwrap();
        std::env::set_var(
            "ALSA_CONFIG_PATH",
            format!(
                "/usr/share/alsa/alsa.conf:{}",
                dir.join("test.conf").display()
            ),
        );
        Env { dir }
    })
}

fn write_s16(path: &Path, interleaved: &[f32]) {
    let bytes: Vec<u8> = interleaved
        .iter()
        .flat_map(|v| ((v * 32767.0).round() as i16).to_le_bytes())
        .collect();
    std::fs::write(path, bytes).unwrap();
}

fn read_s16(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
        .collect()
}

/// Speech at 16 kHz, straight from the committed clip (it is 16 kHz).
fn speech_16k(secs: f32) -> Vec<f32> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/far_speech_16k.wav");
    let (x, rate) = moshid_hal::wav::read_mono(&p).unwrap();
    assert_eq!(rate, 16_000);
    x[..(16_000.0 * secs) as usize].to_vec()
}

/// Best lag of `b` behind `a` in 0..max, with its correlation.
fn align(a: &[f32], b: &[f32], max: usize) -> (usize, f32) {
    (0..max)
        .map(|l| (l, correlation(a, &b[l..])))
        .fold((0, f32::MIN), |x, y| if y.1 > x.1 { y } else { x })
}

fn level_db(a: &[f32], b: &[f32]) -> f32 {
    20.0 * (rms(b) / rms(a)).log10()
}

#[test]
fn array_4ch_16k_to_24k_frames_and_back_to_48k_stereo() {
    let e = env();
    let speech = speech_16k(3.0);
    // Channel 0 is unrelated noise (must be ignored); 1..3 carry the speech at 0.5, 0.3,
    // 0.1: their mean is the speech at 0.3.
    let noise = noise(speech.len(), 11);
    let mut inter = Vec::with_capacity(speech.len() * 4);
    for (s, n) in speech.iter().zip(&noise) {
        inter.extend_from_slice(&[0.5 * n, 0.5 * s, 0.3 * s, 0.1 * s]);
    }
    write_s16(&e.dir.join("array16.raw"), &inter);

    let mut cfg = CaptureConfig::new("array16");
    cfg.rate = 16_000;
    cfg.channels = 4;
    cfg.mic_channels = vec![1, 2, 3];
    cfg.period_frames = 160;
    cfg.buffer_frames = 640;
    cfg.queue_frames = 64;
    // The null slave is not paced: without pacing the thread would race past the file's end
    // and the bounded queue would keep only stale frames.
    cfg.pace = true;
    let cap = CaptureStream::start(&cfg).unwrap();
    let p = cap.params().clone();
    assert_eq!(
        (p.rate, p.channels, p.format),
        (16_000, 4, SampleFormat::S16)
    );
    // Stay inside the file: past its end the file plugin repeats stale data.
    let n_frames = 36;
    let mut frames = Vec::new();
    while frames.len() < n_frames {
        frames.push(cap.recv(Duration::from_secs(5)).expect("capture frame"));
    }
    cap.stop();
    assert!(frames
        .windows(2)
        .all(|w| w[0].captured_at <= w[1].captured_at));
    let got: Vec<f32> = frames.iter().flat_map(|f| f.samples.clone()).collect();
    assert_eq!(got.len(), n_frames * FRAME_SAMPLES);

    let want: Vec<f32> = moshid_hal::resample::resample_clip(&speech, 16_000, 24_000)
        .unwrap()
        .iter()
        .map(|v| v * 0.3)
        .collect();
    let (lag, c) = align(&want[..60_000], &got, 400);
    let lvl = level_db(&want[..60_000], &got[lag..lag + 60_000]);
    eprintln!("capture: lag {lag} samples, correlation {c:.4}, level {lvl:+.2} dB");
    assert!(c > 0.99, "capture correlation {c}");
    assert!(lvl.abs() < 0.3, "capture level off by {lvl} dB");

    let out_path = e.dir.join("spk48.raw");
    let pcfg = PlaybackConfig::new("spk48"); // 48 kHz stereo S16
    let play = PlaybackStream::start(&pcfg).unwrap();
    assert_eq!((play.params().rate, play.params().channels), (48_000, 2));
    for f in frames {
        play.send_blocking(f).unwrap();
    }
    let st = play.stats();
    play.finish().unwrap();
    assert_eq!(st.xruns, 0);
    let out = read_s16(&out_path);
    assert!(
        out.len() >= n_frames * FRAME_SAMPLES * 4,
        "{} samples out",
        out.len()
    );
    let (l, r): (Vec<f32>, Vec<f32>) = out.chunks_exact(2).map(|f| (f[0], f[1])).unzip();
    assert_eq!(l, r, "both speaker channels carry the mono signal");
    let want48: Vec<f32> = moshid_hal::resample::resample_clip(&speech, 16_000, 48_000)
        .unwrap()
        .iter()
        .map(|v| v * 0.3)
        .collect();
    // Silence may precede the first frame if the playback thread starved at start.
    // Coarse lag from the speech onset, refined by correlation around it.
    let onset = |x: &[f32]| x.iter().position(|v| v.abs() > 0.01).unwrap_or(0);
    let coarse = (onset(&l) as i64 - onset(&want48) as i64 - 300).max(0) as usize;
    let (fine, c) = align(&want48[..120_000], &l[coarse..], 600);
    let lag = coarse + fine;
    let lvl = level_db(&want48[..120_000], &l[lag..lag + 120_000]);
    eprintln!("playback: lag {lag} samples, correlation {c:.4}, level {lvl:+.2} dB");
    assert!(c > 0.99, "end-to-end correlation {c}");
    assert!(lvl.abs() < 0.5, "end-to-end level off by {lvl} dB");
}

/// Wraps a real ALSA capture and fails at the backend boundary on command, as alsa-lib
/// does on a real card: EPIPE (xrun) on chosen reads, ENODEV-like loss while "unplugged".
struct Faulty {
    inner: AlsaCapture,
    reads: Arc<AtomicUsize>,
    xrun_at: Vec<usize>,
    unplugged: Arc<AtomicBool>,
}

impl CaptureDevice for Faulty {
    fn params(&self) -> &DeviceParams {
        self.inner.params()
    }
    fn read(&mut self, buf: &mut [f32]) -> Result<usize, DeviceError> {
        if self.unplugged.load(Ordering::SeqCst) {
            return Err(DeviceError::Lost("No such device (unplugged)".into()));
        }
        let n = self.reads.fetch_add(1, Ordering::SeqCst);
        if self.xrun_at.contains(&n) {
            return Err(DeviceError::Xrun);
        }
        self.inner.read(buf)
    }
    fn recover(&mut self) -> Result<(), DeviceError> {
        // The real alsa-lib recovery: snd_pcm_prepare + snd_pcm_start.
        self.inner.recover()
    }
}

fn sine_file(path: &Path, rate: u32, secs: f32) {
    let x: Vec<f32> = (0..(rate as f32 * secs) as usize)
        .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / rate as f32).sin())
        .collect();
    write_s16(path, &x);
}

fn faulty_opener(
    device: &'static str,
    rate: u32,
    xrun_at: Vec<usize>,
    unplugged: Arc<AtomicBool>,
    opens: Arc<AtomicUsize>,
) -> moshid_hal::device::CaptureOpener {
    Box::new(move || {
        opens.fetch_add(1, Ordering::SeqCst);
        let inner = AlsaCapture::open(&AlsaRequest {
            device,
            rate,
            channels: 1,
            format: SampleFormat::S16,
            period_frames: rate as usize / 100,
            buffer_frames: rate as usize / 25,
        })?;
        Ok(Box::new(Faulty {
            inner,
            reads: Arc::new(AtomicUsize::new(0)),
            xrun_at: xrun_at.clone(),
            unplugged: unplugged.clone(),
        }))
    })
}

fn paced(device: &str, rate: u32) -> CaptureConfig {
    let mut cfg = CaptureConfig::new(device);
    cfg.rate = rate;
    cfg.pace = true;
    cfg.queue_frames = 64;
    cfg
}

#[test]
fn xruns_are_recovered_counted_and_the_stream_continues() {
    let e = env();
    sine_file(&e.dir.join("mic48.raw"), 48_000, 5.0);
    let cfg = paced("mic48", 48_000);
    let opens = Arc::new(AtomicUsize::new(0));
    let opener = faulty_opener(
        "mic48",
        48_000,
        vec![20, 60],
        Arc::new(AtomicBool::new(false)),
        opens.clone(),
    );
    let cap = CaptureStream::with_opener(&cfg, opener).unwrap();
    let mut got = Vec::new();
    while got.len() < 15 {
        let f = cap
            .recv(Duration::from_secs(3))
            .expect("frames keep coming");
        got.push(rms(&f.samples));
    }
    let st = cap.stats();
    cap.stop();
    assert_eq!(st.xruns, 2, "{st:?}");
    assert_eq!(
        st.reopens, 0,
        "an xrun is recovered in place, not by reopening"
    );
    assert_eq!(opens.load(Ordering::SeqCst), 1);
    assert_eq!(st.state, StreamState::Running);
    // Every frame after the resampler's start-up is the 0.5 sine (rms 0.354).
    for (i, r) in got.iter().enumerate().skip(1) {
        assert!((r - 0.3536).abs() < 0.01, "frame {i} rms {r}");
    }
}

#[test]
fn a_device_that_vanishes_is_reopened_with_backoff_when_it_returns() {
    let e = env();
    let infile = e.dir.join("vanish.raw");
    let gone = e.dir.join("vanish.raw.unplugged");
    sine_file(&infile, 16_000, 10.0);
    let unplugged = Arc::new(AtomicBool::new(false));
    let opens = Arc::new(AtomicUsize::new(0));
    let opener = faulty_opener("vanish", 16_000, vec![], unplugged.clone(), opens.clone());
    let cap = CaptureStream::with_opener(&paced("vanish", 16_000), opener).unwrap();
    for _ in 0..3 {
        cap.recv(Duration::from_secs(3))
            .expect("frames before unplug");
    }
    // Unplug: the file behind the PCM disappears, so alsa-lib cannot reopen it.
    std::fs::rename(&infile, &gone).unwrap();
    unplugged.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    while cap.stats().state != StreamState::Error {
        assert!(t0.elapsed() < Duration::from_secs(3), "never entered Error");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(800));
    let attempts = opens.load(Ordering::SeqCst) - 1;
    // Backoff 50, 100, 200, 400 ms: a handful of attempts in 0.8 s, not hundreds.
    assert!(
        (2..=6).contains(&attempts),
        "{attempts} reopen attempts in 0.8 s"
    );
    let err = cap.last_error().unwrap_or_default();
    assert!(err.contains("vanish"), "last error names the device: {err}");
    assert_eq!(cap.stats().reopens, 0);
    while cap.recv(Duration::ZERO).is_some() {}

    // Plug back in.
    unplugged.store(false, Ordering::SeqCst);
    std::fs::rename(&gone, &infile).unwrap();
    let t0 = Instant::now();
    let f = loop {
        if let Some(f) = cap.recv(Duration::from_millis(100)) {
            break f;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no frames after replug"
        );
    };
    let st = cap.stats();
    cap.stop();
    assert_eq!(st.reopens, 1, "{st:?}");
    assert_eq!(st.state, StreamState::Running);
    let f2_rms = rms(&f.samples[FRAME_SAMPLES / 2..]);
    assert!(
        (f2_rms - 0.3536).abs() < 0.02,
        "audio after replug rms {f2_rms}"
    );
}

#[test]
fn a_missing_device_is_named_and_what_exists_is_listed() {
    let env = env();
    let e = CaptureStream::start(&CaptureConfig::new("no_such_mic"))
        .err()
        .expect("opening a missing PCM fails")
        .to_string();
    assert!(e.contains("no_such_mic"), "{e}");
    assert!(
        e.contains("array16") && e.contains("mic48"),
        "lists capture PCMs: {e}"
    );

    let e = PlaybackStream::start(&PlaybackConfig::new("no_such_speaker"))
        .err()
        .expect("opening a missing PCM fails")
        .to_string();
    assert!(e.contains("no_such_speaker") && e.contains("spk48"), "{e}");

    sine_file(&env.dir.join("chk.raw"), 48_000, 0.5);
    let mut cfg = CaptureConfig::new("chk");
    cfg.mic_channels = vec![3];
    let e = CaptureStream::start(&cfg)
        .err()
        .expect("bad channel")
        .to_string();
    assert!(e.contains("channel 3") && e.contains("1 channels"), "{e}");

    for gain in [f32::NAN, f32::INFINITY, -1.0, 1e6] {
        let mut cfg = CaptureConfig::new("chk");
        cfg.gain = gain;
        let e = CaptureStream::start(&cfg)
            .err()
            .expect("bad gain")
            .to_string();
        assert!(
            e.contains("microphone gain") && e.contains("0..=100"),
            "{e}"
        );
    }
}

#[test]
fn list_devices_shows_the_configured_pcms() {
    env();
    let devs = moshid_hal::list_devices().unwrap();
    let find = |n: &str| devs.iter().find(|d| d.name == n).cloned();
    let a = find("array16").expect("array16 listed");
    assert_eq!(a.description, "test capture array16");
    assert!(find("spk48").is_some());
}
