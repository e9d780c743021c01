//! The scenario shared by the Mimi stream tests: streams join a batch at different steps, one
//! leaves and re-joins with a fresh state, and each one's codes and audio are compared with
//! the same stream run by itself on its own loaded model.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use moshid_models::mimi::Mimi;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mimi")
}

/// The committed speech clip (24 kHz), the input every stream reads from its own offset.
fn speech() -> Vec<f32> {
    let t = candle_core::safetensors::load(fixtures().join("reference.safetensors"), &Device::Cpu)
        .expect("reference fixture");
    let pcm: &Tensor = t.get("pcm").expect("fixture pcm");
    pcm.to_vec1().expect("pcm values")
}

fn snr_db(reference: &[f32], ours: &[f32]) -> f64 {
    let (mut s, mut n) = (0f64, 0f64);
    for (a, b) in reference.iter().zip(ours) {
        s += (*a as f64).powi(2);
        n += (*a as f64 - *b as f64).powi(2);
    }
    10.0 * (s / n.max(1e-300)).log10()
}

/// One stream of the scenario: active from `join` (a fresh state) to the end, except
/// `away` (left at its start, re-joined with a fresh state at its end).
struct Plan {
    join: usize,
    away: Option<(usize, usize)>,
    /// Where in the clip its input starts, and its gain.
    offset: usize,
    gain: f32,
}

const PLANS: [Plan; 4] = [
    Plan {
        join: 0,
        away: None,
        offset: 0,
        gain: 1.0,
    },
    Plan {
        join: 5,
        away: None,
        offset: 7 * 1920 + 311,
        gain: 0.7,
    },
    Plan {
        join: 17,
        away: None,
        offset: 3 * 1920 + 1000,
        gain: 1.3,
    },
    Plan {
        join: 0,
        away: Some((9, 12)),
        offset: 11 * 1920 + 77,
        gain: 0.9,
    },
];

impl Plan {
    fn active(&self, step: usize) -> bool {
        step >= self.join && !self.away.is_some_and(|(a, b)| (a..b).contains(&step))
    }

    /// Whether the stream starts afresh at `step`.
    fn starts(&self, step: usize) -> bool {
        step == self.join || self.away.is_some_and(|(_, b)| b == step)
    }

    fn frame(&self, clip: &[f32], step: usize, fs: usize) -> Vec<f32> {
        (0..fs)
            .map(|i| clip[(self.offset + step * fs + i) % clip.len()] * self.gain)
            .collect()
    }
}

/// Per stream and active step: (codes, decoded audio).
type Trace = Vec<Vec<(Vec<u32>, Vec<f32>)>>;

/// Each stream alone on its own model, one step at a time.
fn alone(load: &dyn Fn() -> Mimi, clip: &[f32], steps: usize) -> Trace {
    PLANS
        .iter()
        .map(|p| {
            let mut m = load();
            let fs = m.frame_samples();
            let mut out = Vec::new();
            for step in (0..steps).filter(|&s| p.active(s)) {
                if p.starts(step) {
                    m.reset();
                }
                let mut codes = vec![0u32; m.num_codebooks()];
                m.encode_step(&p.frame(clip, step, fs), &mut codes).unwrap();
                let mut pcm = vec![0f32; fs];
                m.decode_step(&codes, &mut pcm).unwrap();
                out.push((codes, pcm));
            }
            out
        })
        .collect()
}

/// All streams over one model, the active ones in one batched encode and decode per step.
/// The decode takes each stream's codes from `alone` (the same when the encodes agree), so
/// that a code flipped by a near tie costs one frame's comparison, not the rest of the stream.
fn together(model: &Mimi, clip: &[f32], steps: usize, alone: &Trace) -> Trace {
    let fs = model.frame_samples();
    let k = model.num_codebooks();
    let mut streams: Vec<Mimi> = PLANS.iter().map(|_| model.new_stream()).collect();
    let mut out: Trace = PLANS.iter().map(|_| Vec::new()).collect();
    for step in 0..steps {
        let ids: Vec<usize> = (0..PLANS.len())
            .filter(|&i| PLANS[i].active(step))
            .collect();
        for &i in &ids {
            if PLANS[i].starts(step) {
                streams[i] = model.new_stream();
            }
        }
        let frames: Vec<Vec<f32>> = ids
            .iter()
            .map(|&i| PLANS[i].frame(clip, step, fs))
            .collect();
        let mut codes = vec![vec![0u32; k]; ids.len()];
        let mut pcm = vec![vec![0f32; fs]; ids.len()];
        let mut batch: Vec<&mut Mimi> = streams
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| ids.contains(i))
            .map(|(_, m)| m)
            .collect();
        let inputs: Vec<&[f32]> = frames.iter().map(|f| &f[..]).collect();
        let mut code_outs: Vec<&mut [u32]> = codes.iter_mut().map(|c| &mut c[..]).collect();
        Mimi::encode_step_batch(&mut batch, &inputs, &mut code_outs).unwrap();
        let code_ins: Vec<&[u32]> = ids.iter().map(|&i| &alone[i][out[i].len()].0[..]).collect();
        let mut pcm_outs: Vec<&mut [f32]> = pcm.iter_mut().map(|p| &mut p[..]).collect();
        Mimi::decode_step_batch(&mut batch, &code_ins, &mut pcm_outs).unwrap();
        for ((&i, c), p) in ids.iter().zip(codes).zip(pcm) {
            out[i].push((c, p));
        }
    }
    out
}

/// What a batched stream must match of the stream alone.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// Fraction of codes identical.
    pub codes: f64,
    /// Decode SNR, dB.
    pub snr_db: f64,
}

impl Bound {
    /// Codes identical, decode SNR >= 100 dB: where each row's arithmetic does not depend on
    /// the other rows of the product (the CPU engine's and the packed kernels).
    pub const EXACT: Bound = Bound {
        codes: 1.0,
        snr_db: 100.0,
    };
}

/// What [`compare`] found.
#[derive(Debug)]
pub struct Found {
    /// Codes compared and how many were identical.
    pub codes: usize,
    pub identical: usize,
    /// Worst decode SNR over the streams, dB.
    pub worst_snr_db: f64,
    /// Whether all the audio was bit-identical.
    pub bits: bool,
}

/// Compares the traces against `bound`.
fn compare(what: &str, a: &Trace, b: &Trace, bound: Bound) -> Found {
    let mut f = Found {
        codes: 0,
        identical: 0,
        worst_snr_db: f64::INFINITY,
        bits: true,
    };
    for (s, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.len(), y.len(), "{what}: stream {s} steps");
        let (cx, px): (Vec<_>, Vec<_>) = x.iter().cloned().unzip();
        let (cy, py): (Vec<_>, Vec<_>) = y.iter().cloned().unzip();
        let (cx, cy) = (cx.concat(), cy.concat());
        f.codes += cx.len();
        f.identical += cx.iter().zip(&cy).filter(|(u, v)| u == v).count();
        let (px, py) = (px.concat(), py.concat());
        f.bits &= px.iter().zip(&py).all(|(u, v)| u.to_bits() == v.to_bits());
        assert!(
            px.iter().any(|v| v.abs() > 1e-6),
            "{what}: stream {s} decodes silence"
        );
        f.worst_snr_db = f.worst_snr_db.min(snr_db(&px, &py));
    }
    // The streams really differ from each other (different inputs, different codes).
    let firsts: Vec<&Vec<u32>> = a.iter().map(|s| &s[0].0).collect();
    assert!(
        firsts.windows(2).any(|w| w[0] != w[1]),
        "{what}: streams all alike"
    );
    println!(
        "{what}: {} of {} codes identical, worst decode SNR {:.1} dB, audio bit-identical: {}",
        f.identical, f.codes, f.worst_snr_db, f.bits
    );
    assert!(
        f.identical as f64 >= bound.codes * f.codes as f64,
        "{what}: {} of {} codes identical, below {bound:?}",
        f.identical,
        f.codes
    );
    assert!(
        f.worst_snr_db >= bound.snr_db,
        "{what}: decode SNR {:.1} dB, below {bound:?}",
        f.worst_snr_db
    );
    f
}

/// Runs the plans over `steps` frames alone and together on models from `load`, and
/// compares within `bound` (see [`Bound::EXACT`]).
pub fn scenario(what: &str, load: &dyn Fn() -> Mimi, steps: usize, bound: Bound) -> Found {
    let clip = speech();
    let a = alone(load, &clip, steps);
    let b = together(&load(), &clip, steps, &a);
    let distinct: std::collections::HashSet<u32> = a.iter().flatten().map(|(c, _)| c[0]).collect();
    assert!(
        distinct.len() > 3,
        "{what}: semantic codes hardly vary: {distinct:?}"
    );
    compare(what, &a, &b, bound)
}
