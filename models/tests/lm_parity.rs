//! Parity of the LM against the reference package's `LMGen` (greedy, f32), on the small
//! fixture model written by `tests/fixtures/gen_lm.py` in both release layouts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use moshid_models::lm::{quantize_file, LmConfig, LmGen, LmModel, QuantType, Sampling};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lm")
}

fn cfg() -> LmConfig {
    LmConfig::from_json_file(&fixtures().join("config.json")).unwrap()
}

/// The fixture model in `file` (one of its layouts), f32 on the CPU.
fn load(file: &str) -> LmModel {
    LmModel::load(&fixtures().join(file), &cfg(), None, &Device::Cpu).unwrap()
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
        .unwrap()
}

/// A fresh temporary path ending in `name`, removed when the returned value drops.
fn tmp(name: &str) -> tempfile::TempPath {
    tempfile::Builder::new()
        .prefix("moshid-lm-test-")
        .suffix(&format!("-{name}"))
        .tempfile()
        .expect("temporary file")
        .into_temp_path()
}

fn user_codes(e: &serde_json::Value) -> Vec<[u32; 8]> {
    let rows: Vec<Vec<u32>> = serde_json::from_value(e["user_codes"].clone()).unwrap();
    (0..rows[0].len())
        .map(|t| std::array::from_fn(|k| rows[k][t]))
        .collect()
}

struct Run {
    text: Vec<u32>,
    audio: Vec<[u32; 8]>,
    out: Vec<Option<(u32, [u32; 8])>>,
    text_logits: Vec<f32>,
    dep_logits: Vec<f32>,
}

fn run(model: &LmModel, context: usize, codes: &[[u32; 8]]) -> Run {
    let sampling = Sampling {
        greedy: true,
        ..Sampling::default()
    };
    let mut gen = LmGen::new(model.clone(), sampling, context).unwrap();
    let mut r = Run {
        text: vec![],
        audio: vec![],
        out: vec![],
        text_logits: vec![],
        dep_logits: vec![],
    };
    for c in codes {
        let out = gen.step(c).unwrap();
        let (t, a) = gen.last_sampled();
        r.text.push(t);
        r.audio.push(a);
        r.out.push(out.map(|o| (o.text, o.audio)));
        r.text_logits.extend_from_slice(gen.last_text_logits());
        r.dep_logits.extend_from_slice(gen.last_audio_logits());
    }
    r
}

/// Sampled text, sampled audio, re-aligned output per step.
type Tokens = (Vec<u32>, Vec<[u32; 8]>, Vec<Option<(u32, [u32; 8])>>);

fn expected_run(e: &serde_json::Value, tag: &str) -> Tokens {
    let x = &e[tag];
    let text: Vec<u32> = serde_json::from_value(x["text"].clone()).unwrap();
    let audio: Vec<[u32; 8]> = serde_json::from_value(x["audio"].clone()).unwrap();
    let out = x["out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            if o.is_null() {
                None
            } else {
                Some((
                    o["text"].as_u64().unwrap() as u32,
                    serde_json::from_value::<[u32; 8]>(o["audio"].clone()).unwrap(),
                ))
            }
        })
        .collect();
    (text, audio, out)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_against_reference(model: &LmModel, tag: &str) -> Run {
    let e = expected();
    let codes = user_codes(&e);
    let context = e[tag]["context"].as_u64().unwrap() as usize;
    let r = run(model, context, &codes);
    let (text, audio, out) = expected_run(&e, tag);
    for t in 0..codes.len() {
        assert_eq!(r.text[t], text[t], "{tag}: text token differs at step {t}");
        assert_eq!(
            r.audio[t], audio[t],
            "{tag}: audio tokens differ at step {t}"
        );
        assert_eq!(
            r.out[t], out[t],
            "{tag}: re-aligned output differs at step {t}"
        );
    }
    let logits = candle_core::safetensors::load(
        fixtures().join("expected_logits.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let flat = |n: &str| logits[n].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let dt = max_abs_diff(&r.text_logits, &flat(&format!("{tag}.text_logits")));
    let da = max_abs_diff(&r.dep_logits, &flat(&format!("{tag}.dep_logits")));
    eprintln!(
        "{tag}: all {} steps identical; max |logit diff| text {dt:.2e}, audio {da:.2e}",
        codes.len()
    );
    assert!(
        dt < 1e-4 && da < 1e-4,
        "{tag}: logits differ from the reference: text {dt}, audio {da}"
    );
    r
}

#[test]
fn greedy_matches_reference_in_both_layouts() {
    let pt = load("model_pytorch.safetensors");
    let cd = load("model_candle.safetensors");
    assert_eq!(pt.layout(), moshid_models::lm::Layout::PyTorch);
    assert_eq!(cd.layout(), moshid_models::lm::Layout::Candle);
    let a = check_against_reference(&pt, "full");
    let b = check_against_reference(&cd, "full");
    // Same weights under two naming schemes: bit-identical computation.
    assert_eq!(a.text_logits, b.text_logits);
    assert_eq!(a.dep_logits, b.dep_logits);
}

#[test]
fn rotating_kv_cache_matches_reference_past_the_context() {
    // 40 steps through a 12-step window: the ring wraps three times.
    let m = load("model_candle.safetensors");
    check_against_reference(&m, "short");
}

#[test]
fn sampling_is_seeded_and_top_k_1_is_greedy() {
    let m = load("model_candle.safetensors");
    let codes = user_codes(&expected());
    let tokens = |s: Sampling| {
        let mut g = LmGen::new(m.clone(), s, 3000).unwrap();
        codes
            .iter()
            .map(|c| {
                g.step(c).unwrap();
                g.last_sampled()
            })
            .collect::<Vec<_>>()
    };
    let s = Sampling {
        temp_text: 1.0,
        temp_audio: 1.0,
        ..Sampling::default()
    };
    let a = tokens(s);
    assert_eq!(a, tokens(s), "same seed must give the same tokens");
    let b = tokens(Sampling {
        seed: s.seed + 1,
        ..s
    });
    assert_ne!(a, b, "another seed should give other tokens");
    let greedy = tokens(Sampling { greedy: true, ..s });
    assert_ne!(
        a, greedy,
        "sampling at temperature 1 should leave the argmax path"
    );
    assert_eq!(
        tokens(Sampling { top_k: 1, ..s }),
        greedy,
        "top-k 1 is argmax"
    );
}

#[test]
fn reset_restarts_the_conversation() {
    let m = load("model_candle.safetensors");
    let codes = user_codes(&expected());
    let mut g = LmGen::new(m, Sampling::default(), 3000).unwrap();
    let mut first = vec![];
    for c in &codes[..10] {
        g.step(c).unwrap();
        first.push(g.last_sampled());
    }
    g.reset();
    for (t, c) in codes[..10].iter().enumerate() {
        g.step(c).unwrap();
        assert_eq!(g.last_sampled(), first[t], "step {t} after reset");
    }
}

#[test]
fn quantized_gguf_runs_and_reports_agreement() {
    let c = cfg();
    let e = expected();
    let codes = user_codes(&e);
    let f32m = load("model_candle.safetensors");
    let reference = run(&f32m, 3000, &codes);
    for (ty, name) in [
        (QuantType::Q8_0, "q8_0"),
        (QuantType::Q4_0, "q4_0"),
        (QuantType::Q4K, "q4k"),
    ] {
        for layout in ["candle", "pytorch"] {
            let out = tmp(&format!("{layout}.{name}.gguf"));
            let rep = quantize_file(
                &fixtures().join(format!("model_{layout}.safetensors")),
                &out,
                ty,
                &c,
            )
            .unwrap();
            assert!(rep.quantized + rep.fallback > 0);
            // The configuration travels in the file: no side JSON needed to load it.
            assert_eq!(LmConfig::stored_in(&out).unwrap().as_ref(), Some(&c));
            let m = LmModel::load(&out, &c, None, &Device::Cpu).unwrap();
            assert!(m.is_gguf());
            let r = run(&m, 3000, &codes);
            let n = codes.len() as f32;
            let text_agree = r
                .text
                .iter()
                .zip(&reference.text)
                .filter(|(a, b)| a == b)
                .count() as f32
                / n;
            let audio_agree = r
                .audio
                .iter()
                .zip(&reference.audio)
                .flat_map(|(a, b)| a.iter().zip(b))
                .filter(|(a, b)| a == b)
                .count() as f32
                / (8.0 * n);
            // First step: same inputs for both, so this isolates the weight error.
            let card = c.text_card;
            let d0 = max_abs_diff(&r.text_logits[..card], &reference.text_logits[..card]);
            let range = reference.text_logits[..card]
                .iter()
                .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
                - reference.text_logits[..card]
                    .iter()
                    .fold(f32::INFINITY, |a, &b| a.min(b));
            eprintln!(
                "{name} ({layout} layout, {} quantized, {} fallback): agreement with f32 text {:.0}%, audio {:.0}%; step-0 text logit error {:.3} of range {:.2}",
                rep.quantized, rep.fallback, 100.0 * text_agree, 100.0 * audio_agree, d0, range
            );
            let tol = if ty == QuantType::Q8_0 { 0.02 } else { 0.15 };
            assert!(
                d0 < tol * range,
                "{name}: step-0 logits too far from f32 ({d0} vs range {range})"
            );
            let _ = std::fs::remove_file(&out);
        }
    }
}

fn rewrite_without(name: &str, replace: Option<Tensor>) -> tempfile::TempPath {
    let mut map: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixtures().join("model_pytorch.safetensors"), &Device::Cpu)
            .unwrap();
    map.remove(name);
    if let Some(t) = replace {
        map.insert(name.to_string(), t);
    }
    let p = tmp(&format!("broken-{}.safetensors", name.replace('.', "_")));
    candle_core::safetensors::save(&map, &p).unwrap();
    p
}

#[test]
fn missing_or_misshaped_tensors_are_named() {
    let c = cfg();
    let p = rewrite_without("transformer.layers.1.gating.linear_out.weight", None);
    let err = LmModel::load(&p, &c, None, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`transformer.layers.1.gating.linear_out.weight` is missing"),
        "{err}"
    );
    let bad = Tensor::zeros((64, 100), candle_core::DType::F32, &Device::Cpu).unwrap();
    let p = rewrite_without("depformer.layers.0.self_attn.in_proj_weight", Some(bad));
    let err = LmModel::load(&p, &c, None, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`depformer.layers.0.self_attn.in_proj_weight` has shape [64, 100]")
            && err.contains("[768, 32]"),
        "{err}"
    );
    // A file that is not an LM at all.
    let err = LmModel::load(&fixtures().join("config.json"), &c, None, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn wrong_config_is_refused_with_the_key() {
    let text = std::fs::read_to_string(fixtures().join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["gating"] = "gelu".into();
    let err = LmConfig::from_json_str(&v.to_string(), "test.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gating `gelu`") && err.contains("test.json"),
        "{err}"
    );
    let mut c = cfg();
    c.num_heads = 0;
    let err = LmModel::load(
        &fixtures().join("model_candle.safetensors"),
        &c,
        None,
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("num_heads 0"), "{err}");
}
