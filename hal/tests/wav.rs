//! WAV reading: formats, downmix, resampling to 24 kHz, and the errors for bad files.

use moshid_hal::{wav, HalError, MODEL_RATE};
use std::f32::consts::PI;
use std::path::Path;

fn write_int(path: &Path, rate: u32, channels: u16, bits: u16, frames: &[Vec<f32>]) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let full = ((1i64 << (bits - 1)) - 1) as f32;
    for f in frames {
        for &s in f {
            let v = (s * full).round() as i32;
            if bits == 8 {
                w.write_sample(v as i8).unwrap();
            } else {
                w.write_sample(v).unwrap();
            }
        }
    }
    w.finalize().unwrap();
}

/// Power of `x` at `freq` Hz relative to its total power (single-bin DFT).
fn tone_fraction(x: &[f32], rate: u32, freq: f32) -> f32 {
    let (mut re, mut im) = (0f64, 0f64);
    for (n, &v) in x.iter().enumerate() {
        let ph = 2.0 * std::f64::consts::PI * freq as f64 * n as f64 / rate as f64;
        re += v as f64 * ph.cos();
        im -= v as f64 * ph.sin();
    }
    let bin = 2.0 * (re * re + im * im) / (x.len() as f64).powi(2);
    let total: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64;
    (bin / total) as f32
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
}

fn sine(rate: u32, secs: f32, freq: f32, amp: f32) -> Vec<f32> {
    let n = (rate as f32 * secs) as usize;
    (0..n)
        .map(|i| amp * (2.0 * PI * freq * i as f32 / rate as f32).sin())
        .collect()
}

#[test]
fn stereo_44k1_i16_sine_comes_out_24k_mono_same_frequency_and_level() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.wav");
    // Left 1 kHz at 0.6, right the same tone at 0.2: the mean is a 1 kHz tone at 0.4.
    let l = sine(44_100, 1.0, 1000.0, 0.6);
    let r = sine(44_100, 1.0, 1000.0, 0.2);
    let frames: Vec<Vec<f32>> = l.iter().zip(&r).map(|(a, b)| vec![*a, *b]).collect();
    write_int(&p, 44_100, 2, 16, &frames);
    let out = wav::read_mono_24k(&p).unwrap();
    assert!(
        (out.len() as i64 - 24_000).abs() <= 1,
        "length {} for 1 s",
        out.len()
    );
    // Skip the edges, where the resampler's filter sees the clip boundary.
    let mid = &out[1000..23_000];
    let level = rms(mid) * 2f32.sqrt();
    assert!((level - 0.4).abs() < 0.004, "amplitude {level}, want 0.4");
    let frac = tone_fraction(mid, MODEL_RATE, 1000.0);
    assert!(frac > 0.999, "1 kHz holds {frac} of the power");
    // Phase alignment: the output is not delayed relative to the input.
    let expect = sine(24_000, 1.0, 1000.0, 0.4);
    let err = rms(&mid
        .iter()
        .zip(&expect[1000..23_000])
        .map(|(a, b)| a - b)
        .collect::<Vec<_>>());
    assert!(err < 0.004, "sample error rms {err}: output is shifted");
}

#[test]
fn every_integer_width_and_float_reads_to_the_same_signal() {
    let dir = tempfile::tempdir().unwrap();
    let x = sine(16_000, 0.5, 440.0, 0.5);
    let frames: Vec<Vec<f32>> = x.iter().map(|v| vec![*v]).collect();
    let want = wav::read_mono_24k(&{
        let p = dir.path().join("f.wav");
        wav::write_mono_f32(&p, &x, 16_000).unwrap();
        p
    })
    .unwrap();
    assert_eq!(want.len(), 12_000);
    for (bits, tol) in [(8u16, 0.01f32), (16, 1e-4), (24, 1e-5), (32, 1e-5)] {
        let p = dir.path().join(format!("i{bits}.wav"));
        write_int(&p, 16_000, 1, bits, &frames);
        let got = wav::read_mono_24k(&p).unwrap();
        assert_eq!(got.len(), want.len(), "{bits}-bit length");
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(max < tol, "{bits}-bit differs from float by {max}");
    }
}

#[test]
fn float_round_trip_at_24k_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.wav");
    let x = sine(24_000, 0.2, 300.0, 0.9);
    wav::write_mono_f32(&p, &x, 24_000).unwrap();
    assert_eq!(wav::read_mono_24k(&p).unwrap(), x);
}

#[test]
fn bad_files_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.wav");
    let e = wav::read_mono_24k(&missing).unwrap_err();
    assert!(matches!(e, HalError::Io { .. }), "{e}");
    assert!(e.to_string().contains("nope.wav"), "{e}");

    let text = dir.path().join("text.wav");
    std::fs::write(&text, b"this is not audio at all, just some text").unwrap();
    let e = wav::read_mono_24k(&text).unwrap_err().to_string();
    assert!(e.contains("not a valid WAV"), "{e}");

    let good = dir.path().join("good.wav");
    wav::write_mono_f32(&good, &sine(24_000, 0.5, 300.0, 0.5), 24_000).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.wav");
    std::fs::write(&cut, &bytes[..bytes.len() / 2 + 1]).unwrap();
    let e = wav::read_mono_24k(&cut).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");

    let e = wav::write_mono_f32(&dir.path().join("no/such/dir/x.wav"), &[0.0], 24_000)
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.wav"), "{e}");
}

fn write_float(path: &Path, rate: u32, samples: &[f32]) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

#[test]
fn non_finite_float_samples_are_refused_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let p = dir.path().join("nan.wav");
        let mut v = vec![0.1f32; 48_000];
        v[24_001] = bad; // frame 12000, right channel: 0.5 s at 24 kHz
        write_float(&p, 24_000, &v);
        let err = wav::read_mono_24k(&p).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, HalError::Wav { .. }), "{msg}");
        assert!(
            msg.contains("nan.wav") && msg.contains("sample 12000 (channel 1, at 0.500 s)"),
            "{msg}"
        );
    }
}

#[test]
fn header_rates_outside_audio_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for rate in [1, 3_999, 384_001, 10_000_000] {
        let p = dir.path().join("r.wav");
        write_float(&p, rate, &[0.0; 8]);
        let msg = wav::read_interleaved(&p).unwrap_err().to_string();
        assert!(
            msg.contains(&format!("{rate} Hz")) && msg.contains("r.wav"),
            "{msg}"
        );
    }
    for rate in [wav::MIN_FILE_RATE, wav::MAX_FILE_RATE] {
        let p = dir.path().join("ok.wav");
        write_float(&p, rate, &[0.0; 8]);
        wav::read_interleaved(&p).unwrap();
    }
}

#[test]
fn the_resampler_refuses_non_finite_input_instead_of_panicking() {
    let mut v = vec![0.0f32; 4800];
    v[100] = f32::NAN;
    let err = moshid_hal::resample::resample_clip(&v, 48_000, 24_000).unwrap_err();
    assert!(err.to_string().contains("sample 100 is NaN"), "{err}");
    let mut rs = moshid_hal::resample::StreamResampler::new(48_000, MODEL_RATE).unwrap();
    assert!(rs.push(&v).is_err());
    // The stream is still usable after the refusal.
    rs.push(&[0.0; 4800]).unwrap();
    assert!(rs.available() > 0);
}
