//! The real engine: Mimi encode -> Moshi LM step -> Mimi decode, plus text pieces.

use crate::config::Config;
use crate::engine::{Engine, EngineError};
use crate::store::{ModelFiles, ModelKind};
use anyhow::Context;
use candle_core::DType;
use moshid_models::lm::{LmConfig, LmGen, LmModel, Sampling};
use moshid_models::mimi::{Mimi, MimiConfig};

/// Token id -> text piece.
pub struct Pieces {
    pieces: Vec<String>,
    pad: u32,
    /// Bytes of a multi-byte character spelled with byte-fallback pieces (`<0xE2>`...).
    pending: Vec<u8>,
}

/// `<0xNN>` byte-fallback pieces.
fn byte_piece(p: &str) -> Option<u8> {
    let hex = p.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

impl Pieces {
    /// Reads a piece table: a SentencePiece `.model` or a text file with one piece a line.
    pub fn load(path: &std::path::Path, pad: u32) -> anyhow::Result<Pieces> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the text tokenizer {}", path.display()))?;
        let pieces = if path.extension().is_some_and(|e| e == "txt") {
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::to_string)
                .collect()
        } else {
            crate::spm::pieces(&bytes)
                .with_context(|| format!("{} is not a SentencePiece model", path.display()))?
        };
        Ok(Pieces {
            pieces,
            pad,
            pending: Vec::with_capacity(4),
        })
    }

    /// Appends the text of `token` (nothing for padding and control tokens).
    pub fn push(&mut self, token: u32, out: &mut String) {
        // 0 = end of padding, pad = padding; both are silence in the text stream.
        if token == 0 || token == self.pad {
            return;
        }
        let Some(p) = self.pieces.get(token as usize) else {
            return;
        };
        if let Some(b) = byte_piece(p) {
            self.pending.push(b);
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.extend(s.chars().filter(|c| !c.is_control()));
                    self.pending.clear();
                }
                // An incomplete character: wait for its next byte (at most 4 in all).
                Err(e) if e.error_len().is_none() && self.pending.len() < 4 => {}
                Err(_) => self.pending.clear(),
            }
            return;
        }
        self.pending.clear();
        if p.starts_with('<') && p.ends_with('>') {
            return; // control pieces such as <s>, <unk>
        }
        out.push_str(&p.replace('\u{2581}', " "));
    }
}

/// Mimi + Moshi.
pub struct MoshiEngine {
    mimi: Mimi,
    gen: LmGen,
    pieces: Pieces,
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
    let pieces = Pieces::load(&files.tokenizer, lm_cfg.existing_text_padding_id)?;
    Ok(Box::new(MoshiEngine {
        codes: vec![0; mimi.num_codebooks()],
        mimi,
        gen,
        pieces,
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
                self.pieces.push(out.text, text);
            }
            // The LM's acoustic delay: no output frame yet.
            None => output.fill(0.0),
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.mimi.reset();
        self.gen.reset();
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_decode_words_bytes_and_skip_specials() {
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
        let mut p = Pieces {
            pieces: table.iter().map(|s| s.to_string()).collect(),
            pad: 3,
            pending: Vec::new(),
        };
        let mut out = String::new();
        for t in [0, 4, 5, 3, 1, 6, 7, 8, 99] {
            p.push(t, &mut out);
        }
        assert_eq!(out, " hellolo\u{e9}A");
    }
}
