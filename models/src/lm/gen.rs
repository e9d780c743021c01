//! Streaming generation equal to the reference package's `LMGen`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::model::{LmModel, RingKv};
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
    offset: usize,
    input: Vec<u32>,
    text_logits: Vec<f32>,
    audio_logits: Vec<f32>,
    order: Vec<u32>,
    probs: Vec<f32>,
    last_text: u32,
    last_audio: [u32; AUDIO_CODEBOOKS],
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
            offset: 0,
            input: vec![0; cfg.n_q + 1],
            text_logits: vec![0.0; cfg.text_card],
            audio_logits: vec![0.0; cfg.dep_q * cfg.card],
            order: Vec::with_capacity(cfg.text_card.max(cfg.card)),
            probs: Vec::with_capacity(cfg.text_card.max(cfg.card)),
            last_text: 0,
            last_audio: [0; AUDIO_CODEBOOKS],
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
        self.offset = 0;
        self.rng = ChaCha8Rng::seed_from_u64(self.sampling.seed);
    }

    pub(crate) fn set_sampling(&mut self, sampling: Sampling, top_k_audio: Option<usize>) {
        self.sampling = sampling;
        self.top_k_audio = top_k_audio;
        self.rng = ChaCha8Rng::seed_from_u64(sampling.seed);
    }

    pub(crate) fn last_sampled(&self) -> (u32, [u32; AUDIO_CODEBOOKS]) {
        (self.last_text, self.last_audio)
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
        let ct = self.tokens[0].len();
        let delays = &cfg.delays;
        let user0 = cfg.dep_q + 1;
        for (k, &c) in user_codes[..AUDIO_CODEBOOKS].iter().enumerate() {
            let s = user0 + k;
            self.tokens[s][(self.offset + delays[s]) % ct] = c as i64;
        }
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

    /// Stores the step's sampled tokens and returns the re-aligned frame once the delays
    /// are filled.
    fn finish(&mut self, cfg: &LmConfig, timing: StepTiming) -> Option<StepOut> {
        self.timing = timing;
        let ct = self.tokens[0].len();
        self.offset += 1;
        let pos = self.offset % ct;
        self.tokens[0][pos] = self.last_text as i64;
        for k in 0..cfg.dep_q {
            self.tokens[1 + k][pos] = self.last_audio[k] as i64;
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
        let mut caches: Vec<&mut [RingKv]> = rows
            .iter_mut()
            .map(|c| c.main_cache.as_mut_slice())
            .collect();
        model
            .temporal(&refs, &pos, &mut caches)
            .map_err(|e| format!("temporal step {}: {e}", pos[0]))?
    };
    let card = cfg.card;
    copy_rows(&text_logits, rows, |c| &mut c.text_logits)?;
    let mut prev: Vec<u32> = rows.iter_mut().map(|c| c.sample(true, 0)).collect();
    for (c, &t) in rows.iter_mut().zip(&prev) {
        c.last_text = t;
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
            *p = c.sample(false, k);
            c.last_audio[k] = *p;
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

impl Conversation {
    /// Samples from the text logits (`text`) or audio row `k`, as the reference's
    /// `sample_token`: argmax, or softmax(logits / temp) restricted to the top-k.
    fn sample(&mut self, text: bool, k: usize) -> u32 {
        let card = self.audio_logits.len() / AUDIO_CODEBOOKS;
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
