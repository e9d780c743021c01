//! The real engine: Mimi encode -> Moshi LM step -> Mimi decode, plus text pieces.

use crate::config::Config;
#[cfg(test)]
use crate::engine::{BatchFrame, Engine, JoinRequest, SamplingOverride};
use crate::engine::{BatchModel, EngineError};
use crate::model_spec::ModelSpec;
use anyhow::Context;
use moshid_models::lm::{LmBatch, LmGen, LmModel, StepOut};
use moshid_models::mimi::Mimi;
use moshid_models::tokenizer::TextTokenizer;

mod batch;
mod overlap;
mod persona;
mod persona_cache;

pub use batch::MoshiBatch;
pub use persona_cache::PersonaCache;

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

/// Mimi + Moshi for one conversation: a [`MoshiBatch`] of one slot, so that one code path
/// steps a conversation whether it is alone or shares the model. (The service runs every
/// conversation through a hub; the tests compare against this one alone.)
#[cfg(test)]
pub struct MoshiEngine {
    batch: MoshiBatch,
    slot: usize,
}

/// Loads `spec` with the config's device, dtype, context and sampling, for one conversation.
#[cfg(test)]
pub fn load(spec: &ModelSpec, cfg: &Config) -> anyhow::Result<Box<dyn Engine>> {
    let mut batch = load_batch(spec, cfg, 1)?;
    let slot = batch.join(&JoinRequest::default())?;
    Ok(Box::new(MoshiEngine { batch, slot }))
}

/// Loads `spec` for the service: up to `conversations` at once (the room's and the web
/// sessions') over one copy of the weights.
pub fn load_model(
    spec: &ModelSpec,
    cfg: &Config,
    conversations: usize,
) -> anyhow::Result<Box<dyn BatchModel>> {
    let (batch, personas) = load_batch_with_personas(spec, cfg, conversations)?;
    Ok(Box::new(ServiceModel { batch, personas }))
}

/// The service's model: the batch, and the personas its conversations may ask for.
struct ServiceModel {
    batch: MoshiBatch,
    personas: PersonaCache,
}

impl BatchModel for ServiceModel {
    fn capacity(&self) -> usize {
        self.batch.capacity()
    }
    fn join(&mut self, r: &crate::engine::JoinRequest) -> Result<usize, EngineError> {
        self.batch.join(r)
    }
    fn leave(&mut self, slot: usize) {
        self.batch.leave(slot)
    }
    fn reset(&mut self, slot: usize) -> Result<(), EngineError> {
        BatchModel::reset(&mut self.batch, slot)
    }
    fn set_sampling(
        &mut self,
        slot: usize,
        s: &crate::engine::SamplingOverride,
    ) -> Result<(), EngineError> {
        BatchModel::set_sampling(&mut self.batch, slot, s)
    }
    fn step(&mut self, frames: &mut [crate::engine::BatchFrame<'_>]) {
        BatchModel::step(&mut self.batch, frames)
    }
    fn describe(&self) -> String {
        BatchModel::describe(&self.batch)
    }
    fn personas(&self) -> Option<PersonaCache> {
        Some(self.personas.clone())
    }
}

/// Loads `spec` for up to `capacity` conversations over one copy of the weights.
#[cfg(test)]
pub fn load_batch(spec: &ModelSpec, cfg: &Config, capacity: usize) -> anyhow::Result<MoshiBatch> {
    Ok(load_batch_with_personas(spec, cfg, capacity)?.0)
}

/// [`load_batch`], and the cache of the personas its conversations may ask for (`[personas]`,
/// or a session's own prompt) over the same weights.
pub fn load_batch_with_personas(
    spec: &ModelSpec,
    cfg: &Config,
    capacity: usize,
) -> anyhow::Result<(MoshiBatch, PersonaCache)> {
    // `auto` resolves here; the description (which device, and why) goes into `what`, which
    // the log and STATUS show.
    let (device, where_) = cfg.model.device.open_described()?;
    spec.check_compatible().map_err(anyhow::Error::msg)?;
    let mimi_device = cfg.model.mimi_device.resolve(&device);
    let mut mimi = Mimi::load_with(
        &spec.mimi,
        &spec.mimi_config,
        spec.lm_config.mimi_codebooks(),
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
    let lm = std::sync::Arc::new(lm);
    let tokenizer = load_tokenizer(&spec.tokenizer)?;
    // The persona's prompt runs once, on a generator of its own; slots copy its state.
    let prompted = {
        let mut gen = LmGen::new(lm.clone(), sampling, cfg.model.context)?;
        persona::prompted(spec, cfg, &mut gen, &tokenizer, &mut mimi)?
    };
    mimi.reset();
    let what = match (&prompted, &cfg.model.persona) {
        (Some(_), Some(name)) => format!("{what}; persona {name}"),
        _ => what,
    };
    let what = if capacity > 1 {
        format!("{what}; up to {capacity} conversations in one step")
    } else {
        what
    };
    let personas = PersonaCache::new(spec, cfg, lm.clone(), tokenizer.clone(), mimi.clone());
    let batch = MoshiBatch::new(batch::Parts {
        lm: LmBatch::new(lm, capacity, cfg.model.context)?,
        mimi,
        tokenizer,
        what,
        sampling,
        overlap: cfg.model.mimi_overlap,
        prompted,
    });
    Ok((batch, personas))
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

#[cfg(test)]
impl Engine for MoshiEngine {
    fn step(
        &mut self,
        input: &[f32],
        output: &mut [f32],
        text: &mut String,
    ) -> Result<(), EngineError> {
        let mut frame = [BatchFrame {
            slot: self.slot,
            input,
            output,
            text,
            result: Ok(()),
        }];
        self.batch.step(&mut frame);
        let [f] = frame;
        f.result
    }

    fn reset(&mut self) {
        if let Err(e) = self.batch.reset(self.slot) {
            log::warn!("reset: {e}");
        }
    }

    fn set_sampling(&mut self, o: &SamplingOverride) {
        if let Err(e) = self.batch.set_sampling(self.slot, o) {
            log::warn!("{e}");
        }
    }

    fn describe(&self) -> String {
        self.batch.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moshid_models::tokenizer::StreamState;

    /// The demo model with a random PersonaPlex-shaped LM (dep_q 16) in `dir`, and the Mimi
    /// fixture's speech (a voice prompt).
    pub(super) fn personaplex_demo(dir: &std::path::Path) -> (ModelSpec, std::path::PathBuf) {
        use moshid_models::lm::{write_random_checkpoint, Layout, LmConfig};
        let mut spec = crate::demo_model::ensure(dir, "moshiko").unwrap();
        let lm_config = LmConfig {
            dep_q: 16,
            ..crate::demo_model::lm_config()
        };
        spec.lm = dir.join("personaplex.safetensors");
        write_random_checkpoint(&lm_config, 5, &spec.lm, Layout::Candle).unwrap();
        spec.lm_config = lm_config;
        let wav = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/tests/fixtures/mimi/speech_24k.wav");
        (spec, wav)
    }

    /// [`personaplex_demo`] and a config whose `model.persona` has the fixture's speech as
    /// voice and a role.
    fn persona_rig(dir: &std::path::Path) -> (ModelSpec, Config) {
        let (spec, wav) = personaplex_demo(dir);
        let toml = format!(
            "cache_dir = {:?}\n[model]\ncontext = 64\npersona = \"desk\"\n[personas.desk]\nvoice_prompt = {:?}\nrole = \"hello kitchen lights\"\n",
            dir.display().to_string(),
            wav.display().to_string()
        );
        let cfg = Config::from_toml(&toml, std::path::Path::new("test.toml")).unwrap();
        (spec, cfg)
    }

    fn talk(e: &mut dyn Engine) -> Vec<f32> {
        let mut out = Vec::new();
        let mut frame = vec![0f32; 1920];
        let mut text = String::new();
        for t in 0..6 {
            let input: Vec<f32> = (0..1920)
                .map(|i| ((i + t * 7) as f32 * 0.01).sin() * 0.1)
                .collect();
            e.step(&input, &mut frame, &mut text).unwrap();
            out.extend_from_slice(&frame);
        }
        out
    }

    #[test]
    fn a_persona_prompts_once_and_every_conversation_starts_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, cfg) = persona_rig(dir.path());
        let mut e = load(&spec, &cfg).unwrap();
        assert!(e.describe().contains("persona desk"), "{}", e.describe());
        let state = dir.path().join("personas/desk.state");
        assert!(state.exists(), "the prompted state is kept on disk");
        e.reset();
        let first = talk(e.as_mut());
        e.reset();
        assert_eq!(
            talk(e.as_mut()),
            first,
            "a reset starts from the same prompted state"
        );
        // A second start reads the state back instead of prompting: the same conversation.
        let modified = std::fs::metadata(&state).unwrap().modified().unwrap();
        let mut again = load(&spec, &cfg).unwrap();
        again.reset();
        assert_eq!(talk(again.as_mut()), first);
        assert_eq!(
            std::fs::metadata(&state).unwrap().modified().unwrap(),
            modified
        );
        // A Moshi model refuses a persona with a message that says why.
        let moshi = crate::demo_model::ensure(dir.path(), "moshiko").unwrap();
        let err = load(&moshi, &cfg).err().unwrap();
        assert!(format!("{err:#}").contains("PersonaPlex"), "{err:#}");
    }

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
