//! `moshid wake` on the committed wake-word clips (models/tests/fixtures/wake/): the same
//! detections as the reference, in any WAV format, and one-line errors for bad input.

mod support;

use std::path::{Path, PathBuf};
use support::*;

fn clip(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/wake")
        .join(name)
}

fn wake(args: &[&str], input: &Path) -> (bool, String, String) {
    let o = moshid_cmd()
        .arg("wake")
        .args(args)
        .arg(input)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn detects_okay_nabu_where_the_reference_does() {
    // The reference's first detection on this clip is inference 45 (fixture JSON), after
    // 46 x 3 feature frames: the last one ends at 137 x 10 ms + 30 ms.
    let (ok, out, err) = wake(&["--model", "okay_nabu"], &clip("pos_okay_nabu_en-us.wav"));
    assert!(ok, "{err}");
    let l = lines(&out);
    assert_eq!(l.len(), 1, "{out}");
    assert_eq!(l[0]["event"], "detection");
    assert_eq!(l[0]["wake_word"], "Okay Nabu");
    let t = l[0]["time_s"].as_f64().unwrap();
    assert!((t - 1.4).abs() < 1e-9, "{t}");
    assert!(l[0]["probability"].as_f64().unwrap() > 0.85);
}

#[test]
fn negatives_print_nothing_and_probabilities_print_every_inference() {
    let (ok, out, err) = wake(&["--model", "okay_nabu"], &clip("neg_sentence_en-us.wav"));
    assert!(ok, "{err}");
    assert!(out.is_empty(), "{out}");
    let (ok, out, _) = wake(&["--probabilities", "--stats"], &clip("neg_noise.wav"));
    assert!(ok);
    let l = lines(&out);
    // 298 feature frames, one inference per 3.
    assert_eq!(l.iter().filter(|v| v["event"] == "inference").count(), 99);
    let stats = l.last().unwrap();
    assert_eq!(stats["event"], "stats");
    assert_eq!(stats["inferences"], 99);
    assert_eq!(stats["detections"], 0);
}

#[test]
fn any_wav_format_is_resampled_to_16k() {
    let dir = tempfile::tempdir().unwrap();
    let input = clip("pos_okay_nabu_en-gb.wav");
    let mut r = hound::WavReader::open(&input).unwrap();
    let pcm: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    // 48 kHz stereo float, by linear interpolation: not the same bits, still the wake word.
    let path = dir.path().join("48k.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 48_000,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for i in 0..pcm.len() * 3 {
        let (k, f) = (i / 3, (i % 3) as f32 / 3.0);
        let next = pcm.get(k + 1).copied().unwrap_or(0);
        let v = (f32::from(pcm[k]) * (1.0 - f) + f32::from(next) * f) / 32_768.0;
        w.write_sample(v).unwrap();
        w.write_sample(v).unwrap();
    }
    w.finalize().unwrap();
    let (ok, out, err) = wake(&[], &path);
    assert!(ok, "{err}");
    assert_eq!(lines(&out).len(), 1, "{out}");
}

#[test]
fn a_model_file_with_its_json_works_and_bad_input_is_one_error() {
    let dir = tempfile::tempdir().unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/wake");
    let m = dir.path().join("my.tflite");
    std::fs::copy(models.join("okay_nabu.tflite"), &m).unwrap();
    std::fs::copy(models.join("okay_nabu.json"), dir.path().join("my.json")).unwrap();
    let (ok, out, err) = wake(
        &["--model", m.to_str().unwrap()],
        &clip("pos_okay_nabu_en-us.wav"),
    );
    assert!(ok, "{err}");
    assert_eq!(lines(&out).len(), 1);

    let cases: Vec<(Vec<String>, PathBuf, &str)> = vec![
        (
            vec!["--model".into(), "hey_siri".into()],
            clip("neg_noise.wav"),
            "unknown built-in wake word",
        ),
        (vec![], dir.path().join("missing.wav"), "missing.wav"),
        (
            vec![
                "--model".into(),
                models.join("okay_nabu.json").display().to_string(),
            ],
            clip("neg_noise.wav"),
            "TFL3",
        ),
        (
            vec!["--cutoff".into(), "1.5".into()],
            clip("neg_noise.wav"),
            "(0, 1)",
        ),
    ];
    for (args, input, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = wake(&args, &input);
        assert!(!ok, "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        // Runtime errors are one line; clap's own (a bad flag value) add the usage.
        if err.starts_with("moshid: error:") {
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }
    // A truncated model file.
    let t = dir.path().join("cut.tflite");
    std::fs::write(
        &t,
        &std::fs::read(models.join("okay_nabu.tflite")).unwrap()[..5000],
    )
    .unwrap();
    std::fs::copy(models.join("okay_nabu.json"), dir.path().join("cut.json")).unwrap();
    let (ok, _, err) = wake(&["--model", t.to_str().unwrap()], &clip("neg_noise.wav"));
    assert!(!ok && err.starts_with("moshid: error:"), "{err}");
}
