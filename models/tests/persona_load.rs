//! PersonaPlex checkpoints: the `dep_q = 16` tensor list, GGUF conversions through
//! `quantize_file` (q8_0, q4_0, q4k), the depth steps 8-15 a file may lack (filled from 0-7 as
//! NVIDIA's loader does), and the configuration detected from the file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use moshid_models::lm::{
    checkpoint_tensors, quantize_file, write_random_checkpoint, Layout, LmConfig, LmGen, LmModel,
    PersonaPrompt, QuantType, Sampling, VoicePrompt,
};

fn cfg() -> LmConfig {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/persona/config.json");
    LmConfig::from_json_file(&p).unwrap()
}

fn greedy() -> Sampling {
    Sampling {
        greedy: true,
        ..Sampling::default()
    }
}

/// A short prompt then 4 user frames; every step's text logits and sampled tokens.
fn tokens_and_logits(model: LmModel) -> (Vec<Vec<u32>>, Vec<Vec<f32>>) {
    let mut g = LmGen::new(model, greedy(), 64).unwrap();
    let prompt = PersonaPrompt {
        voice: Some(VoicePrompt::Codes(vec![[5, 6, 7, 8, 9, 10, 11, 12]; 3])),
        role_tokens: vec![40, 41, 42],
    };
    let (mut toks, mut logits) = (Vec::new(), Vec::new());
    g.run_prompt(&prompt, |g| {
        toks.push(g.last_sampled_all().to_vec());
        logits.push(g.last_text_logits().to_vec());
    })
    .unwrap();
    for i in 0..4u32 {
        g.step(&[i, 2 * i, 3, 4, 5, 6, 7, 8]).unwrap();
        toks.push(g.last_sampled_all().to_vec());
        logits.push(g.last_text_logits().to_vec());
    }
    (toks, logits)
}

#[test]
fn the_7b_tensor_list_has_sixteen_depth_steps() {
    let p = LmConfig::personaplex_v1();
    // Moshi's 355 / 523 plus 8 steps of 15 (PyTorch: in, out, embedding, 6 layers x 2 FFN
    // weights) or 39 (candle: in, out, embedding, 6 layers x 6) tensors.
    assert_eq!(
        checkpoint_tensors(&p, Layout::PyTorch).unwrap().len(),
        355 + 8 * 15
    );
    assert_eq!(
        checkpoint_tensors(&p, Layout::Candle).unwrap().len(),
        523 + 8 * 39
    );
    let list: HashMap<String, Vec<usize>> = checkpoint_tensors(&p, Layout::PyTorch)
        .unwrap()
        .into_iter()
        .collect();
    let in_proj = &list["depformer.layers.0.self_attn.in_proj_weight"];
    assert_eq!(in_proj, &vec![16 * 3 * 1024, 1024]);
    assert_eq!(list["depformer_emb.14.weight"], vec![2049, 1024]);
}

#[test]
fn gguf_conversions_load_and_run_with_their_stored_config() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("pp.safetensors");
    write_random_checkpoint(&cfg(), 7, &src, Layout::PyTorch).unwrap();
    // Without a side JSON a safetensors file with a ninth depth step is PersonaPlex.
    assert_eq!(LmConfig::for_checkpoint(None, &src).unwrap().dep_q, 16);
    for ty in [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4K] {
        let out = dir.path().join(format!("pp-{ty:?}.gguf"));
        quantize_file(&src, &out, ty, &cfg()).unwrap();
        let stored = LmConfig::for_checkpoint(None, &out).unwrap();
        assert_eq!(stored, cfg(), "{ty:?}: the GGUF carries dep_q 16");
        let m = LmModel::load(&out, &stored, None, &Device::Cpu).unwrap();
        assert!(m.is_gguf());
        let (toks, _) = tokens_and_logits(m);
        assert!(toks.iter().all(|t| t.len() == 16), "{ty:?}");
    }
}

fn is_step_8_to_15(name: &str) -> bool {
    let groups = ["gating.", "linears.", "depformer_in.", "depformer_emb."];
    groups.iter().any(|g| {
        name.split(g).nth(1).is_some_and(|rest| {
            let k: String = rest.chars().take_while(char::is_ascii_digit).collect();
            k.parse::<usize>().is_ok_and(|k| (8..16).contains(&k))
        })
    })
}

#[test]
fn missing_depth_steps_8_to_15_are_steps_0_to_7() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("full.safetensors");
    write_random_checkpoint(&cfg(), 9, &src, Layout::PyTorch).unwrap();
    let all = candle_core::safetensors::load(&src, &Device::Cpu).unwrap();
    // A file with only Moshi's 8 steps (the 15 depth embeddings kept: step 8's has no
    // source in NVIDIA's loader either) and one whose steps 8-15 are explicit copies.
    let (mut short, mut copied) = (HashMap::new(), HashMap::new());
    for (name, t) in &all {
        let half = |t: &Tensor| t.narrow(0, 0, t.dim(0).unwrap() / 2).unwrap();
        if name.contains("self_attn") && name.starts_with("depformer.") {
            let h = half(t);
            copied.insert(name.clone(), Tensor::cat(&[&h, &h], 0).unwrap());
            short.insert(name.clone(), h);
        } else if is_step_8_to_15(name) && name != "depformer_emb.7.weight" {
            let k: usize = name
                .split('.')
                .filter_map(|p| p.parse().ok())
                .find(|k| (8..16).contains(k))
                .unwrap();
            let from = name.replacen(&format!(".{k}."), &format!(".{}.", k - 8), 1);
            copied.insert(name.clone(), all[&from].clone());
        } else {
            short.insert(name.clone(), t.clone());
            copied.insert(name.clone(), t.clone());
        }
    }
    let (ps, pc) = (
        dir.path().join("short.safetensors"),
        dir.path().join("copied.safetensors"),
    );
    candle_core::safetensors::save(&short, &ps).unwrap();
    candle_core::safetensors::save(&copied, &pc).unwrap();
    let load = |p: &Path| LmModel::load(p, &cfg(), Some(DType::F32), &Device::Cpu).unwrap();
    assert_eq!(tokens_and_logits(load(&ps)), tokens_and_logits(load(&pc)));
    // Without depformer_emb.7 nothing can stand in: the error names it.
    short.remove("depformer_emb.7.weight");
    candle_core::safetensors::save(&short, &ps).unwrap();
    let err = LmModel::load(&ps, &cfg(), None, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("depformer_emb.7.weight"), "{err}");
}
