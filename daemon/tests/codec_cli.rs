//! `moshid codec encode|decode` and `moshid bench mimi` through the built binary, on the
//! committed Mimi fixtures (models/tests/fixtures/mimi, made by gen_mimi.py).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{Device, Tensor};

use support::moshid;

fn fixtures() -> PathBuf {
    support::fixtures("mimi")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The small Mimi fixture: its checkpoint and its config.
fn small() -> (PathBuf, PathBuf) {
    (
        fixtures().join("mimi_small.safetensors"),
        fixtures().join("mimi_config.json"),
    )
}

/// `CMD --mimi W --mimi-config C REST`.
fn small_args<'a>(cmd: &[&'a str], w: &'a str, c: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = cmd.to_vec();
    args.extend_from_slice(&["--mimi", w, "--mimi-config", c]);
    args.extend_from_slice(rest);
    args
}

/// `moshid CMD --mimi W --mimi-config C REST`.
fn with_small(cmd: &[&str], w: &str, c: &str, rest: &[&str]) -> Output {
    moshid(&small_args(cmd, w, c, rest))
}

/// Asserts `out` succeeded, with its stderr in the message.
fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn assert_clean_failure(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("moshid: error:"), "{err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
}

#[derive(serde::Deserialize)]
struct Codes {
    num_codebooks: usize,
    codes: Vec<Vec<u32>>,
}

#[test]
fn encode_then_decode_matches_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (w, c) = small();
    let wav = fixtures().join("speech_24k.wav");
    let json = dir.join("codes.json");
    let out = with_small(&["codec", "encode"], s(&w), s(&c), &[s(&wav), s(&json)]);
    assert_success(&out);
    let codes: Codes = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(codes.num_codebooks, 8);

    let r = reference();
    let ref_codes: Vec<Vec<i64>> = r["codes"].to_vec2().unwrap();
    let gap: Vec<Vec<f32>> = r["gap"].to_vec2().unwrap();
    // The clip is 122 880 samples rounded up to whole frames; the CLI pads the last one.
    assert_eq!(codes.codes.len(), ref_codes.len());
    let (mut n, mut same) = (0, 0);
    for ((o, rc), g) in codes.codes.iter().zip(&ref_codes).zip(&gap) {
        assert_eq!(o.len(), 8);
        for l in 0..8 {
            let first = if l == 0 { 0 } else { 1 };
            if g[first..=l].iter().all(|&x| x >= 1e-4) {
                n += 1;
                same += usize::from(o[l] as i64 == rc[l]);
            }
        }
    }
    assert!(same as f64 / n as f64 >= 0.995, "agreement {same}/{n}");

    // Decode the reference's own codes: SNR against the reference decode.
    let ref_json = dir.join("ref.json");
    let ref8: Vec<Vec<i64>> = ref_codes.iter().map(|f| f[..8].to_vec()).collect();
    std::fs::write(
        &ref_json,
        serde_json::json!({"num_codebooks": 8, "codes": ref8}).to_string(),
    )
    .unwrap();
    let wav_out = dir.join("out.wav");
    let out = with_small(
        &["codec", "decode"],
        s(&w),
        s(&c),
        &[s(&ref_json), s(&wav_out)],
    );
    assert_success(&out);
    let mut rd = hound::WavReader::open(&wav_out).unwrap();
    let spec = rd.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (24_000, 1, 32)
    );
    assert_eq!(spec.sample_format, hound::SampleFormat::Float);
    let pcm: Vec<f32> = rd.samples::<f32>().map(|x| x.unwrap()).collect();
    let expected: Vec<f32> = r["decoded8"].to_vec1().unwrap();
    assert_eq!(pcm.len(), expected.len());
    let sig: f64 = expected.iter().map(|x| (*x as f64).powi(2)).sum();
    let noise: f64 = expected
        .iter()
        .zip(&pcm)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let snr = 10.0 * (sig / noise.max(1e-300)).log10();
    assert!(snr >= 80.0, "decode SNR {snr:.1} dB");
}

#[test]
fn encode_accepts_other_rates_channels_and_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (w, c) = small();
    // 44.1 kHz stereo 24-bit integer, 0.5 s: resampled and downmixed by the CLI.
    let wav = dir.join("in.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100,
        bits_per_sample: 24,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wr = hound::WavWriter::create(&wav, spec).unwrap();
    for i in 0..22_050 {
        let v = ((i as f32 * 0.03).sin() * 3_000_000.0) as i32;
        wr.write_sample(v).unwrap();
        wr.write_sample(-v / 2).unwrap();
    }
    wr.finalize().unwrap();
    let json = dir.join("codes.json");
    let out = with_small(
        &["codec", "encode"],
        s(&w),
        s(&c),
        &["--num-codebooks", "3", s(&wav), s(&json)],
    );
    assert_success(&out);
    let codes: Codes = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(codes.num_codebooks, 3);
    // 0.5 s at 24 kHz = 12 000 samples = 6.25 frames -> 7 (last one zero-padded).
    assert_eq!(codes.codes.len(), 7);
    assert!(codes
        .codes
        .iter()
        .all(|f| f.len() == 3 && f.iter().all(|&x| x < 64)));
}

#[test]
fn bench_prints_one_json_line() {
    let (w, c) = small();
    let wav = fixtures().join("speech_24k.wav");
    let args = small_args(
        &["bench", "mimi"],
        s(&w),
        s(&c),
        &["--wav", s(&wav), "--frames", "5"],
    );
    // The CPU engine splits its time by part and by kind; the candle engine (the "before")
    // by part only.
    for engine in ["cpu", "candle"] {
        let mut cmd = support::moshid_cmd();
        if engine == "candle" {
            cmd.env("MOSHID_MIMI_ENGINE", "candle");
        }
        let out = cmd.args(&args).output().expect("run moshid");
        assert_success(&out);
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.trim_end().lines().count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let (e, d, rtf) = (
            v["encode_ms_median"].as_f64().unwrap(),
            v["decode_ms_median"].as_f64().unwrap(),
            v["rtf"].as_f64().unwrap(),
        );
        assert!(e > 0.0 && d > 0.0);
        assert!((rtf - (e + d) / 80.0).abs() < 0.01, "{v}");
        assert_eq!(v["frames"], 5);
        // The fixture's 16-step attention window at 2 steps per frame: 8 untimed frames.
        assert_eq!(v["warmup_frames"], 8, "{v}");
        assert_eq!(v["kernels"] == "candle", engine == "candle", "{v}");
        // Linux always has the figure (0 when THP is off); it cannot exceed the process.
        let huge = v["huge_page_mb"].as_f64().unwrap();
        assert!((0.0..1e5).contains(&huge), "{v}");
        let parts = v["parts_ms_median"].as_object().unwrap();
        assert_eq!(parts.len(), 8, "{v}");
        let sum: f64 = parts.values().map(|x| x.as_f64().unwrap()).sum();
        // Medians of parts need not add up to the median frame, but they come close.
        assert!(sum > 0.5 * (e + d) && sum < 1.5 * (e + d), "{v}");
        let kinds = v["kinds_ms_mean"].as_object().unwrap();
        assert_eq!(kinds.len(), 8, "{v}");
        let timed = kinds.values().filter(|x| x.is_f64()).count();
        assert_eq!(timed, if engine == "cpu" { 8 } else { 0 }, "{v}");
    }
}

#[test]
fn bad_input_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (w, c) = small();
    let (w, c) = (s(&w).to_string(), s(&c).to_string());
    let wav = fixtures().join("speech_24k.wav");
    let wav = s(&wav).to_string();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let json_out = p("out.json");
    let wav_out = p("out.wav");

    // Missing checkpoint.
    let out = moshid(&[
        "codec",
        "encode",
        "--mimi",
        "/nonexistent/mimi.safetensors",
        &wav,
        &json_out,
    ]);
    assert_clean_failure(&out, "/nonexistent/mimi.safetensors");
    // Truncated checkpoint.
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(p("cut.safetensors"), &bytes[..bytes.len() / 3]).unwrap();
    let out = with_small(
        &["codec", "encode"],
        &p("cut.safetensors"),
        &c,
        &[&wav, &json_out],
    );
    assert_clean_failure(&out, "cut.safetensors");
    // The small checkpoint against the default (full-size) config: wrong shapes, named.
    let out = moshid(&["codec", "encode", "--mimi", &w, &wav, &json_out]);
    assert_clean_failure(&out, "encoder.model.0.conv.conv.weight");
    // A tensor renamed.
    let mut t = candle_core::safetensors::load(&w, &Device::Cpu).unwrap();
    let v = t.remove("upsample.convtr.convtr.convtr.weight").unwrap();
    t.insert("upsample.weight".into(), v);
    candle_core::safetensors::save(&t, p("renamed.safetensors")).unwrap();
    let out = with_small(
        &["codec", "encode"],
        &p("renamed.safetensors"),
        &c,
        &[&wav, &json_out],
    );
    assert_clean_failure(&out, "upsample.convtr.convtr.convtr.weight");
    // Input that is not a WAV, and a truncated WAV.
    let out = with_small(&["codec", "encode"], &w, &c, &[&c, &json_out]);
    assert_clean_failure(&out, "WAV");
    let wbytes = std::fs::read(&wav).unwrap();
    std::fs::write(p("cut.wav"), &wbytes[..21]).unwrap();
    let out = with_small(&["codec", "encode"], &w, &c, &[&p("cut.wav"), &json_out]);
    assert_clean_failure(&out, "cut.wav");
    // Too many codebooks.
    let out = with_small(
        &["codec", "encode"],
        &w,
        &c,
        &["--num-codebooks", "33", &wav, &json_out],
    );
    assert_clean_failure(&out, "33");

    // Codes files: out of range, wrong count, not JSON, negative.
    let cases = [
        (
            r#"{"num_codebooks": 2, "codes": [[1, 2], [3, 64]]}"#,
            "out of range",
        ),
        (
            r#"{"num_codebooks": 2, "codes": [[1, 2], [3]]}"#,
            "frame 1 has 1 codes",
        ),
        (
            r#"{"num_codebooks": 40, "codes": []}"#,
            "num_codebooks is 40",
        ),
        (
            r#"{"num_codebooks": 2, "codes": [[1, -2]]}"#,
            "not a codes file",
        ),
        ("not json", "not a codes file"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let f = p(&format!("c{i}.json"));
        std::fs::write(&f, text).unwrap();
        let out = with_small(&["codec", "decode"], &w, &c, &[&f, &wav_out]);
        assert_clean_failure(&out, needle);
    }
    let out = with_small(&["codec", "decode"], &w, &c, &[&p("absent.json"), &wav_out]);
    assert_clean_failure(&out, "absent.json");
}
