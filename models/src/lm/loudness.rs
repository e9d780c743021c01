//! Integrated loudness (ITU-R BS.1770-4, mono) and normalisation to a target, for voice
//! prompts: NVIDIA's PersonaPlex normalises a WAV voice prompt to -24 LUFS (with the
//! `pyloudnorm` package) before Mimi encodes it; the same measure, written from the standard.

/// The loudness NVIDIA's voice prompts are brought to, in LUFS.
pub const VOICE_PROMPT_LUFS: f64 = -24.0;

/// Gating block length (400 ms) and hop (a quarter of it), from BS.1770.
const BLOCK_S: f64 = 0.4;
const HOP: f64 = 0.25;
/// Absolute gate (LUFS) and relative gate (LU below the absolutely-gated loudness).
const ABSOLUTE_GATE: f64 = -70.0;
const RELATIVE_GATE: f64 = -10.0;

/// A biquad section in direct form II transposed (f64, as the reference measures).
struct Biquad {
    b: [f64; 3],
    a: [f64; 2],
}

impl Biquad {
    /// Cookbook coefficients from the filter's gain `g` (dB), quality `q` and corner `fc` (Hz)
    /// at `rate`, normalised by a0; `shelf` picks the high shelf, else a high-pass.
    fn new(shelf: bool, g: f64, q: f64, fc: f64, rate: f64) -> Self {
        let a = 10f64.powf(g / 40.0);
        let w0 = 2.0 * std::f64::consts::PI * fc / rate;
        let (cw, alpha) = (w0.cos(), w0.sin() / (2.0 * q));
        let (b, a) = if shelf {
            let s = 2.0 * a.sqrt() * alpha;
            (
                [
                    a * ((a + 1.0) + (a - 1.0) * cw + s),
                    -2.0 * a * ((a - 1.0) + (a + 1.0) * cw),
                    a * ((a + 1.0) + (a - 1.0) * cw - s),
                ],
                [
                    (a + 1.0) - (a - 1.0) * cw + s,
                    2.0 * ((a - 1.0) - (a + 1.0) * cw),
                    (a + 1.0) - (a - 1.0) * cw - s,
                ],
            )
        } else {
            (
                [(1.0 + cw) / 2.0, -(1.0 + cw), (1.0 + cw) / 2.0],
                [1.0 + alpha, -2.0 * cw, 1.0 - alpha],
            )
        };
        Self {
            b: b.map(|x| x / a[0]),
            a: [a[1] / a[0], a[2] / a[0]],
        }
    }

    fn run(&self, x: &mut [f64]) {
        let (mut z1, mut z2) = (0.0, 0.0);
        for v in x.iter_mut() {
            let y = self.b[0] * *v + z1;
            z1 = self.b[1] * *v - self.a[0] * y + z2;
            z2 = self.b[2] * *v - self.a[1] * y;
            *v = y;
        }
    }
}

/// Integrated loudness of mono `pcm` at `rate` Hz in LUFS (K-weighting, 400 ms blocks with
/// 75 % overlap, absolute then relative gating); `None` when shorter than one block or
/// silent (every block under the absolute gate).
pub fn integrated_loudness(pcm: &[f32], rate: u32) -> Option<f64> {
    let rate_f = rate as f64;
    let mut x: Vec<f64> = pcm.iter().map(|&v| v as f64).collect();
    Biquad::new(true, 4.0, 1.0 / 2f64.sqrt(), 1500.0, rate_f).run(&mut x);
    Biquad::new(false, 0.0, 0.5, 38.0, rate_f).run(&mut x);
    let secs = x.len() as f64 / rate_f;
    if secs < BLOCK_S {
        return None;
    }
    // numpy rounds half to even.
    let blocks = ((secs - BLOCK_S) / (BLOCK_S * HOP)).round_ties_even() as usize + 1;
    let power: Vec<f64> = (0..blocks)
        .map(|j| {
            let lo = (BLOCK_S * (j as f64 * HOP) * rate_f) as usize;
            let hi = ((BLOCK_S * (j as f64 * HOP + 1.0) * rate_f) as usize).min(x.len());
            x[lo.min(hi)..hi].iter().map(|v| v * v).sum::<f64>() / (BLOCK_S * rate_f)
        })
        .collect();
    let lufs = |z: f64| -0.691 + 10.0 * z.log10();
    let mean_of = |keep: &dyn Fn(f64) -> bool| {
        let kept: Vec<f64> = power.iter().copied().filter(|&z| keep(lufs(z))).collect();
        (!kept.is_empty()).then(|| kept.iter().sum::<f64>() / kept.len() as f64)
    };
    let gated = mean_of(&|l| l >= ABSOLUTE_GATE)?;
    let relative = lufs(gated) + RELATIVE_GATE;
    mean_of(&|l| l > relative && l > ABSOLUTE_GATE).map(lufs)
}

/// `pcm` scaled to `target` LUFS, as `pyloudnorm.normalize.loudness` (no limiting: peaks
/// may exceed 1, as in the reference). Returned unchanged when its loudness is undefined
/// (shorter than 400 ms or silent), where the reference would fail or divide by zero.
pub fn normalize_loudness(pcm: &[f32], rate: u32, target: f64) -> Vec<f32> {
    match integrated_loudness(pcm, rate) {
        Some(l) => {
            let gain = 10f64.powf((target - l) / 20.0);
            pcm.iter().map(|&v| (v as f64 * gain) as f32).collect()
        }
        None => pcm.to_vec(),
    }
}
