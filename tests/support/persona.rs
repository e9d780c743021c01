//! A small random PersonaPlex model for the persona tests (web sessions and the room).

use super::fixtures;
use std::path::Path;

/// A small random PersonaPlex-shaped model on disk (the persona fixtures' LM configuration,
/// a small Mimi, a piece table, the fixture's `alice` voice preset) and a config that serves
/// it with two personas: `desk` (alice's voice and a role) and `guide` (a role). Greedy.
pub fn persona_model(dir: &Path) -> std::path::PathBuf {
    use moshid_models::lm::{write_random_checkpoint, Layout, LmConfig};
    let lm_cfg = fixtures("persona/config.json");
    let c = LmConfig::from_json_file(&lm_cfg).unwrap();
    write_random_checkpoint(&c, 23, &dir.join("pp.safetensors"), Layout::PyTorch).unwrap();
    std::fs::create_dir(dir.join("voices")).unwrap();
    std::fs::copy(fixtures("persona/voice.pt"), dir.join("voices/alice.pt")).unwrap();
    let mimi = serde_json::json!({
        "sample_rate": 24000, "channels": 1, "frame_rate": 12.5,
        "seanet": {"channels": 1, "dimension": 128, "n_filters": 8, "n_residual_layers": 1,
            "ratios": [8, 6, 5, 4], "kernel_size": 7, "residual_kernel_size": 3,
            "last_kernel_size": 3, "dilation_base": 2, "compress": 2},
        "transformer": {"d_model": 128, "num_heads": 4, "num_layers": 2,
            "dim_feedforward": 256, "context": 250, "max_period": 10000.0},
        "quantizer": {"dimension": 64, "n_q": 8, "bins": 2048}
    });
    std::fs::write(dir.join("mimi.json"), mimi.to_string()).unwrap();
    let mimi_cfg = moshid_models::mimi::MimiConfig::from_json_file(&dir.join("mimi.json")).unwrap();
    moshid_models::mimi::write_random_checkpoint(&mimi_cfg, 7, &dir.join("mimi.safetensors"))
        .unwrap();
    let mut pieces = vec!["<epad>", "<unk>", "<s>", "<pad>"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    pieces.extend((4..c.text_card).map(|i| format!("\u{2581}w{i}")));
    std::fs::write(dir.join("pieces.txt"), pieces.join("\n")).unwrap();
    let p = |f: &str| dir.join(f).display().to_string();
    let toml = format!(
        "cache_dir = {:?}\n[model]\nsource = \"local\"\ndevice = \"cpu\"\ncontext = 64\n\
         [model.local]\nlm = {:?}\nmimi = {:?}\ntokenizer = {:?}\nlm_config = {:?}\n\
         mimi_config = {:?}\n[sampling]\ngreedy = true\n\
         [personas.desk]\nvoice_prompt = \"alice\"\nrole = \"hello kitchen lights\"\n\
         [personas.guide]\nrole = \"welcome to the museum of old radios\"\n",
        p("cache"),
        p("pp.safetensors"),
        p("mimi.safetensors"),
        p("pieces.txt"),
        lm_cfg.display().to_string(),
        p("mimi.json"),
    );
    let cfg = dir.join("persona.toml");
    std::fs::write(&cfg, toml).unwrap();
    cfg
}
