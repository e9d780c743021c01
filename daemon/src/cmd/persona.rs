//! PersonaPlex personas on the command line (`--voice-prompt`, `--text-prompt`): the prompt
//! from a preset name, a `.pt` preset or a WAV, and a role text.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use moshid_models::lm::{
    normalize_loudness, wrap_role, LmConfig, PersonaPrompt, VoicePreset, VoicePrompt,
    AUDIO_CODEBOOKS, VOICE_PROMPT_LUFS,
};
use moshid_models::mimi::Mimi;
use moshid_models::tokenizer::TextTokenizer;

/// Where a persona's voice and role come from.
pub struct PersonaSpec<'a> {
    /// A preset name (`voices/NAME.pt` or `NAME.wav` under `voice_dir`), or a `.pt`/`.wav` path.
    pub voice: Option<&'a str>,
    /// Where preset names are looked up.
    pub voice_dir: &'a Path,
    /// The role text (wrapped in `<system>` tags here).
    pub role: Option<&'a str>,
}

/// The prompt of `spec` for a model of `cfg`; `tokenizer` is needed for a role and `mimi` for
/// a WAV voice.
pub fn prompt(
    cfg: &LmConfig,
    spec: &PersonaSpec<'_>,
    tokenizer: Option<&TextTokenizer>,
    mimi: Option<&mut Mimi>,
) -> anyhow::Result<PersonaPrompt> {
    if !cfg.is_personaplex() {
        bail!("--voice-prompt and --text-prompt need a PersonaPlex checkpoint (dep_q 16, nvidia/personaplex-7b-v1): this LM is Moshi (dep_q {}), which has no prompt phase", cfg.dep_q);
    }
    let role_tokens = match spec.role.map(str::trim).filter(|r| !r.is_empty()) {
        Some(role) => {
            let Some(tok) = tokenizer else {
                bail!("--text-prompt needs --tokenizer (the SentencePiece model, tokenizer_spm_32k_3.model)");
            };
            tok.encode(&wrap_role(role))
        }
        None => Vec::new(),
    };
    let voice = match spec.voice {
        Some(v) => Some(voice(cfg, &resolve(v, spec.voice_dir)?, mimi)?),
        None => None,
    };
    Ok(PersonaPrompt { voice, role_tokens })
}

/// The file a `--voice-prompt` names: a path to a `.pt`/`.wav`, or a preset under `dir`.
fn resolve(v: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let p = Path::new(v);
    if p.extension().is_some_and(|e| e == "pt" || e == "wav") {
        if !p.is_file() {
            bail!("voice prompt {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    for ext in ["pt", "wav"] {
        let c = dir.join(format!("{v}.{ext}"));
        if c.is_file() {
            return Ok(c);
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|n| n.strip_suffix(".pt").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    bail!(
        "voice prompt `{v}`: neither {v}.pt nor {v}.wav in {} (presets there: {}); give a .pt or .wav path, or --voice-dir",
        dir.display(),
        if names.is_empty() { "none".to_string() } else { names.join(", ") }
    )
}

/// Reads a voice: a preset's embeddings, or a WAV normalised to -24 LUFS and Mimi-encoded.
fn voice(cfg: &LmConfig, path: &Path, mimi: Option<&mut Mimi>) -> anyhow::Result<VoicePrompt> {
    if path.extension().is_some_and(|e| e == "pt") {
        return Ok(VoicePrompt::Preset(VoicePreset::from_pt(path, cfg)?));
    }
    let Some(m) = mimi else {
        bail!("a WAV voice prompt needs --mimi (the Mimi weights) to encode it");
    };
    let pcm = moshid_hal::wav::read_mono_24k(path)?;
    if pcm.is_empty() {
        bail!("voice prompt {}: the file holds no audio", path.display());
    }
    let pcm = normalize_loudness(&pcm, 24_000, VOICE_PROMPT_LUFS);
    let n = m.frame_samples();
    let mut frame = vec![0f32; n];
    let mut codes = [0u32; AUDIO_CODEBOOKS];
    let mut out = Vec::with_capacity(pcm.len() / n + 1);
    m.reset();
    for chunk in pcm.chunks(n) {
        // The last frame padded with zeros, as NVIDIA's reader pads it.
        frame[..chunk.len()].copy_from_slice(chunk);
        frame[chunk.len()..].fill(0.0);
        m.encode_step(&frame, &mut codes)
            .with_context(|| format!("encoding voice prompt {}", path.display()))?;
        out.push(codes);
    }
    m.reset();
    Ok(VoicePrompt::Codes(out))
}
