//! `moshid audio list|passthrough|aec` against real alsa-lib file PCMs and WAV files.
//!
//! Each test runs the binary as a child with its own ALSA_CONFIG_PATH, so tests do not
//! share alsa-lib state.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::f32::consts::PI;
use std::path::Path;
use std::process::{Command, Output};

fn moshid() -> Command {
    support::moshid_cmd()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// An ALSA configuration with a capture PCM `mic` reading `in.raw` and a playback PCM
/// `spk` writing `out.raw`, both through the file plugin.
fn alsa_conf(dir: &Path) -> String {
    let d = dir.display();
    let conf = format!(
        "pcm.mic {{ type file; slave.pcm \"null\"; file \"/dev/null\"; infile \"{d}/in.raw\"; \
         format \"raw\"; hint {{ show on; description \"test array\" }} }}\n\
         pcm.spk {{ type file; slave.pcm \"null\"; file \"{d}/out.raw\"; format \"raw\"; \
         hint {{ show on; description \"test speaker\" }} }}\n"
    );
    std::fs::write(dir.join("test.conf"), conf).unwrap();
    format!("/usr/share/alsa/alsa.conf:{d}/test.conf")
}

#[test]
fn list_shows_capture_and_playback_pcms() {
    let dir = tempfile::tempdir().unwrap();
    let o = moshid()
        .args(["audio", "list"])
        .env("ALSA_CONFIG_PATH", alsa_conf(dir.path()))
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let (cap, play) = out.split_once("playback:").expect("two sections");
    assert!(cap.starts_with("capture:"), "{out}");
    assert!(cap.contains("mic") && cap.contains("test array"), "{out}");
    assert!(
        play.contains("spk") && play.contains("test speaker"),
        "{out}"
    );
}

fn tone_fraction(x: &[f32], rate: f32, freq: f32) -> f32 {
    let (mut re, mut im) = (0f64, 0f64);
    for (n, &v) in x.iter().enumerate() {
        let ph = 2.0 * std::f64::consts::PI * (freq / rate) as f64 * n as f64;
        re += v as f64 * ph.cos();
        im -= v as f64 * ph.sin();
    }
    let bin = 2.0 * (re * re + im * im) / (x.len() as f64).powi(2);
    let total = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64;
    (bin / total.max(1e-30)) as f32
}

#[test]
fn passthrough_moves_a_4ch_16k_array_to_a_48k_stereo_speaker() {
    let dir = tempfile::tempdir().unwrap();
    // 4 channels at 16 kHz: channel 0 is a loud 3 kHz tone that must be left out; 1..3
    // carry a 440 Hz tone at 0.6, 0.4, 0.2 (mean 0.4).
    let mut raw = Vec::new();
    for i in 0..16_000 * 4 {
        let t = i as f32 / 16_000.0;
        let s = (2.0 * PI * 440.0 * t).sin();
        for v in [
            0.9 * (2.0 * PI * 3000.0 * t).sin(),
            0.6 * s,
            0.4 * s,
            0.2 * s,
        ] {
            raw.extend_from_slice(&((v * 32767.0) as i16).to_le_bytes());
        }
    }
    std::fs::write(dir.path().join("in.raw"), raw).unwrap();
    let o = moshid()
        .args([
            "audio",
            "passthrough",
            "--capture",
            "mic",
            "--playback",
            "spk",
        ])
        .args(["--capture-rate", "16000", "--capture-channels", "4"])
        .args(["--mic-channels", "1,2,3", "--playback-rate", "48000"])
        .args(["--playback-channels", "2", "--seconds", "2.4", "--pace"])
        .env("ALSA_CONFIG_PATH", alsa_conf(dir.path()))
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("capture mic: 16000 Hz, 4 ch, S16"), "{out}");
    assert!(out.contains("playback spk: 48000 Hz, 2 ch, S16"), "{out}");
    let per_second: Vec<&str> = out.lines().filter(|l| l.starts_with("t=")).collect();
    assert!(per_second.len() >= 2, "per-second counters:\n{out}");
    for l in &per_second {
        for k in ["frames=", "xruns=0", "queue=", "reopens=0"] {
            assert!(l.contains(k), "{k} missing in {l}");
        }
    }
    assert!(out.contains("done: 30 frames (2.40 s of audio)"), "{out}");

    let bytes = std::fs::read(dir.path().join("out.raw")).unwrap();
    let s: Vec<f32> = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
        .collect();
    let (l, r): (Vec<f32>, Vec<f32>) = s.chunks_exact(2).map(|f| (f[0], f[1])).unzip();
    assert_eq!(l, r, "the mono signal goes to both channels");
    assert!(l.len() >= 48_000 * 2, "{} frames written", l.len());
    // Every 10 ms block that is not silence fill is the 440 Hz tone at 0.4.
    let mut tone_blocks = 0;
    for b in l.chunks_exact(480).skip(2) {
        let rms = (b.iter().map(|v| v * v).sum::<f32>() / 480.0).sqrt();
        if rms < 1e-3 {
            continue;
        }
        if (rms - 0.4 / 2f32.sqrt()).abs() < 0.02 {
            let frac = tone_fraction(b, 48_000.0, 440.0);
            assert!(frac > 0.95, "440 Hz holds only {frac} of a block");
            tone_blocks += 1;
        }
    }
    assert!(
        tone_blocks >= 180,
        "{tone_blocks} full-level tone blocks of 240"
    );
}

fn clip(name: &str) -> Vec<f32> {
    let p = support::repo_file("hal/tests/data").join(name);
    moshid_hal::wav::read_mono_24k(&p).unwrap()
}

/// Exponentially decaying noise after a delay: a small room at 24 kHz, unit energy.
fn room_ir() -> Vec<f32> {
    let mut seed = 99u64;
    let mut h = vec![0.0f32; 24 * 15];
    for i in 0..24 * 120 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
        h.push(n * (-(i as f32) / (200.0 * 24.0 / 6.91)).exp());
    }
    let e = h.iter().map(|v| v * v).sum::<f32>().sqrt();
    h.iter().map(|v| v / e).collect()
}

#[test]
fn aec_prints_erle_and_writes_the_cancelled_signal() {
    let dir = tempfile::tempdir().unwrap();
    let far: Vec<f32> = clip("far_speech_16k.wav").iter().map(|v| v * 0.5).collect();
    let h = room_ir();
    let mut mic = vec![0.0f32; far.len()];
    for (i, &x) in far.iter().enumerate() {
        for (m, &hj) in mic[i..].iter_mut().zip(&h) {
            *m += 0.3 * x * hj;
        }
    }
    let (fp, mp, op) = (
        dir.path().join("far.wav"),
        dir.path().join("mic.wav"),
        dir.path().join("out.wav"),
    );
    moshid_hal::wav::write_mono_f32(&fp, &far, 24_000).unwrap();
    moshid_hal::wav::write_mono_f32(&mp, &mic, 24_000).unwrap();
    let o = moshid()
        .args(["audio", "aec", "--far"])
        .arg(&fp)
        .arg("--mic")
        .arg(&mp)
        .arg("--out")
        .arg(&op)
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let erle: f64 = out
        .strip_prefix("ERLE ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no ERLE line in:\n{out}"));
    assert!(erle >= 30.0, "ERLE {erle} dB:\n{out}");
    let cancelled = moshid_hal::wav::read_mono_24k(&op).unwrap();
    assert_eq!(cancelled.len(), mic.len() / 1920 * 1920);
    // Cross-check the printed figure against the written file.
    let skip = 48_000;
    let p = |x: &[f32]| {
        x[skip..cancelled.len()]
            .iter()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
    };
    let own = 10.0 * (p(&mic) / p(&cancelled)).log10();
    assert!(
        (own - erle).abs() < 0.2,
        "printed {erle} dB, file says {own} dB"
    );
}

#[test]
fn aec_errors_name_the_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let o = moshid()
        .args(["audio", "aec", "--far", "/nonexistent/far.wav", "--mic"])
        .arg(dir.path().join("mic.wav"))
        .arg("--out")
        .arg(dir.path().join("out.wav"))
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("--far") && err.contains("/nonexistent/far.wav"),
        "{err}"
    );
}
