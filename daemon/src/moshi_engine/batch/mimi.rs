//! The slots' Mimi streams stepped together: one batched encode of every frame's input and
//! one batched decode of every slot's pending frame per step, so Mimi's weights are read once
//! for all conversations ([`Mimi::encode_step_batch`]). Each slot's stream is a
//! [`Mimi::new_stream`] of the model's Mimi (shared weights, its own state); a frame that
//! cannot be coded (a slot not taken, a wrong length) fails alone, before the batch runs.

use super::super::decode;
use super::SlotState;
use crate::engine::{BatchFrame, EngineError};
use moshid_models::mimi::Mimi;

/// Each healthy frame's slot with the frame's index, each slot once (a second frame for a
/// slot fails).
fn taken<'s>(
    slots: &'s mut [Option<SlotState>],
    frames: &mut [BatchFrame<'_>],
) -> Vec<(usize, &'s mut SlotState)> {
    let mut out: Vec<(usize, &'s mut SlotState)> = Vec::with_capacity(frames.len());
    let mut seen = vec![false; frames.len()];
    for (si, s) in slots.iter_mut().enumerate() {
        let Some(s) = s.as_mut() else { continue };
        let mut mine = frames.iter().enumerate().filter(|(_, f)| f.slot == si);
        if let Some((fi, f)) = mine.next() {
            seen[fi] = true;
            if f.result.is_ok() {
                out.push((fi, s));
            }
        }
        for (fi, _) in mine {
            seen[fi] = true;
        }
    }
    for (fi, f) in frames.iter_mut().enumerate() {
        if !seen[fi] {
            f.result = Err(EngineError(format!(
                "conversation slot {} is not taken",
                f.slot
            )));
        } else if f.result.is_ok() && !out.iter().any(|(i, _)| *i == fi) {
            f.result = Err(EngineError(format!(
                "slot {} has two frames in one step",
                f.slot
            )));
        }
    }
    out
}

/// Encodes every healthy frame's input into its slot's codes, in one batched step.
pub(in crate::moshi_engine) fn encode(
    slots: &mut [Option<SlotState>],
    frames: &mut [BatchFrame<'_>],
) {
    let mut rows = taken(slots, frames);
    rows.retain(|(fi, s)| {
        let (got, want) = (frames[*fi].input.len(), s.mimi.frame_samples());
        if got != want {
            frames[*fi].result = Err(EngineError(format!(
                "Mimi encode: expected {want} samples, got {got}"
            )));
        }
        got == want
    });
    let mut streams: Vec<&mut Mimi> = Vec::with_capacity(rows.len());
    let mut codes: Vec<&mut [u32]> = Vec::with_capacity(rows.len());
    let mut inputs: Vec<&[f32]> = Vec::with_capacity(rows.len());
    for (fi, s) in rows.iter_mut() {
        streams.push(&mut s.mimi);
        codes.push(&mut s.codes);
        inputs.push(frames[*fi].input);
    }
    if let Err(e) = Mimi::encode_step_batch(&mut streams, &inputs, &mut codes) {
        for (fi, _) in &rows {
            frames[*fi].result = Err(EngineError(format!("Mimi encode: {e}")));
        }
    }
}

/// Decodes each healthy frame's slot's pending frame (taken; silence when none) into the
/// frame's output, the slots with one in one batched step.
pub(in crate::moshi_engine) fn decode_pending(
    slots: &mut [Option<SlotState>],
    frames: &mut [BatchFrame<'_>],
) {
    let mut rows = Vec::with_capacity(frames.len());
    for (fi, s) in taken(slots, frames) {
        match s.pending.take() {
            Some(p) => rows.push((fi, s, p.audio)),
            None => {
                if let Err(e) = decode(&mut s.mimi, None, frames[fi].output) {
                    frames[fi].result = Err(e);
                }
            }
        }
    }
    // In the frames' order, as the outputs below are.
    rows.sort_by_key(|(fi, _, _)| *fi);
    let order: Vec<usize> = rows.iter().map(|(fi, _, _)| *fi).collect();
    let mut pcm: Vec<&mut [f32]> = frames
        .iter_mut()
        .enumerate()
        .filter(|(fi, _)| order.contains(fi))
        .map(|(_, f)| &mut *f.output)
        .collect();
    let mut streams: Vec<&mut Mimi> = Vec::with_capacity(rows.len());
    let mut codes: Vec<&[u32]> = Vec::with_capacity(rows.len());
    for (_, s, audio) in rows.iter_mut() {
        streams.push(&mut s.mimi);
        codes.push(&audio[..]);
    }
    if let Err(e) = Mimi::decode_step_batch(&mut streams, &codes, &mut pcm) {
        pcm.iter_mut().for_each(|p| p.fill(0.0));
        drop(pcm);
        for fi in order {
            frames[fi].result = Err(EngineError(format!("Mimi decode: {e}")));
        }
    }
}
