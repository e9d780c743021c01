//! What a model is, before it is loaded: its files plus the configurations that go with
//! them. `store` produces one (hub, local files, or the demo model), `moshi_engine` loads
//! it, and the supervisor sizes it (`memory`) before loading.

use moshid_models::lm::LmConfig;
use moshid_models::mimi::MimiConfig;
use std::path::PathBuf;

/// A model ready to load: verified files and their configurations.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// How to name it in STATUS and logs, e.g. "Moshi" or "demo model (random weights)".
    pub label: String,
    /// LM weights (safetensors, either layout, or GGUF).
    pub lm: PathBuf,
    /// The LM's configuration.
    pub lm_config: LmConfig,
    /// Mimi weights.
    pub mimi: PathBuf,
    /// Mimi's configuration.
    pub mimi_config: MimiConfig,
    /// Text tokenizer: a SentencePiece `.model`, or a `.txt` piece table.
    pub tokenizer: PathBuf,
}

impl ModelSpec {
    /// Checks that the codes Mimi makes are the codes the LM reads: codebook size and count.
    pub fn check_compatible(&self) -> Result<(), String> {
        let (m, l) = (&self.mimi_config.quantizer, &self.lm_config);
        if m.bins != l.card || m.n_q < l.mimi_codebooks() {
            return Err(format!(
                "the LM expects {} codebooks of {} entries but Mimi has {} of {}: use a Mimi and an LM made for each other (model.local.mimi_config / lm_config)",
                l.mimi_codebooks(), l.card, m.n_q, m.bins
            ));
        }
        Ok(())
    }
}
