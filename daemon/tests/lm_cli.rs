//! The `moshid infer`, `moshid quantize` and `moshid bench lm` contract, on the small
//! fixture LM whose greedy run was recorded from the reference package.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use moshid_models::lm::{write_random_checkpoint, Layout, LmConfig};
use moshid_models::tokenizer::TextTokenizer;

use support::{fixtures as fx, infer_args as infer, moshid};

fn ok(args: &[&str]) -> Output {
    let out = moshid(args);
    assert!(
        out.status.success(),
        "moshid {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `moshid ARGS`, which must fail; its stderr.
fn fails(args: &[&str]) -> String {
    let out = moshid(args);
    assert!(!out.status.success(), "moshid {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fx("lm/expected.json")).unwrap()).unwrap()
}

/// Codes as `moshid codec encode` writes them.
fn write_codes(dir: &Path, codes_t_major: &[Vec<u32>]) -> PathBuf {
    let p = dir.join("codes.json");
    let j = serde_json::json!({"num_codebooks": 8, "codes": codes_t_major});
    std::fs::write(&p, j.to_string()).unwrap();
    p
}

fn fixture_codes() -> Vec<Vec<u32>> {
    let rows: Vec<Vec<u32>> = serde_json::from_value(expected()["user_codes"].clone()).unwrap();
    (0..rows[0].len())
        .map(|t| (0..8).map(|k| rows[k][t]).collect())
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn infer_trace_and_transcript_follow_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let codes = write_codes(dir.path(), &fixture_codes());
    let trace = dir.path().join("trace.jsonl");
    let transcript = dir.path().join("words.txt");
    let (lm, cfg, spm) = (
        fx("lm/model_candle.safetensors"),
        fx("lm/config.json"),
        fx("lm/spm.model"),
    );
    let out = ok(&infer(
        s(&lm),
        s(&cfg),
        s(&codes),
        &[
            "--greedy",
            "--trace",
            s(&trace),
            "--tokenizer",
            s(&spm),
            "--transcript",
            s(&transcript),
        ],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("KV cache"),
        "load-time memory line missing: {err}"
    );
    let e = expected();
    let text: Vec<u32> = serde_json::from_value(e["full"]["text"].clone()).unwrap();
    let audio: Vec<Vec<u32>> = serde_json::from_value(e["full"]["audio"].clone()).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), text.len());
    for (t, l) in lines.iter().enumerate() {
        assert_eq!(l["step"], t);
        assert_eq!(l["text"], text[t], "text at step {t}");
        assert_eq!(l["audio"], serde_json::json!(audio[t]), "audio at step {t}");
    }
    // Re-aligned text = the text sampled one step earlier (text delay 0, max delay 1).
    let tok = TextTokenizer::from_file(&spm).unwrap();
    let words = tok.decode(&text[..text.len() - 1]);
    assert!(!words.trim().is_empty());
    assert_eq!(
        std::fs::read_to_string(&transcript).unwrap(),
        format!("{words}\n")
    );
}

#[test]
fn quantize_then_infer_and_bench_on_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fx("lm/config.json");
    for (layout, ty) in [("candle", "q8_0"), ("pytorch", "q4_0"), ("candle", "q4k")] {
        let gguf = dir.path().join(format!("{layout}.{ty}.gguf"));
        let src = fx(&format!("lm/model_{layout}.safetensors"));
        ok(&[
            "quantize",
            "--in",
            s(&src),
            "--out",
            s(&gguf),
            "--type",
            ty,
            "--lm-config",
            s(&cfg),
        ]);
        let head = std::fs::read(&gguf).unwrap();
        assert_eq!(&head[..4], b"GGUF");
        let codes = write_codes(dir.path(), &fixture_codes());
        let trace = dir.path().join("t.jsonl");
        // No --lm-config: the GGUF carries its configuration.
        ok(&[
            "infer",
            "--lm",
            s(&gguf),
            "--input-codes",
            s(&codes),
            "--trace",
            s(&trace),
            "--seed",
            "7",
        ]);
        let n = std::fs::read_to_string(&trace).unwrap().lines().count();
        assert_eq!(n, fixture_codes().len());
    }
    let gguf = dir.path().join("candle.q8_0.gguf");
    let out = ok(&[
        "bench",
        "lm",
        "--lm",
        s(&gguf),
        "--steps",
        "5",
        "--full-context",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    let j: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for k in [
        "step_ms_median",
        "temporal_ms_median",
        "depth_ms_median",
        "peak_rss_bytes",
        "weights_bytes",
        "kv_cache_bytes",
    ] {
        assert!(j[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {j}");
    }
    assert!(j["step_ms_median"].as_f64().unwrap() >= j["depth_ms_median"].as_f64().unwrap());
    assert_eq!(j["full_context"], true, "{j}");
    // In turn: one batch of 5, a line each for 1, 2, 4 and 5 active conversations.
    let out = ok(&[
        "bench",
        "lm",
        "--lm",
        s(&gguf),
        "--steps",
        "3",
        "--batch",
        "5",
        "--in-turn",
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let counts: Vec<u64> = lines.iter().filter_map(|j| j["batch"].as_u64()).collect();
    assert_eq!(counts, [1, 2, 4, 5], "{lines:?}");
    for j in &lines {
        assert_eq!(j["in_turn"], true, "{j}");
        assert!(j["step_ms_median"].as_f64().is_some_and(|v| v > 0.0), "{j}");
        // One batch of 5 slots holds the caches, whatever the count stepped.
        assert_eq!(j["kv_cache_bytes"], lines[0]["kv_cache_bytes"], "{j}");
    }
}

#[test]
fn infer_wav_to_wav_through_mimi() {
    // A random LM whose codebooks match the small Mimi fixture (64 codes).
    let dir = tempfile::tempdir().unwrap();
    let mut c = LmConfig::from_json_file(&fx("lm/config.json")).unwrap();
    c.card = 64;
    let cfg = dir.path().join("lm64.json");
    std::fs::write(&cfg, serde_json::to_string(&c).unwrap()).unwrap();
    let lm = dir.path().join("lm64.safetensors");
    write_random_checkpoint(&c, 1, &lm, Layout::Candle).unwrap();
    let out_wav = dir.path().join("out.wav");
    let trace = dir.path().join("t.jsonl");
    let (mimi, mcfg, wav) = (
        fx("mimi/mimi_small.safetensors"),
        fx("mimi/mimi_config.json"),
        fx("mimi/speech_24k.wav"),
    );
    ok(&[
        "infer",
        "--lm",
        s(&lm),
        "--lm-config",
        s(&cfg),
        "--mimi",
        s(&mimi),
        "--mimi-config",
        s(&mcfg),
        "--input",
        s(&wav),
        "--output",
        s(&out_wav),
        "--trace",
        s(&trace),
    ]);
    let steps = std::fs::read_to_string(&trace).unwrap().lines().count();
    let input = hound::WavReader::open(&wav).unwrap();
    assert_eq!(steps, (input.duration() as usize).div_ceil(1920));
    let r = hound::WavReader::open(&out_wav).unwrap();
    assert_eq!(r.spec().sample_rate, 24_000);
    assert_eq!(r.spec().channels, 1);
    // The first step only fills the acoustic delay; every later step yields one frame.
    assert_eq!(r.duration() as usize, (steps - 1) * 1920);
    let pcm: Vec<f32> = r.into_samples::<f32>().map(|x| x.unwrap()).collect();
    assert!(
        pcm.iter().any(|x| x.abs() > 1e-4),
        "decoded audio is silent"
    );
}

#[test]
fn bad_inputs_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (lm, cfg) = (fx("lm/model_candle.safetensors"), fx("lm/config.json"));
    // Codes beyond the model's codebook size.
    let mut codes = fixture_codes();
    codes[3][2] = 5000;
    let p = write_codes(dir.path(), &codes);
    let err = fails(&infer(s(&lm), s(&cfg), s(&p), &[]));
    assert!(
        err.contains("5000") && err.contains("out of range"),
        "{err}"
    );
    // Missing checkpoint.
    let missing = dir.path().join("nope.gguf");
    let err = fails(&infer(s(&missing), s(&cfg), s(&p), &[]));
    assert!(err.contains("nope.gguf"));
    // A checkpoint that does not match the configuration (the 7B default).
    let good = write_codes(dir.path(), &fixture_codes());
    let err = fails(&["infer", "--lm", s(&lm), "--input-codes", s(&good)]);
    assert!(
        err.contains("emb.0.weight") && err.contains("--lm-config"),
        "{err}"
    );
    // A context whose KV cache cannot fit in this machine's memory is refused before
    // anything is allocated.
    let err = fails(&infer(
        s(&lm),
        s(&cfg),
        s(&good),
        &["--context", "1000000000"],
    ));
    assert!(
        err.contains("KV cache") && err.contains("--context") && err.contains("available"),
        "{err}"
    );
    // Neither input given.
    fails(&["infer", "--lm", s(&lm)]);
    // Bad quantization type.
    fails(&[
        "quantize",
        "--in",
        s(&lm),
        "--out",
        s(&dir.path().join("x.gguf")),
        "--type",
        "q3",
    ]);
}
