//! PersonaPlex parity: moshid's prompt phase and conversation against NVIDIA's `LMGen`
//! (fixtures written by scripts/persona-fixtures.sh from NVIDIA/personaplex's code, greedy,
//! f32), on a random PersonaPlex-shaped LM that moshid writes itself (the fixture script loads
//! that same file into NVIDIA's model with strict key checking).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use moshid_models::lm::{
    write_random_checkpoint, Layout, LmConfig, LmGen, LmModel, PersonaPrompt,
    PromptedState as PromptedStateFile, Sampling, VoicePreset, VoicePrompt,
};

/// The checkpoint's seed (the fixtures were generated from the file this seed gives).
const SEED: u64 = 23;
/// f32 logits may differ in the last bits between CPUs and summation orders.
const TOL: f32 = 1e-4;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/persona")
}

fn config() -> LmConfig {
    LmConfig::from_json_file(&dir().join("config.json")).unwrap()
}

/// Writes the checkpoint to `$PERSONA_CHECKPOINT` (the fixture script runs this).
#[test]
#[ignore]
fn write_checkpoint() {
    let path = std::env::var("PERSONA_CHECKPOINT").expect("set PERSONA_CHECKPOINT");
    write_random_checkpoint(&config(), SEED, Path::new(&path), Layout::PyTorch).unwrap();
}

fn model(dir: &Path) -> LmModel {
    let path = dir.join("persona.safetensors");
    write_random_checkpoint(&config(), SEED, &path, Layout::PyTorch).unwrap();
    LmModel::load(
        &path,
        &config(),
        Some(candle_core::DType::F32),
        &Device::Cpu,
    )
    .unwrap()
}

fn greedy() -> Sampling {
    Sampling {
        greedy: true,
        ..Sampling::default()
    }
}

/// What one run produced: per model step the text logits, the 16 depth rows and the argmax
/// tokens; per conversation step the re-aligned output (text + Moshi's 8 codes).
#[derive(Default)]
struct Run {
    text_logits: Vec<Vec<f32>>,
    audio_logits: Vec<Vec<f32>>,
    text: Vec<u32>,
    audio: Vec<Vec<u32>>,
    outputs: Vec<Option<Vec<u32>>>,
    prompt_steps: usize,
}

impl Run {
    fn record(&mut self, g: &LmGen) {
        self.text_logits.push(g.last_text_logits().to_vec());
        self.audio_logits.push(g.last_audio_logits().to_vec());
        self.text.push(g.last_sampled().0);
        self.audio.push(g.last_sampled_all().to_vec());
    }
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn frames(v: &serde_json::Value) -> Vec<[u32; 8]> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| u32s(f).try_into().unwrap())
        .collect()
}

fn prompt(voice: VoicePrompt) -> PersonaPrompt {
    PersonaPrompt {
        voice: Some(voice),
        role_tokens: u32s(&expected()["role_tokens"]),
    }
}

/// Runs the prompt then the 40 user frames; `cached` restores the prompted state into a
/// fresh generator instead of continuing the one that ran the prompt.
fn run(model: LmModel, p: &PersonaPrompt, cached: bool) -> Run {
    let model = std::sync::Arc::new(model);
    let mut g = LmGen::new(model.clone(), greedy(), 3000).unwrap();
    let mut r = Run::default();
    let state = g.run_prompt(p, |g| r.record(g)).unwrap();
    r.prompt_steps = state.steps();
    if cached {
        g = LmGen::new(model, greedy(), 3000).unwrap();
        g.restore_prompted(&state).unwrap();
    }
    for u in frames(&expected()["user_codes"]) {
        let out = g.step(&u).unwrap();
        r.record(&g);
        r.outputs
            .push(out.map(|o| std::iter::once(o.text).chain(o.audio).collect()));
    }
    r
}

fn logits(name: &str) -> Tensor {
    let all =
        candle_core::safetensors::load(dir().join("expected_logits.safetensors"), &Device::Cpu)
            .unwrap();
    all.get(name).unwrap().clone()
}

/// Largest |ours - theirs| over `ours` and `theirs` of the same length.
fn max_diff(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn check(name: &str, r: &Run) {
    let exp = &expected()["runs"][name];
    assert_eq!(
        r.prompt_steps,
        exp["prompt_steps"].as_u64().unwrap() as usize,
        "{name}: prompt steps"
    );
    assert_eq!(r.text, u32s(&exp["text_tokens"]), "{name}: text tokens");
    // Depth rows 0-14 against NVIDIA's code as it runs; row 15 against it with its depth KV
    // ring one entry longer (see gen_persona.py: NVIDIA's full ring hides step 0 from step 15).
    let audio: Vec<Vec<u32>> = exp["audio_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    let row15 = u32s(&exp["row15_fixed_tokens"]);
    for (t, (ours, theirs)) in r.audio.iter().zip(&audio).enumerate() {
        assert_eq!(ours[..15], theirs[..15], "{name}: audio tokens of step {t}");
        assert_eq!(
            ours[15], row15[t],
            "{name}: last depth row's token at step {t}"
        );
    }
    assert_eq!(r.audio.len(), audio.len());
    let outs: Vec<Option<Vec<u32>>> = exp["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (!o.is_null()).then(|| u32s(o)))
        .collect();
    assert_eq!(r.outputs, outs, "{name}: re-aligned outputs");
    let text = logits(&format!("{name}.text_logits"))
        .to_vec2::<f32>()
        .unwrap();
    let mut worst = 0f32;
    for (t, ours) in r.text_logits.iter().enumerate() {
        worst = worst.max(max_diff(ours, &text[t]));
    }
    let cols: Vec<usize> = u32s(&expected()["cols"])
        .into_iter()
        .map(|c| c as usize)
        .collect();
    let card = 2048;
    let part = logits(&format!("{name}.audio_cols"))
        .to_vec3::<f32>()
        .unwrap();
    for (t, ours) in r.audio_logits.iter().enumerate() {
        for (k, row) in part[t].iter().enumerate().take(15) {
            let mine: Vec<f32> = cols.iter().map(|&c| ours[k * card + c]).collect();
            worst = worst.max(max_diff(&mine, row));
        }
    }
    let fixed = logits(&format!("{name}.row15_fixed_cols"))
        .to_vec2::<f32>()
        .unwrap();
    for (t, ours) in r.audio_logits.iter().enumerate() {
        let mine: Vec<f32> = cols.iter().map(|&c| ours[15 * card + c]).collect();
        worst = worst.max(max_diff(&mine, &fixed[t]));
    }
    let full = logits(&format!("{name}.audio_full"))
        .to_vec3::<f32>()
        .unwrap();
    for (i, t) in u32s(&expected()["full_rows_at"]).into_iter().enumerate() {
        let theirs: Vec<f32> = full[i][..15].concat();
        worst = worst.max(max_diff(&r.audio_logits[t as usize][..15 * card], &theirs));
    }
    eprintln!(
        "{name}: {} steps, tokens identical, max |logit diff| {worst:e}",
        r.text.len()
    );
    assert!(
        worst < TOL,
        "{name}: logits differ by {worst} (tolerance {TOL})"
    );
}

#[test]
fn voice_codes_prompt_matches_nvidia() {
    let tmp = tempfile::tempdir().unwrap();
    let p = prompt(VoicePrompt::Codes(frames(&expected()["voice_codes"])));
    check("codes", &run(model(tmp.path()), &p, false));
}

#[test]
fn preset_prompt_matches_nvidia() {
    let tmp = tempfile::tempdir().unwrap();
    let preset = VoicePreset::from_pt(&dir().join("voice.pt"), &config()).unwrap();
    let p = prompt(VoicePrompt::Preset(preset));
    check("preset", &run(model(tmp.path()), &p, false));
}

#[test]
fn cached_state_gives_the_same_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model(tmp.path());
    let p = prompt(VoicePrompt::Codes(frames(&expected()["voice_codes"])));
    let scratch = run(m.clone(), &p, false);
    let cached = run(m, &p, true);
    assert_eq!(scratch.outputs, cached.outputs);
    assert_eq!(
        scratch.text_logits, cached.text_logits,
        "same arithmetic, same bits"
    );
    check("codes", &cached);
}

#[test]
fn batch_slots_join_from_one_prompted_state() {
    let tmp = tempfile::tempdir().unwrap();
    let model = std::sync::Arc::new(model(tmp.path()));
    let p = prompt(VoicePrompt::Codes(frames(&expected()["voice_codes"])));
    let mut g = LmGen::new(model.clone(), greedy(), 3000).unwrap();
    let state = g.run_prompt(&p, |_| {}).unwrap();
    let mut batch = moshid_models::lm::LmBatch::new(model, 2, 3000).unwrap();
    let ids = [
        batch.join_prompted(&state, greedy()).unwrap(),
        batch.join_prompted(&state, greedy()).unwrap(),
    ];
    let exp = &expected()["runs"]["codes"]["outputs"];
    for (t, u) in frames(&expected()["user_codes"]).iter().enumerate() {
        let outs = batch.step(&[(ids[0], &u[..]), (ids[1], &u[..])]);
        for out in outs {
            let got = out
                .unwrap()
                .map(|o| std::iter::once(o.text).chain(o.audio).collect::<Vec<u32>>());
            let want = (!exp[t].is_null()).then(|| u32s(&exp[t]));
            assert_eq!(got, want, "step {t}");
        }
    }
    eprintln!(
        "a cached persona holds {} bytes of KV entries",
        state.bytes()
    );
}

#[test]
fn role_prompts_encode_as_sentencepiece_does() {
    let spm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lm/spm.model");
    let tok = moshid_models::tokenizer::TextTokenizer::from_file(&spm).unwrap();
    let text = std::fs::read_to_string(dir().join("spm_encode.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in cases.as_array().unwrap() {
        let t = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(t), u32s(&case["ids"]), "{t:?}");
    }
    assert_eq!(
        moshid_models::lm::wrap_role(" Be brief. "),
        "<system> Be brief. <system>"
    );
}

/// The test signals of gen_persona.py's `signal`.
fn signal(kind: u64, n: usize) -> Vec<f32> {
    use std::f64::consts::PI;
    (0..n)
        .map(|i| {
            let t = i as f64 / 24000.0;
            let mut x =
                0.3 * (2.0 * PI * 220.0 * t).sin() * (0.5 + 0.5 * (2.0 * PI * 1.5 * t).sin());
            x += 0.05 * (2.0 * PI * 3000.0 * t).sin();
            if kind == 1 && i < n / 2 {
                x *= 0.001;
            }
            if kind == 2 {
                x *= 3.0;
            }
            x as f32
        })
        .collect()
}

#[test]
fn voice_loudness_is_pyloudnorms() {
    use moshid_models::lm::{integrated_loudness, normalize_loudness, VOICE_PROMPT_LUFS};
    let text = std::fs::read_to_string(dir().join("loudness.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in cases.as_array().unwrap() {
        let kind = case["kind"].as_u64().unwrap();
        let x = signal(kind, case["samples"].as_u64().unwrap() as usize);
        let ours = integrated_loudness(&x, 24000).unwrap();
        let theirs = case["lufs"].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() < 1e-4,
            "signal {kind}: {ours} vs pyloudnorm {theirs}"
        );
        let y = normalize_loudness(&x, 24000, VOICE_PROMPT_LUFS);
        let after = integrated_loudness(&y, 24000).unwrap();
        assert!(
            (after - VOICE_PROMPT_LUFS).abs() < 1e-3,
            "normalised to {after}"
        );
    }
    assert_eq!(integrated_loudness(&[0.0; 24000], 24000), None);
    assert_eq!(integrated_loudness(&[0.1; 100], 24000), None);
}

#[test]
fn a_saved_state_restores_to_the_same_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let model = std::sync::Arc::new(model(tmp.path()));
    let p = prompt(VoicePrompt::Codes(frames(&expected()["voice_codes"])));
    let mut g = LmGen::new(model.clone(), greedy(), 3000).unwrap();
    let state = g.run_prompt(&p, |_| {}).unwrap();
    let file = tmp.path().join("persona.state");
    let key = format!("weights-x/{}", p.fingerprint());
    state.save(&file, &key).unwrap();
    let other = PersonaPrompt {
        role_tokens: vec![5],
        ..p.clone()
    };
    assert_ne!(other.fingerprint(), p.fingerprint());
    let stale = PromptedStateFile::load(&file, "weights-y", &Device::Cpu).unwrap();
    assert!(stale.is_none(), "another key is not this state");
    let loaded = PromptedStateFile::load(&file, &key, &Device::Cpu)
        .unwrap()
        .unwrap();
    assert_eq!(loaded.steps(), state.steps());
    let mut g = LmGen::new(model, greedy(), 3000).unwrap();
    g.restore_prompted(&loaded).unwrap();
    let exp = &expected()["runs"]["codes"]["outputs"];
    for (t, u) in frames(&expected()["user_codes"]).iter().enumerate() {
        let got = g
            .step(u)
            .unwrap()
            .map(|o| std::iter::once(o.text).chain(o.audio).collect::<Vec<u32>>());
        assert_eq!(got, (!exp[t].is_null()).then(|| u32s(&exp[t])), "step {t}");
    }
    std::fs::write(&file, b"garbage").unwrap();
    let err = PromptedStateFile::load(&file, &key, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("delete it"), "{err}");
}
