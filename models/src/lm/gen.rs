//! Streaming generation equal to the reference package's `LMGen`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::model::{KvSnapshot, LmModel, RingKv};
use super::LmConfig;
use super::LmError;

/// Number of generated (and of user) audio codebooks.
pub const AUDIO_CODEBOOKS: usize = 8;

/// Token sampling settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Text temperature.
    pub temp_text: f64,
    /// Audio temperature.
    pub temp_audio: f64,
    /// Top-k for both text and audio.
    pub top_k: usize,
    /// Argmax instead of sampling (temperatures and top-k ignored).
    pub greedy: bool,
    /// Seed of the sampling RNG (ChaCha8): same seed, same tokens.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temp_text: 0.8,
            temp_audio: 0.8,
            top_k: 250,
            greedy: false,
            seed: 299792458,
        }
    }
}

/// Largest temperature and top-k [`Sampling::validate`] accepts.
pub const MAX_TEMPERATURE: f64 = 5.0;
/// Largest top-k (the audio codebook size; text is cut to it as well).
pub const MAX_TOP_K: usize = 2048;

impl Sampling {
    /// The one range check of sampling settings (config file, CLI and MQTT use it):
    /// temperatures in (0, 5] and top-k in 1..=2048, unless greedy.
    pub fn validate(&self) -> Result<(), LmError> {
        if self.greedy {
            return Ok(());
        }
        for (name, t) in [
            ("text temperature", self.temp_text),
            ("audio temperature", self.temp_audio),
        ] {
            // Written so that NaN fails too.
            if !(t > 0.0 && t <= MAX_TEMPERATURE) {
                return Err(LmError::Config(format!(
                    "{name} {t}: use a value in (0, {MAX_TEMPERATURE}]"
                )));
            }
        }
        if !(1..=MAX_TOP_K).contains(&self.top_k) {
            return Err(LmError::Config(format!(
                "top-k {}: use 1..={MAX_TOP_K}",
                self.top_k
            )));
        }
        Ok(())
    }
}

/// One re-aligned output frame: Moshi's text token and its 8 audio codes for the same
/// time position, ready for Mimi decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepOut {
    /// Text token (pad = `existing_text_padding_id`, 0 = end of padding).
    pub text: u32,
    /// Audio codes for Mimi, codebook 0 first.
    pub audio: [u32; AUDIO_CODEBOOKS],
}

/// Wall time of the last step's two halves.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTiming {
    /// Temporal transformer + text head + text sampling.
    pub temporal: Duration,
    /// The 8 depth-transformer steps + audio sampling.
    pub depth: Duration,
}

const UNGENERATED: i64 = -2;

/// Tokens a step is given instead of the ones it would use or sample: one frame of a
/// persona's prompt (NVIDIA's `LMGen.step` with `moshi_tokens` / `text_token` /
/// `input_tokens`, or `step_embeddings`). Each token lands where the user's codes of the same
/// step land (the step's target position plus the stream's delay) and is marked as given, so
/// the depth transformer is teacher-forced by it and it is never replaced by a sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForcedFrame {
    /// The text token (NVIDIA's prompt uses 3 during audio frames, the role's tokens after).
    pub text: Option<u32>,
    /// Moshi's own 8 audio codes (the voice prompt's frames, or the silence frame).
    pub agent: Option<[u32; AUDIO_CODEBOOKS]>,
    /// The user's 8 codes, replacing the step's `user_codes`; may be `card` (the initial
    /// token, which a preset replay gives).
    pub user: Option<[u32; AUDIO_CODEBOOKS]>,
    /// The temporal transformer's summed input embedding (`dim` values), replacing the one
    /// of the step's tokens: a preset's stored embeddings.
    pub embedding: Option<Vec<f32>>,
}

/// One conversation's state on a shared model: KV caches, delay buffers, sampling settings
/// and RNG, and its last logits. Used alone by [`LmGen`] and as a slot of
/// [`super::LmBatch`]; both step it through [`step_many`].
pub(crate) struct Conversation {
    sampling: Sampling,
    /// Audio top-k when it differs from the text one (a web session's `audio_topk`).
    top_k_audio: Option<usize>,
    rng: ChaCha8Rng,
    context: usize,
    main_cache: Vec<RingKv>,
    dep_cache: Vec<RingKv>,
    /// Token ring per stream, `max_delay + 2` wide, as in the reference.
    tokens: Vec<Vec<i64>>,
    /// Per ring entry: the token was given (user codes, a prompt), not sampled; the depth
    /// transformer is teacher-forced by given tokens (NVIDIA's `provided`).
    given: Vec<Vec<bool>>,
    /// PersonaPlex generation ([`LmConfig::is_personaplex`]): user frames one step later,
    /// the initial token given at the first targets, teacher forcing.
    nvidia: bool,
    /// The next step's given tokens (a prompt frame).
    forced: Option<ForcedFrame>,
    /// This step's input embedding, when a prompt frame gives one.
    embedding: Option<Vec<f32>>,
    offset: usize,
    input: Vec<u32>,
    text_logits: Vec<f32>,
    audio_logits: Vec<f32>,
    order: Vec<u32>,
    probs: Vec<f32>,
    last_text: u32,
    /// The depth transformer's samples of the last step, `dep_q` of them.
    last_audio: Vec<u32>,
    card: usize,
    timing: StepTiming,
}

impl Conversation {
    /// A conversation with a temporal attention window of `context` steps; refuses settings
    /// out of range and a KV cache that cannot fit in the memory available.
    pub(crate) fn new(
        model: &LmModel,
        sampling: Sampling,
        context: usize,
    ) -> Result<Self, LmError> {
        sampling.validate()?;
        let kv =
            super::model::MemoryEstimate::checked_kv_bytes(model.config(), context, model.dtype())?;
        // An allocation that fails aborts the process: refuse a cache that cannot fit first.
        if let Some(available) = super::model::mem_available().filter(|_| model.device().is_cpu()) {
            if kv > available {
                return Err(LmError::WontFit {
                    needed: kv,
                    available,
                    hint: format!("the KV cache for context {context}: use a smaller context"),
                });
            }
        }
        let (main_cache, dep_cache) = model.new_caches(context)?;
        let cfg = model.config();
        let ct = cfg.max_delay() + 2;
        Ok(Self {
            rng: ChaCha8Rng::seed_from_u64(sampling.seed),
            sampling,
            top_k_audio: None,
            context,
            main_cache,
            dep_cache,
            tokens: vec![vec![UNGENERATED; ct]; cfg.n_q + 1],
            given: vec![vec![false; ct]; cfg.n_q + 1],
            nvidia: cfg.is_personaplex(),
            forced: None,
            embedding: None,
            offset: 0,
            input: vec![0; cfg.n_q + 1],
            text_logits: vec![0.0; cfg.text_card],
            audio_logits: vec![0.0; cfg.dep_q * cfg.card],
            order: Vec::with_capacity(cfg.text_card.max(cfg.card)),
            probs: Vec::with_capacity(cfg.text_card.max(cfg.card)),
            last_text: 0,
            last_audio: vec![0; cfg.dep_q],
            card: cfg.card,
            timing: StepTiming::default(),
        })
    }

    pub(crate) fn context(&self) -> usize {
        self.context
    }

    pub(crate) fn cache_bytes(&self) -> u64 {
        LmModel::cache_bytes(&self.main_cache) + LmModel::cache_bytes(&self.dep_cache)
    }

    pub(crate) fn fill_context_for_bench(&mut self) -> Result<(), LmError> {
        for c in self.main_cache.iter_mut() {
            c.fill_for_bench()
                .map_err(|e| LmError::Candle(e.to_string()))?;
        }
        Ok(())
    }

    pub(crate) fn steps(&self) -> usize {
        self.offset
    }

    pub(crate) fn reset(&mut self) {
        for c in self.main_cache.iter_mut().chain(self.dep_cache.iter_mut()) {
            c.reset();
        }
        for t in self.tokens.iter_mut() {
            t.fill(UNGENERATED);
        }
        for g in self.given.iter_mut() {
            g.fill(false);
        }
        self.forced = None;
        self.offset = 0;
        self.rng = ChaCha8Rng::seed_from_u64(self.sampling.seed);
    }

    pub(crate) fn set_sampling(&mut self, sampling: Sampling, top_k_audio: Option<usize>) {
        self.sampling = sampling;
        self.top_k_audio = top_k_audio;
        self.rng = ChaCha8Rng::seed_from_u64(sampling.seed);
    }

    pub(crate) fn last_sampled(&self) -> (u32, [u32; AUDIO_CODEBOOKS]) {
        let mut a = [0; AUDIO_CODEBOOKS];
        a.copy_from_slice(&self.last_audio[..AUDIO_CODEBOOKS]);
        (self.last_text, a)
    }

    /// All `dep_q` tokens the depth transformer sampled at the last step.
    pub(crate) fn last_sampled_all(&self) -> &[u32] {
        &self.last_audio
    }

    /// Gives the next step's tokens (see [`ForcedFrame`]); refused on a Moshi model, whose
    /// reference generation has no prompt phase.
    pub(crate) fn force_next(&mut self, cfg: &LmConfig, frame: ForcedFrame) -> Result<(), LmError> {
        if !self.nvidia {
            return Err(LmError::Input(
                "prompts need a PersonaPlex model (dep_q 16): this is a Moshi checkpoint".into(),
            ));
        }
        let audio = frame.agent.iter().chain(frame.user.iter()).flatten();
        if let Some(bad) = audio.copied().find(|&c| c as usize > cfg.card) {
            return Err(LmError::Input(format!(
                "prompt audio code {bad} out of range: this model's codebooks have {} entries",
                cfg.card
            )));
        }
        if let Some(t) = frame.text.filter(|&t| t as usize > cfg.text_card) {
            return Err(LmError::Input(format!(
                "prompt text token {t} out of range: the vocabulary has {} entries",
                cfg.text_card
            )));
        }
        if frame.embedding.as_ref().is_some_and(|e| e.len() != cfg.dim) {
            return Err(LmError::Input(format!(
                "prompt embedding has the wrong width: the model's is {}",
                cfg.dim
            )));
        }
        self.forced = Some(frame);
        Ok(())
    }

    /// The token given for stream `s` at the step's target position, if any.
    fn given_at_target(&self, s: usize) -> Option<u32> {
        let at = (self.offset + 1) % self.tokens[0].len();
        self.given[s][at].then(|| self.tokens[s][at] as u32)
    }

    /// Overwrites the token ring from a preset's `cache` (NVIDIA's ring `[streams, width]`
    /// after its voice prompt, at NVIDIA offset `self.offset + 1`): the entries this
    /// conversation will still read, the next input and the targets after it.
    pub(crate) fn load_token_ring(&mut self, cache: &[i64], width: usize) -> Result<(), LmError> {
        let streams = self.tokens.len();
        if width == 0 || cache.len() != streams * width {
            return Err(LmError::Input(format!(
                "preset cache holds {} tokens, expected {streams} streams x {width}",
                cache.len()
            )));
        }
        let ct = self.tokens[0].len();
        for pos in self.offset..self.offset + ct - 1 {
            for s in 0..streams {
                // NVIDIA's step count is one ahead of ours (its first step runs no model).
                self.tokens[s][pos % ct] = cache[s * width + pos % width];
            }
        }
        Ok(())
    }

    pub(crate) fn last_text_logits(&self) -> &[f32] {
        &self.text_logits
    }

    pub(crate) fn last_audio_logits(&self) -> &[f32] {
        &self.audio_logits
    }

    pub(crate) fn last_timing(&self) -> StepTiming {
        self.timing
    }

    /// Checks the user's codes and sets `self.input` (the 17 delayed input tokens).
    fn prepare(&mut self, cfg: &LmConfig, user_codes: &[u32]) -> Result<(), LmError> {
        let forced = self.forced.take().unwrap_or_default();
        let given_user = forced.user;
        let user_codes = given_user.as_ref().map_or(user_codes, |u| &u[..]);
        if given_user.is_none() {
            check_user_codes(cfg, user_codes)?;
        }
        let ct = self.tokens[0].len();
        let delays = &cfg.delays;
        // NVIDIA's PersonaPlex step writes what it is given one position later than Kyutai's
        // (its first step only stores the initial tokens), so a user frame reaches the
        // temporal transformer one step later.
        let lag = self.nvidia as usize;
        let mut give = |s: usize, t: u32| {
            let at = (self.offset + lag + delays[s]) % ct;
            self.tokens[s][at] = t as i64;
            self.given[s][at] = true;
        };
        let user0 = cfg.dep_q.min(AUDIO_CODEBOOKS) + 1;
        for (k, &c) in user_codes[..AUDIO_CODEBOOKS].iter().enumerate() {
            give(user0 + k, c);
        }
        for (k, &c) in forced.agent.iter().flatten().enumerate() {
            give(1 + k, c);
        }
        if let Some(t) = forced.text {
            give(0, t);
        }
        if self.nvidia {
            self.give_initial_targets(cfg);
        }
        self.embedding = forced.embedding;
        self.read_input(cfg)
    }

    /// NVIDIA's first targets of a delayed stream are its initial token, given.
    fn give_initial_targets(&mut self, cfg: &LmConfig) {
        let ct = self.tokens[0].len();
        let target = self.offset + 1;
        for (s, &d) in cfg.delays.iter().enumerate() {
            if target <= d {
                let initial = if s == 0 { cfg.text_card } else { cfg.card };
                self.tokens[s][target % ct] = initial as i64;
                self.given[s][target % ct] = true;
            }
        }
    }

    /// Sets `self.input` (the 17 delayed input tokens) from the ring.
    fn read_input(&mut self, cfg: &LmConfig) -> Result<(), LmError> {
        let ct = self.tokens[0].len();
        let delays = &cfg.delays;
        for (s, input) in self.input.iter_mut().enumerate() {
            let initial = if s == 0 { cfg.text_card } else { cfg.card } as u32;
            *input = if self.offset <= delays[s] {
                initial
            } else {
                let t = self.tokens[s][self.offset % ct];
                if t < 0 {
                    return Err(LmError::Input(format!(
                        "internal: stream {s} has no token at step {}",
                        self.offset
                    )));
                }
                t as u32
            };
        }
        Ok(())
    }
}

/// Checks a step's user codes: at least 8, each inside the codebook.
fn check_user_codes(cfg: &LmConfig, user_codes: &[u32]) -> Result<(), LmError> {
    {
        if user_codes.len() < AUDIO_CODEBOOKS {
            return Err(LmError::Input(format!(
                "step needs {AUDIO_CODEBOOKS} user codes, got {}",
                user_codes.len()
            )));
        }
        if let Some(bad) = user_codes[..AUDIO_CODEBOOKS]
            .iter()
            .find(|&&c| c as usize >= cfg.card)
        {
            return Err(LmError::Input(format!(
                "user code {bad} out of range: this model's codebooks have {} entries",
                cfg.card
            )));
        }
    }
    Ok(())
}

impl Conversation {
    /// Stores the step's sampled tokens and returns the re-aligned frame once the delays
    /// are filled.
    fn finish(&mut self, cfg: &LmConfig, timing: StepTiming) -> Option<StepOut> {
        self.timing = timing;
        let ct = self.tokens[0].len();
        self.offset += 1;
        let pos = self.offset % ct;
        let sampled = std::iter::once(self.last_text).chain(self.last_audio.iter().copied());
        for (s, t) in sampled.enumerate() {
            if !self.given[s][pos] {
                self.tokens[s][pos] = t as i64;
            }
        }
        // The step's input entry is done with: free for the writes of later steps.
        for g in self.given.iter_mut() {
            g[(self.offset - 1) % ct] = false;
        }
        let max_delay = cfg.max_delay();
        if self.offset <= max_delay {
            return None;
        }
        let delays = &cfg.delays;
        let at = |s: usize| self.tokens[s][(self.offset - max_delay + delays[s]) % ct];
        let mut audio = [0u32; AUDIO_CODEBOOKS];
        for (k, a) in audio.iter_mut().enumerate() {
            *a = at(1 + k) as u32;
        }
        Some(StepOut {
            text: at(0) as u32,
            audio,
        })
    }
}

/// A conversation's state apart from it (after a persona's prompt): the temporal KV entries
/// written so far, the token rings and the position. The depth transformer's cache is not
/// kept: every step starts it afresh.
#[derive(Debug)]
pub(crate) struct ConvSnapshot {
    main: Vec<KvSnapshot>,
    tokens: Vec<Vec<i64>>,
    given: Vec<Vec<bool>>,
    offset: usize,
    context: usize,
    last_text: u32,
    last_audio: Vec<u32>,
}

impl ConvSnapshot {
    /// Bytes of KV entries held.
    pub(crate) fn bytes(&self) -> u64 {
        self.main.iter().map(KvSnapshot::bytes).sum()
    }

    /// Steps the conversation had run.
    pub(crate) fn steps(&self) -> usize {
        self.offset
    }

    /// Its tensors for a file (see [`super::PromptedState::save`]).
    pub(crate) fn to_tensors(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        let dev = &candle_core::Device::Cpu;
        let mut out = HashMap::new();
        for (l, m) in self.main.iter().enumerate() {
            m.to_tensors(&format!("kv.{l}."), &mut out)?;
        }
        let (streams, ct) = (self.tokens.len(), self.tokens[0].len());
        let tokens: Vec<i64> = self.tokens.concat();
        let given: Vec<u8> = self.given.iter().flatten().map(|&g| g as u8).collect();
        let audio: Vec<i64> = self.last_audio.iter().map(|&a| a as i64).collect();
        let state = [
            self.offset,
            self.context,
            self.last_text as usize,
            self.main.len(),
        ];
        let state: Vec<i64> = state.iter().map(|&v| v as i64).collect();
        out.insert(
            "tokens".into(),
            Tensor::from_vec(tokens, (streams, ct), dev)?,
        );
        out.insert("given".into(), Tensor::from_vec(given, (streams, ct), dev)?);
        out.insert("last_audio".into(), Tensor::new(audio, dev)?);
        out.insert("state".into(), Tensor::new(state, dev)?);
        Ok(out)
    }

    /// Reads what [`ConvSnapshot::to_tensors`] wrote, onto `device`.
    pub(crate) fn from_tensors(
        t: &HashMap<String, Tensor>,
        device: &candle_core::Device,
    ) -> candle_core::Result<Self> {
        let get = |n: &str| {
            t.get(n)
                .ok_or_else(|| candle_core::Error::Msg(format!("no tensor `{n}`")))
        };
        let state = get("state")?.to_vec1::<i64>()?;
        let [offset, context, last_text, layers] = state[..] else {
            candle_core::bail!("`state` has {} entries, expected 4", state.len());
        };
        if [offset, context, last_text, layers].iter().any(|&v| v < 0) {
            candle_core::bail!("negative entries in `state`");
        }
        let main = (0..layers as usize)
            .map(|l| KvSnapshot::from_tensors(&format!("kv.{l}."), t, device))
            .collect::<candle_core::Result<_>>()?;
        let tokens = get("tokens")?.to_vec2::<i64>()?;
        let given = get("given")?.to_vec2::<u8>()?;
        let given = given
            .into_iter()
            .map(|r| r.into_iter().map(|g| g != 0).collect())
            .collect();
        let last_audio = get("last_audio")?.to_vec1::<i64>()?;
        Ok(Self {
            main,
            tokens,
            given,
            offset: offset as usize,
            context: context as usize,
            last_text: last_text as u32,
            last_audio: last_audio.into_iter().map(|a| a as u32).collect(),
        })
    }
}

impl Conversation {
    /// The state to restore later (see [`ConvSnapshot`]).
    pub(crate) fn snapshot(&self) -> Result<ConvSnapshot, LmError> {
        let main = self.main_cache.iter().map(RingKv::snapshot);
        Ok(ConvSnapshot {
            main: main
                .collect::<candle_core::Result<_>>()
                .map_err(|e| LmError::Candle(e.to_string()))?,
            tokens: self.tokens.clone(),
            given: self.given.clone(),
            offset: self.offset,
            context: self.context,
            last_text: self.last_text,
            last_audio: self.last_audio.clone(),
        })
    }

    /// Continues from `s` (same model and context) with this conversation's sampling, the RNG
    /// back to its seed.
    pub(crate) fn restore(&mut self, s: &ConvSnapshot) -> Result<(), LmError> {
        let shape_ok = s.tokens.len() == self.tokens.len()
            && s.tokens
                .iter()
                .chain(&self.tokens)
                .all(|t| t.len() == self.tokens[0].len())
            && s.given.len() == self.given.len()
            && s.given.iter().all(|g| g.len() == self.tokens[0].len())
            && s.last_audio.len() == self.last_audio.len();
        if !shape_ok {
            return Err(LmError::Config(
                "a prompted state made for another model shape: prompt again with this model"
                    .into(),
            ));
        }
        if s.context != self.context || s.main.len() != self.main_cache.len() {
            return Err(LmError::Config(format!(
                "a prompted state made for a context of {} steps cannot start a conversation with context {}: prompt again with this context",
                s.context, self.context
            )));
        }
        for (ring, snap) in self.main_cache.iter_mut().zip(&s.main) {
            ring.restore(snap)
                .map_err(|e| LmError::Candle(e.to_string()))?;
        }
        for r in self.dep_cache.iter_mut() {
            r.reset();
        }
        self.tokens.clone_from(&s.tokens);
        self.given.clone_from(&s.given);
        self.offset = s.offset;
        self.last_text = s.last_text;
        self.last_audio.clone_from(&s.last_audio);
        self.forced = None;
        self.embedding = None;
        self.rng = ChaCha8Rng::seed_from_u64(self.sampling.seed);
        Ok(())
    }
}

/// One step of every conversation in `convs` (row `i` with `codes[i]`), sharing each read
/// of the weights: the temporal transformer over all rows at once, attention per row over
/// its own ring, then the depth transformer over the same rows. A row whose input is bad
/// gets its error and is left out of the step; a compute error fails every row of the step
/// (it is the model's, not a conversation's). Returns one result per row, in order.
pub(crate) fn step_many(
    model: &LmModel,
    convs: &mut [&mut Conversation],
    codes: &[&[u32]],
) -> Vec<Result<Option<StepOut>, LmError>> {
    let cfg = model.config();
    let mut results: Vec<Result<Option<StepOut>, LmError>> = Vec::with_capacity(convs.len());
    let mut rows: Vec<&mut Conversation> = Vec::with_capacity(convs.len());
    let mut at = Vec::with_capacity(convs.len());
    for (i, (c, codes)) in convs.iter_mut().zip(codes).enumerate() {
        match c.prepare(cfg, codes) {
            Ok(()) => {
                results.push(Ok(None));
                rows.push(&mut **c);
                at.push(i);
            }
            Err(e) => results.push(Err(e)),
        }
    }
    if rows.is_empty() {
        return results;
    }
    match step_rows(model, &mut rows) {
        Ok(outs) => {
            for (i, o) in at.into_iter().zip(outs) {
                results[i] = Ok(o);
            }
        }
        Err(e) => {
            for i in at {
                results[i] = Err(LmError::Candle(e.clone()));
            }
        }
    }
    results
}

/// The model half of [`step_many`] over rows whose inputs are prepared.
fn step_rows(
    model: &LmModel,
    rows: &mut [&mut Conversation],
) -> Result<Vec<Option<StepOut>>, String> {
    let cfg = model.config();
    let t0 = Instant::now();
    let (tout, text_logits) = {
        // The inputs copied out, so that the caches can be borrowed mutably beside them.
        let inputs: Vec<u32> = rows.iter().flat_map(|c| c.input.iter().copied()).collect();
        let refs: Vec<&[u32]> = inputs.chunks_exact(cfg.n_q + 1).collect();
        let pos: Vec<usize> = rows.iter().map(|c| c.offset).collect();
        let embeds: Vec<Option<Vec<f32>>> = rows.iter_mut().map(|c| c.embedding.take()).collect();
        let mut caches: Vec<&mut [RingKv]> = rows
            .iter_mut()
            .map(|c| c.main_cache.as_mut_slice())
            .collect();
        model
            .temporal(&refs, &embeds, &pos, &mut caches)
            .map_err(|e| format!("temporal step {}: {e}", pos[0]))?
    };
    let card = cfg.card;
    copy_rows(&text_logits, rows, |c| &mut c.text_logits)?;
    let mut prev: Vec<u32> = rows.iter_mut().map(|c| c.sample(true, 0)).collect();
    for (c, p) in rows.iter_mut().zip(prev.iter_mut()) {
        c.last_text = *p;
        // Teacher forcing (PersonaPlex): the depth transformer continues from the given
        // token, not the sampled one.
        *p = c.given_at_target(0).unwrap_or(*p);
    }
    let t1 = Instant::now();
    for c in rows.iter_mut() {
        for r in c.dep_cache.iter_mut() {
            r.reset();
        }
    }
    for k in 0..cfg.dep_q {
        let logits = {
            let mut caches: Vec<&mut [RingKv]> = rows
                .iter_mut()
                .map(|c| c.dep_cache.as_mut_slice())
                .collect();
            model
                .depth(k, &prev, &tout, &mut caches)
                .map_err(|e| format!("depth step {k}: {e}"))?
        };
        copy_rows(&logits, rows, |c| {
            &mut c.audio_logits[k * card..(k + 1) * card]
        })?;
        for (c, p) in rows.iter_mut().zip(prev.iter_mut()) {
            let t = c.sample(false, k);
            c.last_audio[k] = t;
            *p = c.given_at_target(1 + k).unwrap_or(t);
        }
    }
    let timing = StepTiming {
        temporal: t1 - t0,
        depth: t1.elapsed(),
    };
    Ok(rows.iter_mut().map(|c| c.finish(cfg, timing)).collect())
}

/// Copies row `i` of `t` (`[B, 1, n]`) into `dst(rows[i])`.
fn copy_rows(
    t: &Tensor,
    rows: &mut [&mut Conversation],
    dst: impl Fn(&mut Conversation) -> &mut [f32],
) -> Result<(), String> {
    let v = t
        .flatten_all()
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| e.to_string())?;
    let n = v.len() / rows.len().max(1);
    for (c, src) in rows.iter_mut().zip(v.chunks_exact(n.max(1))) {
        let out = dst(c);
        if out.len() != n {
            return Err(format!("logits have {n} entries, expected {}", out.len()));
        }
        out.copy_from_slice(src);
    }
    Ok(())
}

/// Streaming generator: feed the user's 8 codes every 80 ms, get Moshi's text and audio.
/// A batch of one: the same [`step_many`] as [`super::LmBatch`].
///
/// Holds the rotating KV cache (fixed `context`), so memory stays flat however long it runs.
pub struct LmGen {
    model: Arc<LmModel>,
    conv: Conversation,
}

impl LmGen {
    /// A generator with a temporal attention window of `context` steps (the KV cache size;
    /// the model was trained with `LmConfig::context`, 3000 for the 7B).
    pub fn new(
        model: impl Into<Arc<LmModel>>,
        sampling: Sampling,
        context: usize,
    ) -> Result<Self, LmError> {
        let model = model.into();
        let conv = Conversation::new(&model, sampling, context)?;
        Ok(Self { model, conv })
    }

    /// The model.
    pub fn model(&self) -> &Arc<LmModel> {
        &self.model
    }

    /// Attention window in steps.
    pub fn context(&self) -> usize {
        self.conv.context()
    }

    /// Bytes held by the KV caches (constant for the generator's life).
    pub fn cache_bytes(&self) -> u64 {
        self.conv.cache_bytes()
    }

    /// For benchmarks: marks the temporal KV cache as full (the keys/values already there
    /// are kept, zeros at first), so that the next steps attend over the whole window and
    /// cost what they cost after `context` steps of conversation. Generation quality after
    /// this is meaningless; [`LmGen::reset`] undoes it.
    #[doc(hidden)]
    pub fn fill_context_for_bench(&mut self) -> Result<(), LmError> {
        self.conv.fill_context_for_bench()
    }

    /// Steps run since creation or the last reset.
    pub fn steps(&self) -> usize {
        self.conv.steps()
    }

    /// Forgets the conversation (caches, delays, RNG back to the seed).
    pub fn reset(&mut self) {
        self.conv.reset()
    }

    /// Samples with these settings from now on (`top_k_audio`: audio's own top-k, None = the
    /// text one) and re-seeds the RNG: one conversation's settings (Kyutai's per-session
    /// query parameters). Call before [`LmGen::reset`] or at a conversation's start.
    pub fn set_sampling(&mut self, sampling: Sampling, top_k_audio: Option<usize>) {
        self.conv.set_sampling(sampling, top_k_audio)
    }

    /// Tokens sampled by the last step, before delay re-alignment: text, then 8 audio codes.
    pub fn last_sampled(&self) -> (u32, [u32; AUDIO_CODEBOOKS]) {
        self.conv.last_sampled()
    }

    /// Text logits of the last step (f32, `text_card` entries).
    pub fn last_text_logits(&self) -> &[f32] {
        self.conv.last_text_logits()
    }

    /// Audio logits of the last step, `dep_q` rows of `card` entries.
    pub fn last_audio_logits(&self) -> &[f32] {
        self.conv.last_audio_logits()
    }

    /// Timing of the last step.
    pub fn last_timing(&self) -> StepTiming {
        self.conv.last_timing()
    }

    /// One 80 ms step: the user's 8 Mimi codes in; once the delays are filled (from the
    /// second step on), Moshi's re-aligned text token and 8 audio codes out.
    pub fn step(&mut self, user_codes: &[u32]) -> Result<Option<StepOut>, LmError> {
        let model = &self.model;
        let conv = &mut self.conv;
        let mut run = move || step_many(model, &mut [conv], &[user_codes]).remove(0);
        if model.device().is_cpu() {
            // Run the whole step on a rayon worker: the CPU matmuls (lm::qgemv) split over
            // rayon, and from inside the pool each one is a cheap fork instead of a hand-off
            // from this thread and back (two thread wake-ups per matmul, ~250 per step).
            return rayon::scope(|_| run());
        }
        run()
    }
}

impl LmGen {
    /// Runs a persona's prompt from step 0 (NVIDIA's `step_system_prompts`), calling `each`
    /// after every step (parity tests read the logits there), and returns the state to start
    /// conversations from. The RNG is back at its seed afterwards, so a conversation from
    /// this state and one from [`LmGen::restore_prompted`] sample the same tokens.
    pub fn run_prompt(
        &mut self,
        prompt: &super::PersonaPrompt,
        mut each: impl FnMut(&Self),
    ) -> Result<super::PromptedState, LmError> {
        let steps = prompt.steps(self.model.config());
        self.reset();
        let ((), elapsed) = super::persona::timed(|| {
            for step in steps {
                self.conv.force_next(self.model.config(), step.frame)?;
                self.step(&super::persona::SINE_TOKENS)?;
                if let Some((cache, width)) = &step.then_ring {
                    self.conv.load_token_ring(cache, *width)?;
                }
                each(self);
            }
            Ok(())
        })?;
        self.conv.rng = ChaCha8Rng::seed_from_u64(self.conv.sampling.seed);
        Ok(super::PromptedState {
            snap: self.conv.snapshot()?,
            elapsed,
        })
    }

    /// Continues from a persona's prompted state (made on this model with this context),
    /// with this generator's sampling settings and its RNG at the seed.
    pub fn restore_prompted(&mut self, state: &super::PromptedState) -> Result<(), LmError> {
        self.conv.restore(&state.snap)
    }

    /// All `dep_q` audio tokens the depth transformer sampled at the last step (PersonaPlex:
    /// Moshi's 8, then its guess of the user's 8), before teacher forcing.
    pub fn last_sampled_all(&self) -> &[u32] {
        self.conv.last_sampled_all()
    }
}

impl Conversation {
    /// Samples from the text logits (`text`) or audio row `k`, as the reference's
    /// `sample_token`: argmax, or softmax(logits / temp) restricted to the top-k.
    fn sample(&mut self, text: bool, k: usize) -> u32 {
        let card = self.card;
        let logits: &[f32] = if text {
            &self.text_logits
        } else {
            &self.audio_logits[k * card..(k + 1) * card]
        };
        let temp = if text {
            self.sampling.temp_text
        } else {
            self.sampling.temp_audio
        };
        if self.sampling.greedy || temp <= 0.0 {
            return argmax(logits);
        }
        self.order.clear();
        self.order.extend(0..logits.len() as u32);
        let top_k = match (text, self.top_k_audio) {
            (false, Some(k)) => k,
            _ => self.sampling.top_k,
        };
        let kk = if top_k == 0 {
            logits.len()
        } else {
            top_k.min(logits.len())
        };
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        if kk < logits.len() {
            self.order.select_nth_unstable_by(kk - 1, by_logit);
            self.order.truncate(kk);
        }
        let max = self
            .order
            .iter()
            .map(|&i| logits[i as usize])
            .fold(f32::NEG_INFINITY, f32::max);
        self.probs.clear();
        let mut sum = 0f64;
        for &i in &self.order {
            let p = (((logits[i as usize] - max) as f64) / temp).exp();
            sum += p;
            self.probs.push(p as f32);
        }
        let mut u = self.rng.random::<f64>() * sum;
        for (j, &p) in self.probs.iter().enumerate() {
            u -= p as f64;
            if u <= 0.0 {
                return self.order[j];
            }
        }
        self.order[self.order.len() - 1]
    }
}

/// First index of the maximum (torch.argmax's tie rule).
fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}
