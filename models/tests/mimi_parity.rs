//! Mimi against the reference (PyPI `moshi` 0.2.13) on the committed fixtures, made by
//! `models/tests/fixtures/gen_mimi.py` (reduced config, same architecture).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use moshid_models::mimi::{Mimi, MimiConfig};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mimi")
}

fn config() -> MimiConfig {
    MimiConfig::from_json_file(&fixtures().join("mimi_config.json")).expect("fixture config")
}

fn load(k: usize) -> Mimi {
    Mimi::load(
        &fixtures().join("mimi_small.safetensors"),
        &config(),
        k,
        &Device::Cpu,
    )
    .expect("fixture weights load")
}

struct Reference {
    pcm: Vec<f32>,
    codes: Vec<Vec<u32>>,
    gap: Vec<Vec<f32>>,
    decoded: HashMap<usize, Vec<f32>>,
}

fn reference() -> Reference {
    let t = candle_core::safetensors::load(fixtures().join("reference.safetensors"), &Device::Cpu)
        .expect("reference fixture");
    let get = |n: &str| -> &Tensor { t.get(n).unwrap_or_else(|| panic!("fixture lacks {n}")) };
    let codes: Vec<Vec<i64>> = get("codes").to_vec2().unwrap();
    Reference {
        pcm: get("pcm").to_vec1().unwrap(),
        codes: codes
            .into_iter()
            .map(|f| f.into_iter().map(|c| c as u32).collect())
            .collect(),
        gap: get("gap").to_vec2().unwrap(),
        decoded: [32, 8]
            .into_iter()
            .map(|k| (k, get(&format!("decoded{k}")).to_vec1().unwrap()))
            .collect(),
    }
}

/// A code is masked when it, or a level above it in the same quantizer group, was a near-tie
/// in the reference (a flip there legitimately changes every later residual).
fn masked(gap: &[f32], level: usize) -> bool {
    const NEAR_TIE: f32 = 1e-4;
    let first = if level == 0 { 0 } else { 1 };
    gap[first..=level].iter().any(|&g| g < NEAR_TIE)
}

fn snr_db(reference: &[f32], ours: &[f32]) -> f64 {
    assert_eq!(reference.len(), ours.len());
    let (mut s, mut n) = (0f64, 0f64);
    for (a, b) in reference.iter().zip(ours) {
        s += (*a as f64).powi(2);
        n += (*a as f64 - *b as f64).powi(2);
    }
    10.0 * (s / n.max(1e-300)).log10()
}

fn encode_streaming(m: &mut Mimi, pcm: &[f32]) -> Vec<Vec<u32>> {
    let k = m.num_codebooks();
    pcm.chunks(m.frame_samples())
        .map(|f| {
            let mut c = vec![0u32; k];
            m.encode_step(f, &mut c).expect("encode_step");
            c
        })
        .collect()
}

#[test]
fn streaming_codes_match_reference() {
    let r = reference();
    let mut m = load(32);
    let ours = encode_streaming(&mut m, &r.pcm);
    assert_eq!(ours.len(), r.codes.len());
    let (mut total, mut same, mut unmasked, mut same_unmasked) = (0, 0, 0, 0);
    for ((o, c), g) in ours.iter().zip(&r.codes).zip(&r.gap) {
        for l in 0..32 {
            total += 1;
            same += usize::from(o[l] == c[l]);
            if !masked(g, l) {
                unmasked += 1;
                same_unmasked += usize::from(o[l] == c[l]);
            }
        }
    }
    let all = same as f64 / total as f64;
    let agree = same_unmasked as f64 / unmasked as f64;
    println!(
        "code agreement with the reference: {:.4} of {total} codes ({:.4} of {unmasked} with near-ties masked)",
        all, agree
    );
    assert!(agree >= 0.995, "agreement {agree} < 0.995");
    // Level 0 (semantic) is the code Moshi leans on most: must agree wherever not a near-tie.
    for (f, (o, c)) in ours.iter().zip(&r.codes).enumerate() {
        if !masked(&r.gap[f], 0) {
            assert_eq!(o[0], c[0], "frame {f} semantic code");
        }
    }
}

#[test]
fn streaming_decode_matches_reference() {
    let r = reference();
    for k in [32usize, 8] {
        let mut m = load(k);
        let mut out = vec![0f32; r.codes.len() * m.frame_samples()];
        for (codes, pcm) in r.codes.iter().zip(out.chunks_mut(1920)) {
            m.decode_step(&codes[..k], pcm).expect("decode_step");
        }
        let snr = snr_db(&r.decoded[&k], &out);
        println!("decode SNR vs reference, {k} codebooks: {snr:.1} dB");
        assert!(snr >= 80.0, "{k} codebooks: SNR {snr:.1} dB < 80 dB");
    }
}

#[test]
fn batch_equals_streaming() {
    let r = reference();
    let mut m = load(8);
    let streamed = encode_streaming(&mut m, &r.pcm);
    let batch = m.encode(&r.pcm).expect("encode");
    assert_eq!(batch.len(), streamed.len());
    let differ: usize = batch
        .iter()
        .zip(&streamed)
        .map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x != y).count())
        .sum();
    println!(
        "batch vs streaming: {differ} of {} codes differ",
        8 * batch.len()
    );
    assert_eq!(differ, 0, "batch encode differs from streaming");

    // Decode: fresh state per call, so decoding twice gives the same audio, and the batch
    // decode equals frame-by-frame decoding.
    m.reset();
    let mut streamed_pcm = vec![0f32; streamed.len() * 1920];
    for (c, pcm) in streamed.iter().zip(streamed_pcm.chunks_mut(1920)) {
        m.decode_step(c, pcm).expect("decode_step");
    }
    let batch_pcm = m.decode(&streamed).expect("decode");
    let snr = snr_db(&streamed_pcm, &batch_pcm);
    println!("batch vs streaming decode SNR: {snr:.1} dB");
    assert!(
        snr >= 100.0,
        "batch decode differs from streaming: {snr:.1} dB"
    );

    // reset() really restarts the stream.
    m.reset();
    let again = encode_streaming(&mut m, &r.pcm);
    assert_eq!(again, streamed);
}

#[test]
fn last_partial_frame_is_zero_padded() {
    let r = reference();
    let m = load(8);
    // Cut the clip mid-frame: batch encode pads with zeros, as the reference input was.
    let cut = r.pcm.len() - 1000;
    let codes = m.encode(&r.pcm[..cut]).expect("encode");
    assert_eq!(codes.len(), r.codes.len());
    let mut padded = r.pcm[..cut].to_vec();
    padded.resize(r.pcm.len(), 0.0);
    assert_eq!(codes, m.encode(&padded).expect("encode"));
}
