//! Several conversations over one loaded Mimi: a stream is a [`Mimi`] whose weights are the
//! model's (shared, never copied) with its own streaming state, and the batched steps run
//! every stream's frame in one pass over the weights.
//!
//! On the CPU engine a batched step reads each weight matrix once for all streams (see
//! `cpu/streams.rs`); each stream's codes and audio are the bits it gets alone. The candle
//! path (CUDA, half precision, or `MOSHID_MIMI_ENGINE=candle`) stacks the streams' frames
//! along a batch dimension: every convolution and every linear layer runs once over all of
//! them (each stream's carried samples gathered in front of its row), and attention runs per
//! stream over its own key/value cache at its own positions.

use super::candle_engine::CandleMimi;
use super::cpu::streams::{DecodeLane, EncodeLane};
use super::cpu::CpuMimi;
use super::{Engine, Mimi, MimiError};

/// Streams a batched step takes on the stack; larger batches run in chunks of this many.
const CHUNK: usize = 16;

impl Mimi {
    /// A new stream of this model: the same weights (shared, not copied), a fresh streaming
    /// state. On the CPU engine its buffers are empty until its first frame sizes them (a
    /// clone, by contrast, copies the stream's state as it is).
    pub fn new_stream(&self) -> Mimi {
        match &self.engine {
            Engine::Cpu(c) => Mimi {
                engine: Engine::Cpu(Box::new(c.fresh())),
                ..*self
            },
            Engine::Candle(_) => {
                let mut m = self.clone();
                m.reset();
                m.reset_profile();
                m
            }
        }
    }

    /// Bytes of one stream's streaming state and buffers once they have their steady size
    /// (convolution buffers, both transformers' key/value rings at full context, quantizer
    /// rows), the weights excluded: what each conversation adds to the loaded model. On the
    /// CPU engine it is measured on a scratch stream after one silent frame (the buffers'
    /// sizes do not change after); on the candle path it is the key/value caches' size.
    pub fn stream_state_bytes(&self) -> usize {
        let Engine::Cpu(_) = &self.engine else {
            return self.candle_kv_bytes;
        };
        let mut m = self.new_stream();
        let mut codes = vec![0u32; self.num_codebooks];
        let mut pcm = vec![0f32; self.frame_samples];
        let ran = m.encode_step(&pcm, &mut codes);
        let ran = ran.and_then(|()| m.decode_step(&codes, &mut pcm));
        match (&m.engine, ran) {
            (Engine::Cpu(c), Ok(())) => c.state_bytes(),
            _ => self.candle_kv_bytes,
        }
    }

    /// Whether `other` is a stream of this same loaded model.
    pub fn shares_weights(&self, other: &Mimi) -> bool {
        match (&self.engine, &other.engine) {
            (Engine::Cpu(a), Engine::Cpu(b)) => a.same_weights(b),
            (Engine::Candle(a), Engine::Candle(b)) => {
                a.same_weights(b) && self.num_codebooks == other.num_codebooks
            }
            _ => false,
        }
    }

    /// [`Mimi::encode_step`] for several streams of one model at once: `streams[i]` encodes
    /// `pcm[i]` (one frame) into `codes[i]`. Checks everything first and runs nothing on an
    /// error (naming the stream); each stream's codes are those it gets alone.
    pub fn encode_step_batch(
        streams: &mut [&mut Mimi],
        pcm: &[&[f32]],
        codes: &mut [&mut [u32]],
    ) -> Result<(), MimiError> {
        check_batch(streams, pcm.len(), codes.len())?;
        for (i, (m, (p, c))) in streams.iter().zip(pcm.iter().zip(codes.iter())).enumerate() {
            m.check_frame(p.len(), 1)
                .and_then(|()| m.check_codes_len(c.len(), 1))
                .map_err(|e| stream_error(i, e))?;
        }
        if !all_cpu(streams) {
            let all = CandleMimi::encode_batch(&mut candles(streams)?, pcm)?;
            for (c, out) in codes
                .iter_mut()
                .zip(all.chunks_exact(all.len() / pcm.len().max(1)))
            {
                c.copy_from_slice(out);
            }
            return Ok(());
        }
        let mut lanes: smallvec::SmallVec<[EncodeLane; CHUNK]> = smallvec::SmallVec::new();
        for ((m, p), c) in streams.iter_mut().zip(pcm).zip(codes.iter_mut()) {
            if let Engine::Cpu(e) = &mut m.engine {
                lanes.push(EncodeLane {
                    m: e,
                    pcm: p,
                    codes: c,
                });
            }
            if lanes.len() == CHUNK {
                CpuMimi::encode_batch(&mut lanes);
                lanes.clear();
            }
        }
        CpuMimi::encode_batch(&mut lanes);
        Ok(())
    }

    /// [`Mimi::decode_step`] for several streams of one model at once: `streams[i]` decodes
    /// `codes[i]` (one frame) into `pcm[i]`. Checks everything first and runs nothing on an
    /// error (naming the stream); each stream's audio is what it gets alone.
    pub fn decode_step_batch(
        streams: &mut [&mut Mimi],
        codes: &[&[u32]],
        pcm: &mut [&mut [f32]],
    ) -> Result<(), MimiError> {
        check_batch(streams, codes.len(), pcm.len())?;
        for (i, (m, (c, p))) in streams.iter().zip(codes.iter().zip(pcm.iter())).enumerate() {
            m.check_frame(p.len(), 1)
                .and_then(|()| m.check_codes_len(c.len(), 1))
                .and_then(|()| m.check_code_values(c.iter().copied(), 0))
                .map_err(|e| stream_error(i, e))?;
        }
        if !all_cpu(streams) {
            let k = streams[0].num_codebooks;
            let all = CandleMimi::decode_batch(&mut candles(streams)?, codes, k)?;
            for (p, out) in pcm
                .iter_mut()
                .zip(all.chunks_exact(all.len() / codes.len().max(1)))
            {
                p.copy_from_slice(out);
            }
            return Ok(());
        }
        let mut lanes: smallvec::SmallVec<[DecodeLane; CHUNK]> = smallvec::SmallVec::new();
        for ((m, c), p) in streams.iter_mut().zip(codes).zip(pcm.iter_mut()) {
            if let Engine::Cpu(e) = &mut m.engine {
                lanes.push(DecodeLane {
                    m: e,
                    codes: c,
                    pcm: p,
                });
            }
            if lanes.len() == CHUNK {
                CpuMimi::decode_batch(&mut lanes);
                lanes.clear();
            }
        }
        CpuMimi::decode_batch(&mut lanes);
        Ok(())
    }
}

/// One input and one output per stream, every stream of the first one's model.
fn check_batch(streams: &[&mut Mimi], inputs: usize, outputs: usize) -> Result<(), MimiError> {
    if inputs != streams.len() || outputs != streams.len() {
        return Err(MimiError::Config(format!(
            "a batched step takes one input and one output per stream: {} streams, {inputs} inputs, {outputs} outputs",
            streams.len()
        )));
    }
    if let Some((first, rest)) = streams.split_first() {
        if let Some(i) = rest.iter().position(|m| !first.shares_weights(m)) {
            return Err(MimiError::Config(format!(
                "stream {} of a batched step is not a stream of the first one's model (use Mimi::new_stream)",
                i + 1
            )));
        }
    }
    Ok(())
}

/// The candle engines of `streams` (all of one model, checked by [`check_batch`]).
fn candles<'a>(streams: &'a mut [&mut Mimi]) -> Result<Vec<&'a mut CandleMimi>, MimiError> {
    streams
        .iter_mut()
        .map(|m| match &mut m.engine {
            Engine::Candle(c) => Ok(&mut **c),
            Engine::Cpu(_) => Err(MimiError::Config(
                "a batched step mixes CPU-engine and candle streams".into(),
            )),
        })
        .collect()
}

fn all_cpu(streams: &[&mut Mimi]) -> bool {
    streams.iter().all(|m| matches!(m.engine, Engine::Cpu(_)))
}

/// `e`, saying which stream of the batch it concerns.
fn stream_error(stream: usize, e: MimiError) -> MimiError {
    MimiError::Stream {
        stream,
        error: Box::new(e),
    }
}
