//! PersonaPlex personas: the prompt phase NVIDIA's `LMGen.step_system_prompts` runs before
//! a conversation (a voice, 0.5 s of silence, the role's text, 0.5 s of silence), written for
//! moshid's [`super::LmGen`] and [`super::LmBatch`], and the prompted state kept to start
//! later conversations from without running the prompt again.

use std::time::{Duration, Instant};

use super::gen::{ConvSnapshot, ForcedFrame};
use super::{LmConfig, LmError, AUDIO_CODEBOOKS};

/// Moshi's audio codes NVIDIA's prompt uses for its own silent stream (constant, no audio
/// is encoded for them).
pub const SILENCE_TOKENS: [u32; AUDIO_CODEBOOKS] = [948, 243, 1178, 546, 1736, 1030, 1978, 2008];
/// The user's codes during the whole prompt (NVIDIA's "sine" frame, also constant).
pub const SINE_TOKENS: [u32; AUDIO_CODEBOOKS] = [430, 1268, 381, 1611, 1095, 1495, 56, 472];
/// The text token of the prompt's audio frames (the padding id).
pub const PROMPT_TEXT_PAD: u32 = 3;
/// Silence frames before and after the role: 0.5 s at 12.5 Hz, rounded down as NVIDIA's
/// server does (`int(0.5 * frame_rate)`).
pub const SILENCE_FRAMES: usize = 6;

/// Wraps a role as PersonaPlex was trained to read it: `"<system> ROLE <system>"` (unless the
/// text already starts and ends with the tag), as NVIDIA's server does before tokenizing.
pub fn wrap_role(role: &str) -> String {
    let t = role.trim();
    if t.starts_with("<system>") && t.ends_with("<system>") {
        t.to_string()
    } else {
        format!("<system> {t} <system>")
    }
}

/// One of NVIDIA's voice presets (`voices/NAME.pt`): the temporal transformer's input
/// embeddings of a recorded voice prompt (one per step the model ran, `N - 1` for `N` frames)
/// and the token ring after it.
#[derive(Debug, Clone, PartialEq)]
pub struct VoicePreset {
    /// `[N - 1][dim]` input embeddings.
    pub embeddings: Vec<Vec<f32>>,
    /// NVIDIA's token ring `[streams][width]` (17 streams), row-major.
    pub cache: Vec<i64>,
    /// The ring's width (`max_delay + 3` = 4 in NVIDIA's code).
    pub width: usize,
}

impl VoicePreset {
    /// Reads one of NVIDIA's preset files (`voices/NAME.pt`, a PyTorch pickle of
    /// `{"embeddings": [N-1, 1, 1, dim], "cache": int64 [1, 17, width]}`) for a model of `cfg`.
    pub fn from_pt(path: &std::path::Path, cfg: &LmConfig) -> Result<Self, LmError> {
        let bad = |what: String| {
            LmError::Format {
            path: path.to_path_buf(),
            what: format!("not a PersonaPlex voice preset ({what}): use a voices/NAME.pt file of nvidia/personaplex-7b-v1, or a WAV"),
        }
        };
        let all = candle_core::pickle::read_all(path).map_err(|e| bad(e.to_string()))?;
        let get = |key: &str| {
            all.iter()
                .find(|(k, _)| k == key)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| bad(format!("no `{key}` tensor")))
        };
        let (emb, cache) = (get("embeddings")?, get("cache")?);
        let n = emb.dims().first().copied().unwrap_or(0);
        if emb.elem_count() != n * cfg.dim {
            return Err(bad(format!(
                "embeddings of shape {:?}, this model needs [N, 1, 1, {}]",
                emb.dims(),
                cfg.dim
            )));
        }
        let streams = cfg.n_q + 1;
        let width = cache.elem_count() / streams;
        if cache.dims().len() != 3 || cache.dim(1).ok() != Some(streams) || width < 3 {
            return Err(bad(format!(
                "cache of shape {:?}, expected [1, {streams}, 4]",
                cache.dims()
            )));
        }
        let e = |e: candle_core::Error| bad(e.to_string());
        let emb = emb
            .reshape((n, cfg.dim))
            .and_then(|t| t.to_dtype(candle_core::DType::F32));
        let cache = cache
            .flatten_all()
            .and_then(|t| t.to_dtype(candle_core::DType::I64));
        Ok(Self {
            embeddings: emb.and_then(|t| t.to_vec2::<f32>()).map_err(e)?,
            cache: cache.and_then(|t| t.to_vec1::<i64>()).map_err(e)?,
            width,
        })
    }
}

/// The voice a persona speaks with.
#[derive(Debug, Clone, PartialEq)]
pub enum VoicePrompt {
    /// Mimi codes of a recording (after loudness normalisation), one frame per 80 ms.
    Codes(Vec<[u32; AUDIO_CODEBOOKS]>),
    /// A preset's stored embeddings and token ring.
    Preset(VoicePreset),
}

/// What a persona's prompt holds: a voice (or none) and the role's text tokens (already
/// wrapped with [`wrap_role`] and tokenized; may be empty).
#[derive(Debug, Clone, PartialEq)]
pub struct PersonaPrompt {
    /// The voice prompt.
    pub voice: Option<VoicePrompt>,
    /// The role's tokens, one per step.
    pub role_tokens: Vec<u32>,
}

/// A prompt step: the frame it is given, and whether a preset's token ring is loaded after it.
pub(crate) struct PromptStep {
    pub(crate) frame: ForcedFrame,
    pub(crate) then_ring: Option<(Vec<i64>, usize)>,
}

impl PersonaPrompt {
    /// NVIDIA's calls, in order: the voice, silence, the role, silence.
    fn calls(&self, cfg: &LmConfig) -> Vec<ForcedFrame> {
        let audio = |agent: [u32; AUDIO_CODEBOOKS], text: u32| ForcedFrame {
            text: Some(text),
            agent: Some(agent),
            user: Some(SINE_TOKENS),
            embedding: None,
        };
        let mut calls = Vec::new();
        match &self.voice {
            Some(VoicePrompt::Codes(frames)) => {
                calls.extend(frames.iter().map(|&f| audio(f, PROMPT_TEXT_PAD)));
            }
            Some(VoicePrompt::Preset(p)) => {
                // NVIDIA's replay (`step_embeddings`) gives the initial tokens as both audio
                // streams and pad as text, and one call more than embeddings (its first call
                // runs no model).
                let initial = [cfg.card as u32; AUDIO_CODEBOOKS];
                let dummy = |embedding| ForcedFrame {
                    text: Some(PROMPT_TEXT_PAD),
                    agent: Some(initial),
                    user: Some(initial),
                    embedding,
                };
                calls.push(dummy(None));
                calls.extend(p.embeddings.iter().map(|e| dummy(Some(e.clone()))));
            }
            None => {}
        }
        let silence = audio(SILENCE_TOKENS, PROMPT_TEXT_PAD);
        calls.extend(std::iter::repeat_n(silence.clone(), SILENCE_FRAMES));
        calls.extend(self.role_tokens.iter().map(|&t| audio(SILENCE_TOKENS, t)));
        calls.extend(std::iter::repeat_n(silence, SILENCE_FRAMES));
        calls
    }

    /// The steps moshid runs: NVIDIA's calls but the first, which runs no model and whose
    /// tokens its later calls overwrite (so a recording's first frame never reaches the
    /// model, as in NVIDIA's code).
    pub(crate) fn steps(&self, cfg: &LmConfig) -> Vec<PromptStep> {
        let mut steps: Vec<PromptStep> = self
            .calls(cfg)
            .into_iter()
            .skip(1)
            .map(|frame| PromptStep {
                frame,
                then_ring: None,
            })
            .collect();
        if let Some(VoicePrompt::Preset(p)) = &self.voice {
            // After the replay NVIDIA copies the preset's ring over its own.
            if let Some(i) = p.embeddings.len().checked_sub(1) {
                steps[i].then_ring = Some((p.cache.clone(), p.width));
            }
        }
        steps
    }

    /// Steps the prompt takes (`len` of [`PersonaPrompt::steps`]).
    pub fn step_count(&self) -> usize {
        let voice = match &self.voice {
            Some(VoicePrompt::Codes(f)) => f.len(),
            Some(VoicePrompt::Preset(p)) => p.embeddings.len() + 1,
            None => 0,
        };
        (voice + 2 * SILENCE_FRAMES + self.role_tokens.len()).saturating_sub(1)
    }
}

/// A conversation's state right after a persona's prompt: start any number of conversations
/// from it ([`super::LmGen::restore_prompted`], [`super::LmBatch::join_prompted`]) instead
/// of running the prompt again. Tied to the model and context it was made with.
#[derive(Debug)]
pub struct PromptedState {
    pub(crate) snap: ConvSnapshot,
    pub(crate) elapsed: Duration,
}

impl PromptedState {
    /// Steps the prompt ran.
    pub fn steps(&self) -> usize {
        self.snap.steps()
    }

    /// Wall time the prompt took to run.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Bytes of KV cache entries the state holds (what a cached persona costs).
    pub fn bytes(&self) -> u64 {
        self.snap.bytes()
    }
}

impl PromptedState {
    /// Writes the state to `path` (safetensors, replaced atomically) under `key`: the caller's
    /// identity of the weights and the prompt (see [`PersonaPrompt::fingerprint`]), which
    /// [`PromptedState::load`] checks.
    pub fn save(&self, path: &std::path::Path, key: &str) -> Result<(), LmError> {
        let e = |e: candle_core::Error| LmError::Candle(format!("saving a persona state: {e}"));
        let mut t = self.snap.to_tensors().map_err(e)?;
        let dev = &candle_core::Device::Cpu;
        let key = candle_core::Tensor::new(key.as_bytes(), dev).map_err(e)?;
        t.insert("key".into(), key);
        let save = |tmp: &std::path::Path| {
            candle_core::safetensors::save(&t, tmp).map_err(|er| LmError::Format {
                path: path.to_path_buf(),
                what: format!("cannot write a persona state: {er}"),
            })
        };
        crate::replace::replace_file(path, save, |p, error| LmError::Io {
            path: p.to_path_buf(),
            error,
        })
    }

    /// Reads a state [`PromptedState::save`] wrote, onto `device`; `Ok(None)` when the file
    /// was made under another `key` (other weights or another prompt: prompt again).
    pub fn load(
        path: &std::path::Path,
        key: &str,
        device: &candle_core::Device,
    ) -> Result<Option<Self>, LmError> {
        let bad = |what: String| LmError::Format {
            path: path.to_path_buf(),
            what: format!("not a persona state ({what}): delete it, it is rebuilt by prompting"),
        };
        let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
            .map_err(|e| bad(e.to_string()))?;
        let stored = t.get("key").ok_or_else(|| bad("no key".into()))?;
        let stored = stored.to_vec1::<u8>().map_err(|e| bad(e.to_string()))?;
        if stored != key.as_bytes() {
            return Ok(None);
        }
        let snap = ConvSnapshot::from_tensors(&t, device).map_err(|e| bad(e.to_string()))?;
        Ok(Some(Self {
            snap,
            elapsed: Duration::ZERO,
        }))
    }
}

impl PersonaPrompt {
    /// A 64-bit FNV-1a hash of everything the prompt feeds the model (hex), for cache keys.
    pub fn fingerprint(&self) -> String {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
        };
        match &self.voice {
            Some(VoicePrompt::Codes(f)) => {
                eat(b"codes");
                f.iter().flatten().for_each(|c| eat(&c.to_le_bytes()));
            }
            Some(VoicePrompt::Preset(p)) => {
                eat(b"preset");
                p.embeddings
                    .iter()
                    .flatten()
                    .for_each(|v| eat(&v.to_le_bytes()));
                p.cache.iter().for_each(|v| eat(&v.to_le_bytes()));
            }
            None => eat(b"none"),
        }
        eat(b"role");
        self.role_tokens.iter().for_each(|t| eat(&t.to_le_bytes()));
        format!("{h:016x}")
    }
}

/// Times a prompt run.
pub(crate) fn timed<T>(f: impl FnOnce() -> Result<T, LmError>) -> Result<(T, Duration), LmError> {
    let t0 = Instant::now();
    let v = f()?;
    Ok((v, t0.elapsed()))
}
