//! The real engine: Mimi encode -> Moshi LM step -> Mimi decode, plus text pieces.

use crate::config::Config;
use crate::engine::{Engine, EngineError};
use crate::model_spec::ModelSpec;
use anyhow::Context;
use moshid_models::lm::{LmGen, LmModel, Sampling, StepOut};
use moshid_models::mimi::Mimi;
use moshid_models::tokenizer::{StreamState, TextTokenizer};

mod overlap;

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
    /// The configured sampling, which a conversation's override starts from.
    sampling: Sampling,
    /// `[model] mimi_overlap`: decode frame t during the LM's step t+1.
    overlap: bool,
    /// With `overlap`, the LM's last frame, decoded during the next step.
    pending: Option<StepOut>,
}

/// Loads `spec` with the config's device, dtype, context and sampling.
pub fn load(spec: &ModelSpec, cfg: &Config) -> anyhow::Result<Box<dyn Engine>> {
    // `auto` resolves here; the description (which device, and why) goes into `what`, which
    // the log and STATUS show.
    let (device, where_) = cfg.model.device.open_described()?;
    spec.check_compatible().map_err(anyhow::Error::msg)?;
    let mimi_device = cfg.model.mimi_device.resolve(&device);
    let mimi = Mimi::load_with(
        &spec.mimi,
        &spec.mimi_config,
        spec.lm_config.dep_q,
        &mimi_device,
        cfg.model.mimi_dtype.mimi_weights()?,
    )
    .with_context(|| format!("cannot load Mimi from {}", spec.mimi.display()))?;
    let lm = LmModel::load(&spec.lm, &spec.lm_config, cfg.model.dtype.candle(), &device)
        .with_context(|| format!("cannot load the LM from {}", spec.lm.display()))?;
    let what = format!(
        "{} on {} ({}, {} layers, dim {}, context {}){}",
        spec.label,
        where_,
        format!("{:?}", lm.dtype()).to_lowercase(),
        spec.lm_config.num_layers,
        spec.lm_config.dim,
        cfg.model.context,
        mimi_note(cfg, &mimi_device, &device)
    );
    let sampling = cfg.sampling.sampling();
    let gen = LmGen::new(lm, sampling, cfg.model.context)?;
    let tokenizer = load_tokenizer(&spec.tokenizer)?;
    Ok(Box::new(MoshiEngine {
        codes: vec![0; mimi.num_codebooks()],
        mimi,
        gen,
        tokenizer,
        text_state: StreamState::default(),
        what,
        sampling,
        overlap: cfg.model.mimi_overlap,
        pending: None,
    }))
}

/// What STATUS adds about Mimi when it does not simply follow the LM.
fn mimi_note(cfg: &Config, mimi: &candle_core::Device, lm: &candle_core::Device) -> String {
    let place = if mimi.same_device(lm) {
        ""
    } else {
        "; Mimi on the CPU"
    };
    let overlap = if cfg.model.mimi_overlap {
        "; Mimi decode overlapping the LM"
    } else {
        ""
    };
    format!("{place}{overlap}")
}

/// The LM's step on this frame's codes.
fn lm_step(gen: &mut LmGen, codes: &[u32]) -> Result<Option<StepOut>, EngineError> {
    gen.step(codes)
        .map_err(|e| EngineError(format!("LM step: {e}")))
}

/// Mimi's decode of `frame` into `output`; silence when there is none (the LM's acoustic
/// delay, or the first step of an overlapped conversation).
fn decode(mimi: &mut Mimi, frame: Option<&StepOut>, output: &mut [f32]) -> Result<(), EngineError> {
    match frame {
        Some(f) => mimi
            .decode_step(&f.audio, output)
            .map_err(|e| EngineError(format!("Mimi decode: {e}"))),
        None => {
            output.fill(0.0);
            Ok(())
        }
    }
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
        let out = if self.overlap {
            // Decode of the previous frame beside this step: the same calls on each model
            // in the same order as below, so the same audio, one frame later.
            let previous = self.pending.take();
            let out = overlap::lm_step_while_decoding(
                &mut self.gen,
                &self.codes,
                &mut self.mimi,
                previous.as_ref(),
                output,
            )?;
            self.pending = out;
            out
        } else {
            let out = lm_step(&mut self.gen, &self.codes)?;
            decode(&mut self.mimi, out.as_ref(), output)?;
            out
        };
        // Text is not delayed: the token is the LM's, sampled at this step either way.
        if let Some(out) = out {
            self.tokenizer.push(&mut self.text_state, out.text, text);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.pending = None;
        self.mimi.reset();
        self.gen.reset();
        self.text_state = StreamState::default();
    }

    fn set_sampling(&mut self, o: &crate::engine::SamplingOverride) {
        let b = self.sampling;
        let s = Sampling {
            temp_text: o.temp_text.unwrap_or(b.temp_text),
            temp_audio: o.temp_audio.unwrap_or(b.temp_audio),
            top_k: o.top_k_text.unwrap_or(b.top_k),
            greedy: b.greedy,
            seed: o.seed.unwrap_or(b.seed),
        };
        self.gen.set_sampling(s, o.top_k_audio);
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pieces.txt");
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
