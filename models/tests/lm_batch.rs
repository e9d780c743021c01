//! A conversation in a batch gives what it gives alone: greedy tokens identical, logits
//! within 1e-4 (bit-identical on the q8_0/q4_0 CPU kernels), with slots joining at steps 0,
//! 5 and 17, one leaving and re-joining, and a slot masked for a step.

use std::path::{Path, PathBuf};

use candle_core::Device;
use moshid_models::lm::{
    cpu_kernel, quantize_file, LmBatch, LmConfig, LmGen, LmModel, QuantType, Sampling, SlotId,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lm")
}

fn cfg() -> LmConfig {
    LmConfig::from_json_file(&fixtures().join("config.json")).unwrap()
}

/// The fixture model in f32 on the CPU.
fn f32_model() -> LmModel {
    let path = fixtures().join("model_candle.safetensors");
    LmModel::load(&path, &cfg(), None, &Device::Cpu).unwrap()
}

fn greedy() -> Sampling {
    Sampling {
        greedy: true,
        ..Sampling::default()
    }
}

/// The fixture's 40 user frames, made different per conversation `c`.
fn codes(c: usize) -> Vec<[u32; 8]> {
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let rows: Vec<Vec<u32>> = serde_json::from_value(e["user_codes"].clone()).unwrap();
    (0..rows[0].len())
        .map(|t| std::array::from_fn(|k| (rows[k][t] + 37 * c as u32) % 256))
        .collect()
}

/// What one step of one conversation produced.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    sampled: (u32, [u32; 8]),
    text_logits: Vec<f32>,
    audio_logits: Vec<f32>,
}

/// Conversation `c`'s first `n` steps alone.
fn alone(model: &std::sync::Arc<LmModel>, c: usize, n: usize) -> Vec<Step> {
    let mut g = LmGen::new(model.clone(), greedy(), 3000).unwrap();
    codes(c)[..n]
        .iter()
        .map(|f| {
            g.step(f).unwrap();
            Step {
                sampled: g.last_sampled(),
                text_logits: g.last_text_logits().to_vec(),
                audio_logits: g.last_audio_logits().to_vec(),
            }
        })
        .collect()
}

/// A schedule: (conversation, global step it joins, global step it leaves, steps masked).
/// Three slots: conversation 1 leaves at 14 and its slot is taken again by 3 at 20.
const PLAN: [(usize, usize, usize, &[usize]); 4] = [
    (0, 0, 40, &[9]),
    (1, 5, 14, &[]),
    (2, 17, 40, &[]),
    (3, 20, 40, &[22]),
];

/// Runs the plan in one batch; per conversation, its steps in order.
fn batched(model: &std::sync::Arc<LmModel>) -> Vec<Vec<Step>> {
    let mut b = LmBatch::new(model.clone(), 3, 3000).unwrap();
    let mut ids: Vec<Option<SlotId>> = vec![None; PLAN.len()];
    let mut done: Vec<usize> = vec![0; PLAN.len()];
    let mut got: Vec<Vec<Step>> = vec![vec![]; PLAN.len()];
    let frames: Vec<Vec<[u32; 8]>> = (0..PLAN.len()).map(codes).collect();
    for t in 0..40 {
        for (c, &(_, join, leave, _)) in PLAN.iter().enumerate() {
            if t == join {
                ids[c] = Some(b.join(greedy()).unwrap());
            }
            if t == leave {
                b.leave(ids[c].take().unwrap()).unwrap();
            }
        }
        let mut step: Vec<(usize, SlotId)> = vec![];
        for (c, &(_, _, _, masked)) in PLAN.iter().enumerate() {
            if let Some(id) = ids[c].filter(|_| !masked.contains(&t)) {
                step.push((c, id));
            }
        }
        let input: Vec<(SlotId, &[u32])> = step
            .iter()
            .map(|&(c, id)| (id, &frames[c][done[c]][..]))
            .collect();
        for (r, &(c, id)) in b.step(&input).into_iter().zip(&step) {
            r.unwrap();
            done[c] += 1;
            got[c].push(Step {
                sampled: b.last_sampled(id).unwrap(),
                text_logits: b.last_text_logits(id).unwrap().to_vec(),
                audio_logits: b.last_audio_logits(id).unwrap().to_vec(),
            });
        }
    }
    got
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Compares every conversation of the plan with its run alone; returns the largest logit
/// difference seen.
fn check(model: LmModel, what: &str) -> f32 {
    let model = std::sync::Arc::new(model);
    let got = batched(&model);
    let mut worst = 0f32;
    for (c, steps) in got.iter().enumerate() {
        let want = alone(&model, c, steps.len());
        assert!(
            steps.len() >= 8,
            "conversation {c} ran {} steps",
            steps.len()
        );
        for (t, (g, w)) in steps.iter().zip(&want).enumerate() {
            assert_eq!(g.sampled, w.sampled, "{what}: conversation {c}, step {t}");
            worst = worst
                .max(max_diff(&g.text_logits, &w.text_logits))
                .max(max_diff(&g.audio_logits, &w.audio_logits));
        }
    }
    assert!(worst <= 1e-4, "{what}: logits differ by {worst}");
    eprintln!("{what}: largest logit difference batch vs alone {worst:e}");
    worst
}

#[test]
fn f32_slots_match_their_conversations_alone() {
    check(f32_model(), "f32 (candle matmuls)");
}

#[test]
fn quantized_slots_match_bit_for_bit_on_the_cpu_kernel() {
    for (ty, name) in [(QuantType::Q8_0, "q8_0"), (QuantType::Q4_0, "q4_0")] {
        let out = tempfile::Builder::new()
            .suffix(&format!(".{name}.gguf"))
            .tempfile()
            .unwrap()
            .into_temp_path();
        let src = fixtures().join("model_candle.safetensors");
        quantize_file(&src, &out, ty, &cfg()).unwrap();
        let m = LmModel::load(&out, &cfg(), None, &Device::Cpu).unwrap();
        let worst = check(m, name);
        if cpu_kernel().is_some() {
            // Every row's arithmetic is independent of the others in our kernel.
            assert_eq!(worst, 0.0, "{name} on {:?}", cpu_kernel());
        }
    }
}

#[test]
fn stale_ids_and_bad_frames_cost_only_their_own_slot() {
    let m = f32_model();
    let mut b = LmBatch::new(m, 2, 100).unwrap();
    let a = b.join(greedy()).unwrap();
    let gone = b.join(greedy()).unwrap();
    assert!(b.join(greedy()).unwrap_err().to_string().contains("all 2"));
    b.leave(gone).unwrap();
    let c = b.join(greedy()).unwrap();
    assert_eq!(c.index(), gone.index());
    let good = codes(0)[0];
    let bad = [999u32; 8];
    let r = b.step(&[(a, &good[..]), (gone, &good[..]), (c, &bad[..])]);
    assert!(r[0].is_ok());
    assert!(r[1].as_ref().unwrap_err().to_string().contains("no longer"));
    assert!(r[2]
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("out of range"));
    assert_eq!(b.steps(a).unwrap(), 1);
    assert_eq!(b.steps(c).unwrap(), 0);
    assert!(b.leave(gone).is_err());
}
