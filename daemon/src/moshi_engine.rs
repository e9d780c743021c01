//! The real engine: Mimi encode -> Moshi LM step -> Mimi decode, plus text pieces.

use crate::config::Config;
use crate::engine::{Engine, EngineError};
use crate::store::{ModelFiles, ModelKind};
use anyhow::Context;
use candle_core::DType;
use moshid_models::lm::{LmConfig, LmGen, LmModel, Sampling};
use moshid_models::mimi::{Mimi, MimiConfig};
use moshid_models::tokenizer::{StreamState, TextTokenizer};

/// Reads the text tokenizer: a SentencePiece `.model`, or a `.txt` piece table (one piece
/// per line, as the offline demo writes).
fn load_tokenizer(path: &std::path::Path) -> anyhow::Result<TextTokenizer> {
    if path.extension().is_some_and(|e| e == "txt") {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the text piece table {}", path.display()))?;
        return Ok(TextTokenizer::from_pieces(
            text.lines().map(str::to_string).collect(),
        ));
    }
    Ok(TextTokenizer::from_file(path)?)
}

/// Mimi + Moshi.
pub struct MoshiEngine {
    mimi: Mimi,
    gen: LmGen,
    tokenizer: TextTokenizer,
    text_state: StreamState,
    codes: Vec<u32>,
    what: String,
}

fn dtype(name: &str) -> Option<DType> {
    match name {
        "f32" => Some(DType::F32),
        "f16" => Some(DType::F16),
        "bf16" => Some(DType::BF16),
        _ => None,
    }
}

/// Loads the engine described by `files` with the config's device, dtype and sampling.
pub fn load(files: &ModelFiles, cfg: &Config) -> anyhow::Result<Box<dyn Engine>> {
    let device = moshid_models::device::open(&cfg.model.device)?;
    let (mimi_cfg, lm_cfg): (MimiConfig, LmConfig) = match files.kind {
        ModelKind::Demo => (
            crate::demo_model::mimi_config(),
            crate::demo_model::lm_config(),
        ),
        ModelKind::Moshi => (
            match &files.mimi_config {
                Some(p) => MimiConfig::from_json_file(p)?,
                None => MimiConfig::v0_1(),
            },
            match &files.lm_config {
                Some(p) => LmConfig::from_json_file(p)?,
                None => LmConfig::v0_1(),
            },
        ),
    };
    // Codes flow Mimi -> LM -> Mimi: the codebook sizes and counts must agree.
    if mimi_cfg.quantizer.bins != lm_cfg.card || mimi_cfg.quantizer.n_q < lm_cfg.dep_q {
        anyhow::bail!(
            "the LM expects {} codebooks of {} entries but Mimi has {} of {}: use a Mimi and an LM made for each other (model.local.mimi_config / lm_config)",
            lm_cfg.dep_q,
            lm_cfg.card,
            mimi_cfg.quantizer.n_q,
            mimi_cfg.quantizer.bins
        );
    }
    let mimi = Mimi::load(&files.mimi, &mimi_cfg, lm_cfg.dep_q, &device)
        .with_context(|| format!("cannot load Mimi from {}", files.mimi.display()))?;
    let lm = LmModel::load(&files.lm, &lm_cfg, dtype(&cfg.model.dtype), &device)
        .with_context(|| format!("cannot load the LM from {}", files.lm.display()))?;
    let s = &cfg.sampling;
    let sampling = Sampling {
        temp_text: s.temp_text,
        temp_audio: s.temp_audio,
        top_k: s.top_k,
        greedy: s.greedy,
        seed: s.seed,
    };
    let what = format!(
        "{} on {} ({}, {} layers, dim {}, context {})",
        match files.kind {
            ModelKind::Demo => "demo model (random weights)",
            ModelKind::Moshi => "Moshi",
        },
        cfg.model.device,
        format!("{:?}", lm.dtype()).to_lowercase(),
        lm_cfg.num_layers,
        lm_cfg.dim,
        cfg.model.context
    );
    let gen = LmGen::new(lm, sampling, cfg.model.context)?;
    let tokenizer = load_tokenizer(&files.tokenizer)?;
    Ok(Box::new(MoshiEngine {
        codes: vec![0; mimi.num_codebooks()],
        mimi,
        gen,
        tokenizer,
        text_state: StreamState::default(),
        what,
    }))
}

impl Engine for MoshiEngine {
    fn step(
        &mut self,
        input: &[f32],
        output: &mut [f32],
        text: &mut String,
    ) -> Result<(), EngineError> {
        self.mimi
            .encode_step(input, &mut self.codes)
            .map_err(|e| EngineError(format!("Mimi encode: {e}")))?;
        match self
            .gen
            .step(&self.codes)
            .map_err(|e| EngineError(format!("LM step: {e}")))?
        {
            Some(out) => {
                self.mimi
                    .decode_step(&out.audio, output)
                    .map_err(|e| EngineError(format!("Mimi decode: {e}")))?;
                self.tokenizer.push(&mut self.text_state, out.text, text);
            }
            // The LM's acoustic delay: no output frame yet.
            None => output.fill(0.0),
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.mimi.reset();
        self.gen.reset();
        self.text_state = StreamState::default();
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_tables_decode_words_bytes_and_skip_specials() {
        let dir = std::env::temp_dir().join(format!("moshid-pieces-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pieces.txt");
        let table = [
            "<unk>",
            "<s>",
            "</s>",
            "<pad>",
            "\u{2581}hello",
            "lo",
            "<0xC3>",
            "<0xA9>",
            "<0x41>",
        ];
        std::fs::write(&path, table.join("\n")).unwrap();
        let tok = load_tokenizer(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut state = StreamState::default();
        let mut out = String::new();
        for t in [0, 4, 5, 3, 1, 6, 7, 8, 99] {
            tok.push(&mut state, t, &mut out);
        }
        // Padding (3), end of padding (0), control and out-of-range ids add nothing; the two
        // byte pieces make one character; the stream's first word loses its leading space.
        assert_eq!(out, "hellolo\u{e9}A");
    }
}
