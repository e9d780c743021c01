//! `moshid infer --voice-prompt / --text-prompt` on a small random PersonaPlex-shaped LM: a
//! preset found by name runs NVIDIA's prompt phase before the conversation (the same tokens as
//! the library's prompt), and wrong uses get one-line errors that say what to do.

mod support;

use std::path::Path;
use support::*;

use moshid_models::lm::{
    write_random_checkpoint, Layout, LmConfig, LmGen, LmModel, PersonaPrompt, Sampling,
    VoicePreset, VoicePrompt,
};

struct Rig {
    dir: tempfile::TempDir,
    cfg: String,
}

impl Rig {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = fixtures("persona/config.json");
        let c = LmConfig::from_json_file(&cfg).unwrap();
        write_random_checkpoint(&c, 23, &dir.path().join("pp.safetensors"), Layout::PyTorch)
            .unwrap();
        std::fs::create_dir(dir.path().join("voices")).unwrap();
        std::fs::copy(
            fixtures("persona/voice.pt"),
            dir.path().join("voices/alice.pt"),
        )
        .unwrap();
        let codes: Vec<[u32; 8]> = (0..12).map(|t| [t, 2 * t, 7, 9, 11, 13, 17, 19]).collect();
        let json = serde_json::json!({"num_codebooks": 8, "codes": codes});
        std::fs::write(dir.path().join("codes.json"), json.to_string()).unwrap();
        Rig {
            cfg: cfg.to_str().unwrap().to_string(),
            dir,
        }
    }

    fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).to_str().unwrap().to_string()
    }

    fn infer(&self, lm: &str, extra: &[&str]) -> (bool, String) {
        let (codes, trace) = (self.path("codes.json"), self.path("trace.jsonl"));
        let mut args = infer_args(lm, &self.cfg, &codes, &["--greedy", "--trace", &trace]);
        args.extend_from_slice(extra);
        let o = moshid(&args);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

#[test]
fn a_preset_by_name_prompts_before_the_conversation() {
    let rig = Rig::new();
    let voices = rig.path("voices");
    let lm = rig.path("pp.safetensors");
    let (ok, err) = rig.infer(&lm, &["--voice-prompt", "alice", "--voice-dir", &voices]);
    assert!(ok, "{err}");
    assert!(err.contains("persona prompt: 21 steps"), "{err}");
    // The library's run of the same prompt and frames.
    let cfg = LmConfig::from_json_file(Path::new(&rig.cfg)).unwrap();
    let model = LmModel::load(Path::new(&lm), &cfg, None, &candle_core::Device::Cpu).unwrap();
    let greedy = Sampling {
        greedy: true,
        ..Sampling::default()
    };
    let mut g = LmGen::new(model, greedy, cfg.context).unwrap();
    let preset = VoicePreset::from_pt(&fixtures("persona/voice.pt"), &cfg).unwrap();
    let p = PersonaPrompt {
        voice: Some(VoicePrompt::Preset(preset)),
        role_tokens: vec![],
    };
    g.run_prompt(&p, |_| {}).unwrap();
    let trace = std::fs::read_to_string(rig.path("trace.jsonl")).unwrap();
    for (t, line) in trace.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        g.step(&[t as u32, 2 * t as u32, 7, 9, 11, 13, 17, 19])
            .unwrap();
        let (text, audio) = g.last_sampled();
        assert_eq!(v["text"], text, "step {t}");
        assert_eq!(v["audio"], serde_json::json!(audio), "step {t}");
    }
}

#[test]
fn wrong_uses_say_what_to_do() {
    let rig = Rig::new();
    let voices = rig.path("voices");
    let lm = rig.path("pp.safetensors");
    let (ok, err) = rig.infer(&lm, &["--voice-prompt", "bob", "--voice-dir", &voices]);
    assert!(
        !ok && err.contains("`bob`") && err.contains("alice"),
        "{err}"
    );
    let (ok, err) = rig.infer(&lm, &["--text-prompt", "Be brief."]);
    assert!(!ok && err.contains("--tokenizer"), "{err}");
    let (ok, err) = rig.infer(&lm, &["--voice-prompt", &rig.path("none.wav")]);
    assert!(!ok && err.contains("no such file"), "{err}");
    // A Moshi checkpoint has no prompt phase.
    let moshi = fixtures("lm/model_candle.safetensors");
    let (codes, moshi_cfg) = (rig.path("codes.json"), fixtures("lm/config.json"));
    let args = infer_args(
        moshi.to_str().unwrap(),
        moshi_cfg.to_str().unwrap(),
        &codes,
        &["--text-prompt", "Be brief."],
    );
    let o = moshid(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("PersonaPlex"), "{err}");
}
