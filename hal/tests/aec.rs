//! Echo canceller: ERLE on speech echoed through a synthetic room, and near-end loss.

mod common;
use common::*;
use moshid_hal::aec::{erle_db, AecOptions, EchoCanceller};
use moshid_hal::FRAME_SAMPLES;

fn run(far: &[f32], mic: &[f32], opts: &AecOptions) -> (Vec<f32>, EchoCanceller) {
    let mut aec = EchoCanceller::new(opts).unwrap();
    let n = mic.len() / FRAME_SAMPLES * FRAME_SAMPLES;
    let mut out = mic[..n].to_vec();
    for (f, o) in far[..n]
        .chunks_exact(FRAME_SAMPLES)
        .zip(out.chunks_exact_mut(FRAME_SAMPLES))
    {
        aec.process(f, o).unwrap();
    }
    (out, aec)
}

#[test]
fn speech_echo_through_a_room_is_cancelled_by_30_db() {
    let speech = clip("far_speech_16k.wav");
    // 13.8 s of speech; the echo path: 12 ms of air, 250 ms RT60, -6 dB loss.
    let h = room_ir(12.0, 250.0, 150.0, 7);
    let far: Vec<f32> = speech.iter().map(|v| v * 0.5).collect();
    let mic: Vec<f32> = convolve(&far, &h).iter().map(|v| v * 0.5).collect();
    let (out, aec) = run(&far, &mic, &AecOptions::default());
    let steady = erle_db(&mic, &out, 24_000 * 3);
    let m = aec.metrics().expect("AEC3 reports metrics");
    eprintln!("steady-state ERLE {steady:.1} dB; AEC3 says {m:?}");
    assert!(steady >= 30.0, "steady-state ERLE {steady:.1} dB < 30 dB");
    assert!(
        (5..=40).contains(&m.delay_ms),
        "delay estimate {} ms for a 12 ms echo path",
        m.delay_ms
    );
}

#[test]
fn near_end_speech_alone_passes_with_at_most_1_db_loss() {
    let near = clip("near_speech_16k.wav");
    let far = vec![0.0; near.len()];
    let (out, _) = run(&far, &near, &AecOptions::default());
    let loss = erle_db(&near, &out, 0);
    eprintln!("near-end loss {loss:.2} dB");
    assert!(loss.abs() <= 1.0, "near-end level changed by {loss:.2} dB");
    // Content, not just level: the output is the input, high-passed and delayed by AEC3's
    // one 10 ms block plus the 24 <-> 32 kHz resampling around it (about 18 ms in all).
    let (lag, c) = (0..960)
        .map(|lag| (lag, correlation(&near[2400..], &out[2400 + lag..])))
        .fold((0, f32::MIN), |b, x| if x.1 > b.1 { x } else { b });
    eprintln!("near-end lag {lag} samples, correlation {c:.3}");
    assert!(c > 0.95, "near-end correlation {c} at lag {lag}");
    assert!(lag <= 480, "AEC adds {lag} samples of latency (> 20 ms)");
}

#[test]
fn mismatched_lengths_are_an_error_not_a_panic() {
    let mut aec = EchoCanceller::new(&AecOptions::default()).unwrap();
    let mut near = vec![0.0; 480];
    let e = aec.process(&[0.0; 240], &mut near).unwrap_err().to_string();
    assert!(e.contains("same length"), "{e}");
}

#[test]
fn noise_suppression_option_lowers_stationary_noise_in_speech_pauses() {
    let near = clip("near_speech_16k.wav");
    let hiss: Vec<f32> = noise(near.len(), 5).iter().map(|v| v * 0.01).collect();
    let mic: Vec<f32> = near.iter().zip(&hiss).map(|(a, b)| a + b).collect();
    let far = vec![0.0; mic.len()];
    let (plain, _) = run(&far, &mic, &AecOptions::default());
    let ns_opts = AecOptions {
        noise_suppression: true,
        ..AecOptions::default()
    };
    let (ns, _) = run(&far, &mic, &ns_opts);
    // Pauses: 10 ms blocks where the clean speech is near silent, after 1 s of adaptation.
    // The outputs lag the input by the canceller's latency; find it on the plain run.
    let lag_of = |out: &[f32]| {
        (0..960)
            .map(|l| (l, correlation(&near, &out[l..])))
            .fold((0, f32::MIN), |b, x| if x.1 > b.1 { x } else { b })
            .0
    };
    let (lag, lag_ns) = (lag_of(&plain), lag_of(&ns));
    let (mut p_plain, mut p_ns, mut blocks) = (0f64, 0f64, 0);
    for ((s, a), b) in near
        .chunks_exact(240)
        .zip(plain[lag..].chunks_exact(240))
        .zip(ns[lag_ns..].chunks_exact(240))
        .skip(100)
    {
        if rms(s) < 1e-3 {
            blocks += 1;
            p_plain += a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
            p_ns += b.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
        }
    }
    assert!(p_plain > 0.0, "the clip has pauses");
    let gain = 10.0 * (p_plain / p_ns.max(1e-20)).log10();
    eprintln!("noise suppression: {gain:.1} dB less noise in {blocks} pause blocks (lags {lag}, {lag_ns})");
    assert!(gain >= 4.0, "NS removed only {gain:.1} dB of noise");
}
