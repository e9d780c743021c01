//! Agreement with the committed reference fixtures (`models/tests/fixtures`, made by the
//! PyTorch `moshi` package), on any device and dtype: what `moshid parity` prints on a GPU
//! and what the half-precision tests check on the CPU, by one code path.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::lm::{LmConfig, LmGen, LmModel, Sampling};
use crate::mimi::{Mimi, MimiConfig};

/// Errors reading the fixtures or running the models on them.
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    /// A fixture file is missing or unreadable.
    #[error("fixture {}: {what}", path.display())]
    Fixture {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Mimi failed.
    #[error(transparent)]
    Mimi(#[from] crate::mimi::MimiError),
    /// The LM failed.
    #[error(transparent)]
    Lm(#[from] crate::lm::LmError),
}

/// Mimi against the reference: streaming encode (32 codebooks) and decode (32 and 8).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MimiParity {
    /// Compute dtype (`f32`, `f16`, `bf16`).
    pub dtype: String,
    /// Codes compared (frames x 32).
    pub codes: usize,
    /// Share of all codes equal to the reference's.
    pub code_agreement: f64,
    /// Share equal where the reference had no near-tie at or above the level.
    pub code_agreement_masked: f64,
    /// Share of semantic (level 0) codes equal, near-ties masked.
    pub semantic_agreement_masked: f64,
    /// Decode of the reference codes vs the reference's audio, 32 codebooks, dB.
    pub decode_snr_db_32: f64,
    /// The same with 8 codebooks (what Moshi uses), dB.
    pub decode_snr_db_8: f64,
    /// Mean streaming encode time per frame, ms (fixture-sized model, includes warm-up).
    pub encode_ms_per_frame: f64,
    /// Mean streaming decode time per frame (8 codebooks), ms.
    pub decode_ms_per_frame: f64,
}

/// The LM's greedy run against the reference's `LMGen` (candle-layout fixture, full window).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LmParity {
    /// Compute dtype.
    pub dtype: String,
    /// Steps run.
    pub steps: usize,
    /// First step whose sampled tokens differ from the reference (`None`: none differ).
    /// After it the inputs differ too, so later tokens and logits are not comparable.
    pub first_divergence: Option<usize>,
    /// Share of steps with the reference's text token.
    pub text_agreement: f64,
    /// Share of audio tokens (8 per step) equal to the reference's.
    pub audio_agreement: f64,
    /// Max |text logit - reference| over the steps before the first divergence.
    pub max_text_logit_err: f64,
    /// Max |audio logit - reference| over the same steps.
    pub max_audio_logit_err: f64,
    /// Range (max - min) of the reference's text logits over those steps, for scale.
    pub text_logit_range: f64,
    /// Range of the reference's audio logits over those steps.
    pub audio_logit_range: f64,
    /// Mean step time, ms (fixture-sized model).
    pub step_ms: f64,
}

fn fixture_err(path: &Path, what: impl ToString) -> ParityError {
    ParityError::Fixture {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

fn load_tensors(path: &Path) -> Result<std::collections::HashMap<String, Tensor>, ParityError> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| fixture_err(path, e))
}

fn get<'a>(
    t: &'a std::collections::HashMap<String, Tensor>,
    name: &str,
    path: &Path,
) -> Result<&'a Tensor, ParityError> {
    t.get(name)
        .ok_or_else(|| fixture_err(path, format!("no tensor `{name}`")))
}

/// Signal-to-noise ratio of `ours` against `reference`, dB; minus infinity when `ours` holds
/// a NaN or an infinity (a broken cast must not read as a perfect match).
pub fn snr_db(reference: &[f32], ours: &[f32]) -> f64 {
    let (mut s, mut n) = (0f64, 0f64);
    for (a, b) in reference.iter().zip(ours) {
        s += (*a as f64).powi(2);
        n += (*a as f64 - *b as f64).powi(2);
    }
    if !n.is_finite() || reference.len() != ours.len() {
        return f64::NEG_INFINITY;
    }
    10.0 * (s / n.max(1e-300)).log10()
}

/// A code is masked when it, or a level above it in its quantizer group, was a near-tie
/// in the reference (a flip there legitimately changes every later residual).
fn masked(gap: &[f32], level: usize) -> bool {
    const NEAR_TIE: f32 = 1e-4;
    let first = usize::from(level != 0);
    gap[first..=level].iter().any(|&g| g < NEAR_TIE)
}

fn dtype_name(d: DType) -> String {
    format!("{d:?}").to_lowercase()
}

/// Mimi's fixture (`dir/mimi`) on `device` in `dtype` against the reference.
pub fn mimi(dir: &Path, device: &Device, dtype: DType) -> Result<MimiParity, ParityError> {
    let d = dir.join("mimi");
    let cfg = MimiConfig::from_json_file(&d.join("mimi_config.json"))?;
    let weights = d.join("mimi_small.safetensors");
    let rp = d.join("reference.safetensors");
    let r = load_tensors(&rp)?;
    let ce = |e: candle_core::Error| fixture_err(&rp, e);
    let pcm: Vec<f32> = get(&r, "pcm", &rp)?.to_vec1().map_err(ce)?;
    let ref_codes: Vec<Vec<i64>> = get(&r, "codes", &rp)?.to_vec2().map_err(ce)?;
    let gap: Vec<Vec<f32>> = get(&r, "gap", &rp)?.to_vec2().map_err(ce)?;

    let mut m = Mimi::load_as(&weights, &cfg, 32, device, dtype)?;
    let fs = m.frame_samples();
    let t = Instant::now();
    let mut ours = Vec::with_capacity(ref_codes.len());
    for f in pcm.chunks(fs) {
        let mut c = vec![0u32; 32];
        m.encode_step(f, &mut c)?;
        ours.push(c);
    }
    let encode_ms = t.elapsed().as_secs_f64() * 1e3 / ours.len().max(1) as f64;
    let (mut total, mut same, mut unmasked, mut same_unmasked) = (0usize, 0, 0, 0);
    let (mut sem, mut sem_same) = (0usize, 0);
    for ((o, c), g) in ours.iter().zip(&ref_codes).zip(&gap) {
        for l in 0..32 {
            let eq = i64::from(o[l]) == c[l];
            total += 1;
            same += usize::from(eq);
            if !masked(g, l) {
                unmasked += 1;
                same_unmasked += usize::from(eq);
                if l == 0 {
                    sem += 1;
                    sem_same += usize::from(eq);
                }
            }
        }
    }
    let codes: Vec<Vec<u32>> = ref_codes
        .iter()
        .map(|f| f.iter().map(|&c| c as u32).collect())
        .collect();
    let mut snr = [0f64; 2];
    let mut decode_ms = 0.0;
    for (i, k) in [32usize, 8].into_iter().enumerate() {
        let mut m = Mimi::load_as(&weights, &cfg, k, device, dtype)?;
        let mut out = vec![0f32; codes.len() * fs];
        let t = Instant::now();
        for (c, o) in codes.iter().zip(out.chunks_mut(fs)) {
            m.decode_step(&c[..k], o)?;
        }
        decode_ms = t.elapsed().as_secs_f64() * 1e3 / codes.len().max(1) as f64;
        let want: Vec<f32> = get(&r, &format!("decoded{k}"), &rp)?
            .to_vec1()
            .map_err(ce)?;
        snr[i] = snr_db(&want, &out);
    }
    let ratio = |a: usize, b: usize| a as f64 / b.max(1) as f64;
    Ok(MimiParity {
        dtype: dtype_name(dtype),
        codes: total,
        code_agreement: ratio(same, total),
        code_agreement_masked: ratio(same_unmasked, unmasked),
        semantic_agreement_masked: ratio(sem_same, sem),
        decode_snr_db_32: snr[0],
        decode_snr_db_8: snr[1],
        encode_ms_per_frame: encode_ms,
        decode_ms_per_frame: decode_ms,
    })
}

/// The reference's tokens for one run of `expected.json`.
struct Expected {
    user: Vec<[u32; 8]>,
    context: usize,
    text: Vec<u32>,
    audio: Vec<[u32; 8]>,
}

fn expected(path: &Path, tag: &str) -> Result<Expected, ParityError> {
    let s = std::fs::read_to_string(path).map_err(|e| fixture_err(path, e))?;
    let e: serde_json::Value = serde_json::from_str(&s).map_err(|e| fixture_err(path, e))?;
    let bad = |what: &str| fixture_err(path, what);
    let rows: Vec<Vec<u32>> =
        serde_json::from_value(e["user_codes"].clone()).map_err(|_| bad("user_codes"))?;
    let steps = rows.first().map_or(0, Vec::len);
    if rows.len() != 8 || rows.iter().any(|r| r.len() != steps) {
        return Err(bad("user_codes must be 8 rows of equal length"));
    }
    let x = &e[tag];
    Ok(Expected {
        user: (0..steps)
            .map(|t| std::array::from_fn(|k| rows[k][t]))
            .collect(),
        context: x["context"].as_u64().ok_or_else(|| bad("context"))? as usize,
        text: serde_json::from_value(x["text"].clone()).map_err(|_| bad("text"))?,
        audio: serde_json::from_value(x["audio"].clone()).map_err(|_| bad("audio"))?,
    })
}

fn range(xs: &[f32]) -> f64 {
    let (lo, hi) = xs
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    (hi - lo).max(0.0) as f64
}

/// Max |a - b|; infinity where a value is not finite (`f32::max` would skip a NaN).
fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).fold(0.0, |m: f64, (x, y)| {
        let d = (x - y).abs() as f64;
        if d.is_finite() {
            m.max(d)
        } else {
            f64::INFINITY
        }
    })
}

/// The LM fixture (`dir/lm`, candle layout) on `device` in `dtype`, greedy, against the
/// reference's `LMGen` run with the full window.
pub fn lm(dir: &Path, device: &Device, dtype: DType) -> Result<LmParity, ParityError> {
    let d = dir.join("lm");
    let cfg = LmConfig::from_json_file(&d.join("config.json"))?;
    let e = expected(&d.join("expected.json"), "full")?;
    let lp = d.join("expected_logits.safetensors");
    let logits = load_tensors(&lp)?;
    let flat = |n: &str| -> Result<Vec<f32>, ParityError> {
        get(&logits, n, &lp)?
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|er| fixture_err(&lp, er))
    };
    let (want_text, want_audio) = (flat("full.text_logits")?, flat("full.dep_logits")?);
    let model = LmModel::load(
        &d.join("model_candle.safetensors"),
        &cfg,
        Some(dtype),
        device,
    )?;
    let sampling = Sampling {
        greedy: true,
        ..Sampling::default()
    };
    let mut gen = LmGen::new(model, sampling, e.context)?;
    let (tn, an) = (cfg.text_card, cfg.dep_q * cfg.card);
    let (mut text, mut audio) = (Vec::new(), Vec::new());
    let (mut tl, mut al) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    for c in &e.user {
        gen.step(c)?;
        let (t, a) = gen.last_sampled();
        text.push(t);
        audio.push(a);
        tl.extend_from_slice(gen.last_text_logits());
        al.extend_from_slice(gen.last_audio_logits());
    }
    let steps = e.user.len();
    let step_ms = t0.elapsed().as_secs_f64() * 1e3 / steps.max(1) as f64;
    let first_divergence =
        (0..steps).find(|&t| text.get(t) != e.text.get(t) || audio.get(t) != e.audio.get(t));
    let n = first_divergence.unwrap_or(steps);
    if want_text.len() < n * tn || want_audio.len() < n * an || tl.len() < n * tn {
        return Err(fixture_err(&lp, "fewer logits than steps"));
    }
    let same_text = text.iter().zip(&e.text).filter(|(a, b)| a == b).count();
    let same_audio: usize = audio
        .iter()
        .zip(&e.audio)
        .map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x == y).count())
        .sum();
    Ok(LmParity {
        dtype: dtype_name(dtype),
        steps,
        first_divergence,
        text_agreement: same_text as f64 / steps.max(1) as f64,
        audio_agreement: same_audio as f64 / (8 * steps).max(1) as f64,
        max_text_logit_err: max_abs_diff(&tl[..n * tn], &want_text[..n * tn]),
        max_audio_logit_err: max_abs_diff(&al[..n * an], &want_audio[..n * an]),
        text_logit_range: range(&want_text[..n * tn]),
        audio_logit_range: range(&want_audio[..n * an]),
        step_ms,
    })
}
