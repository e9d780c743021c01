//! The TensorFlow Lite Micro audio frontend, as microWakeWord configures it: 16 kHz 16-bit
//! mono, a 30 ms Hann window every 10 ms, a 512-point fixed-point FFT, 40 mel channels
//! (125-7500 Hz), noise reduction, PCAN gain control and a fixed-point log.
//!
//! Everything after the one-time table set-up is integer arithmetic, written to give the same
//! values as the reference (PyPI `pymicro-features`' `MicroFrontend`), bit for bit: C's
//! `int16_t` stores that wrap are `wrapping_*` here. The tables (window, mel weights, PCAN
//! gains) come from `f32` maths (`cosf`, `log1pf`, `powf`) rounded to integers once, in the
//! reference's order of operations; the log correction table from `f64`.

use super::fft::RealFft16;

/// Sample rate the frontend expects.
pub const SAMPLE_RATE: u32 = 16_000;
/// Feature channels per frame.
pub const NUM_CHANNELS: usize = 40;
/// Samples per window (30 ms).
pub const WINDOW_SAMPLES: usize = 480;
/// Samples between frames (10 ms).
pub const STEP_SAMPLES: usize = 160;
/// What the reference multiplies the integer features by to give its floats (exact in `f32`).
pub const FEATURE_SCALE: f32 = 0.039_062_5;

const FFT_SIZE: usize = 512;
const WINDOW_BITS: u32 = 12;
const FILTERBANK_BITS: i32 = 12;
const NOISE_REDUCTION_BITS: u32 = 14;
const SMOOTHING_BITS: u32 = 10;
const EVEN_SMOOTHING: f32 = 0.025;
const ODD_SMOOTHING: f32 = 0.06;
const MIN_SIGNAL_REMAINING: f32 = 0.05;
const LOWER_BAND_HZ: f32 = 125.0;
const UPPER_BAND_HZ: f32 = 7500.0;
const PCAN_STRENGTH: f32 = 0.95;
const PCAN_OFFSET: f32 = 80.0;
const PCAN_GAIN_BITS: i32 = 21;
const PCAN_SNR_BITS: u32 = 12;
const PCAN_OUTPUT_BITS: u32 = 6;
const WIDE_DYNAMIC_BITS: u32 = 32;
const LOG_SCALE_SHIFT: u32 = 6;
const LOG_SEGMENTS_LOG2: u32 = 7;
const LOG_SCALE_LOG2: u32 = 16;
const LOG_COEFF: u64 = 45_426; // ln(2) in Q16

/// Index of the highest set bit plus one (0 for 0), as the reference counts bits.
fn msb32(x: u32) -> u32 {
    32 - x.leading_zeros()
}

/// The mel filterbank: triangular weights in Q12, laid out channel by channel.
struct Filterbank {
    start_index: usize,
    end_index: usize,
    /// Per channel (plus one leading channel): first FFT bin, first weight, bins to sum.
    chan_freq_starts: Vec<usize>,
    chan_weight_starts: Vec<usize>,
    chan_widths: Vec<usize>,
    weights: Vec<i16>,
    unweights: Vec<i16>,
}

/// `black_box` keeps the compiler from folding a libm call on constants (with another
/// rounding than the C library's, which the reference calls at run time).
fn freq_to_mel(freq: f32) -> f32 {
    1127.0 * std::hint::black_box(freq / 700.0).ln_1p()
}

impl Filterbank {
    fn new(sample_rate: u32, spectrum_size: usize) -> Filterbank {
        let n1 = NUM_CHANNELS + 1;
        let mel_low = freq_to_mel(LOWER_BAND_HZ);
        let mel_spacing = (freq_to_mel(UPPER_BAND_HZ) - mel_low) / n1 as f32;
        let centers: Vec<f32> = (0..n1)
            .map(|i| mel_low + mel_spacing * (i + 1) as f32)
            .collect();
        let hz_per_sbin = 0.5 * sample_rate as f32 / (spectrum_size as f32 - 1.0);
        let start_index = (1.5 + LOWER_BAND_HZ / hz_per_sbin) as usize;
        let mut fb = Filterbank {
            start_index,
            end_index: 0,
            chan_freq_starts: vec![0; n1],
            chan_weight_starts: vec![0; n1],
            chan_widths: vec![0; n1],
            weights: Vec::new(),
            unweights: Vec::new(),
        };
        let (actual_starts, actual_widths, total) = fb.layout(&centers, hz_per_sbin);
        fb.weights = vec![0; total];
        fb.unweights = vec![0; total];
        for chan in 0..n1 {
            let denom = if chan == 0 {
                mel_low
            } else {
                centers[chan - 1]
            };
            let offset = actual_starts[chan] - fb.chan_freq_starts[chan];
            for j in 0..actual_widths[chan] {
                let freq = actual_starts[chan] + j;
                let mel = freq_to_mel(freq as f32 * hz_per_sbin);
                let w = (centers[chan] - mel) / (centers[chan] - denom);
                let k = fb.chan_weight_starts[chan] + offset + j;
                fb.weights[k] = (w * 4096.0 + 0.5).floor() as i16;
                fb.unweights[k] = ((1.0 - w) * 4096.0 + 0.5).floor() as i16;
            }
            fb.end_index = fb.end_index.max(actual_starts[chan] + actual_widths[chan]);
        }
        fb
    }

    /// Which bins each channel sums (padded to blocks of 4 from a 2-bin-aligned start, with a
    /// shared block of zero weights for empty channels); returns the actual starts and widths
    /// and the total weight count.
    fn layout(&mut self, centers: &[f32], hz_per_sbin: f32) -> (Vec<usize>, Vec<usize>, usize) {
        const BLOCK: usize = 4;
        const ALIGN: usize = 2;
        let n1 = centers.len();
        let (mut starts, mut widths) = (vec![0; n1], vec![0; n1]);
        let mut freq_start = self.start_index;
        let mut weight_start = 0;
        let mut needs_zeros = false;
        for chan in 0..n1 {
            let mut freq = freq_start;
            while freq_to_mel(freq as f32 * hz_per_sbin) <= centers[chan] {
                freq += 1;
            }
            let width = freq - freq_start;
            starts[chan] = freq_start;
            widths[chan] = width;
            if width == 0 {
                self.chan_freq_starts[chan] = 0;
                self.chan_weight_starts[chan] = 0;
                self.chan_widths[chan] = BLOCK;
                if !needs_zeros {
                    needs_zeros = true;
                    for j in 0..chan {
                        self.chan_weight_starts[j] += BLOCK;
                    }
                    weight_start += BLOCK;
                }
            } else {
                let aligned = (freq_start / ALIGN) * ALIGN;
                let aligned_width = freq_start - aligned + width;
                let padded = ((aligned_width - 1) / BLOCK + 1) * BLOCK;
                self.chan_freq_starts[chan] = aligned;
                self.chan_weight_starts[chan] = weight_start;
                self.chan_widths[chan] = padded;
                weight_start += padded;
            }
            freq_start = freq;
        }
        (starts, widths, weight_start)
    }

    /// Weighted sums of the energies, then the square root of each channel scaled down by
    /// `shift` bits (the FFT's input scaling).
    fn apply(&self, energy: &[i32], shift: u32, out: &mut [u32; NUM_CHANNELS]) {
        let mut weight_acc: u64 = 0;
        let mut unweight_acc: u64 = 0;
        for chan in 0..=NUM_CHANNELS {
            let f0 = self.chan_freq_starts[chan];
            let w0 = self.chan_weight_starts[chan];
            for j in 0..self.chan_widths[chan] {
                // The reference widens the signed energy to 64 bits unsigned.
                let mag = energy.get(f0 + j).copied().unwrap_or(0) as i64 as u64;
                weight_acc =
                    weight_acc.wrapping_add((self.weights[w0 + j] as u64).wrapping_mul(mag));
                unweight_acc =
                    unweight_acc.wrapping_add((self.unweights[w0 + j] as u64).wrapping_mul(mag));
            }
            if chan > 0 {
                out[chan - 1] = sqrt64(weight_acc) >> shift;
            }
            weight_acc = unweight_acc;
            unweight_acc = 0;
        }
    }
}

fn sqrt32(mut num: u32) -> u32 {
    if num == 0 {
        return 0;
    }
    let mut res: u32 = 0;
    let max_bit = (32 - msb32(num)) | 1;
    let mut bit: u32 = 1 << (31 - max_bit);
    for _ in 0..((31 - max_bit) / 2 + 1) {
        if num >= res + bit {
            num -= res + bit;
            res = (res >> 1) + bit;
        } else {
            res >>= 1;
        }
        bit >>= 2;
    }
    if num > res && res != 0xFFFF {
        res += 1;
    }
    res
}

fn sqrt64(mut num: u64) -> u32 {
    if num >> 32 == 0 {
        return sqrt32(num as u32);
    }
    let mut res: u64 = 0;
    let max_bit = (64 - (64 - num.leading_zeros())) | 1;
    let mut bit: u64 = 1 << (63 - max_bit);
    for _ in 0..((63 - max_bit) / 2 + 1) {
        if num >= res + bit {
            num -= res + bit;
            res = (res >> 1) + bit;
        } else {
            res >>= 1;
        }
        bit >>= 2;
    }
    if num > res && res != 0xFFFF_FFFF {
        res += 1;
    }
    res as u32
}

/// Per-channel noise estimate, subtracted from the signal (with a floor).
struct NoiseReduction {
    even: u32,
    odd: u32,
    min_remaining: u32,
    estimate: [u32; NUM_CHANNELS],
}

impl NoiseReduction {
    fn new() -> NoiseReduction {
        let q = |x: f32| (x * (1u32 << NOISE_REDUCTION_BITS) as f32) as u32;
        NoiseReduction {
            even: q(EVEN_SMOOTHING),
            odd: q(ODD_SMOOTHING),
            min_remaining: q(MIN_SIGNAL_REMAINING),
            estimate: [0; NUM_CHANNELS],
        }
    }

    fn apply(&mut self, signal: &mut [u32; NUM_CHANNELS]) {
        for (i, s) in signal.iter_mut().enumerate() {
            let smoothing = if i % 2 == 0 { self.even } else { self.odd };
            let one_minus = (1u32 << NOISE_REDUCTION_BITS) - smoothing;
            let scaled_up = *s << SMOOTHING_BITS;
            let mut estimate = ((u64::from(scaled_up) * u64::from(smoothing)
                + u64::from(self.estimate[i]) * u64::from(one_minus))
                >> NOISE_REDUCTION_BITS) as u32;
            self.estimate[i] = estimate;
            estimate = estimate.min(scaled_up);
            let floor =
                ((u64::from(*s) * u64::from(self.min_remaining)) >> NOISE_REDUCTION_BITS) as u32;
            let subtracted = (scaled_up - estimate) >> SMOOTHING_BITS;
            *s = subtracted.max(floor);
        }
    }
}

/// Per-channel automatic gain control (PCAN), driven by the noise estimate.
struct Pcan {
    /// Piecewise-quadratic gain table: entries 0 and 1, then three per power of two from 2.
    lut: [i16; 4 * WIDE_DYNAMIC_BITS as usize - 3],
    snr_shift: u32,
}

fn pcan_gain(input_bits: i32, x: u32) -> i16 {
    let x = x as f32 / (1u32 << input_bits) as f32;
    let gain = (1u32 << PCAN_GAIN_BITS) as f32
        * std::hint::black_box(x + PCAN_OFFSET).powf(-PCAN_STRENGTH);
    if gain > f32::from(i16::MAX) {
        return i16::MAX;
    }
    (gain + 0.5) as i16
}

impl Pcan {
    fn new(correction_bits: i32) -> Pcan {
        let input_bits = SMOOTHING_BITS as i32 - correction_bits;
        let mut lut = [0i16; 4 * WIDE_DYNAMIC_BITS as usize - 3];
        lut[0] = pcan_gain(input_bits, 0);
        lut[1] = pcan_gain(input_bits, 1);
        for interval in 2..=WIDE_DYNAMIC_BITS {
            let x0: u32 = 1 << (interval - 1);
            let x1 = x0 + (x0 >> 1);
            let x2 = if interval == WIDE_DYNAMIC_BITS {
                x0 + (x0 - 1)
            } else {
                2 * x0
            };
            let y0 = pcan_gain(input_bits, x0);
            let diff1 = pcan_gain(input_bits, x1).wrapping_sub(y0);
            let diff2 = pcan_gain(input_bits, x2).wrapping_sub(y0);
            let a1 = diff1.wrapping_mul(4).wrapping_sub(diff2);
            let a2 = diff2.wrapping_sub(a1);
            let k = 4 * interval as usize - 6;
            lut[k] = y0;
            lut[k + 1] = a1;
            lut[k + 2] = a2;
        }
        let snr_shift = (PCAN_GAIN_BITS - correction_bits - PCAN_SNR_BITS as i32) as u32;
        Pcan { lut, snr_shift }
    }

    fn wide_dynamic(&self, x: u32) -> i16 {
        if x <= 2 {
            return self.lut[x as usize];
        }
        let interval = msb32(x);
        let lut = &self.lut[4 * interval as usize - 6..];
        let frac = (if interval < 11 {
            x << (11 - interval)
        } else {
            x >> (interval - 11)
        } & 0x3FF) as i32;
        let mut result = (i32::from(lut[2]).wrapping_mul(frac)) >> 5;
        result = result.wrapping_add(((i32::from(lut[1]) as u32) << 5) as i32);
        result = result.wrapping_mul(frac);
        result = result.wrapping_add(1 << 14) >> 15;
        result = result.wrapping_add(i32::from(lut[0]));
        result as i16
    }

    fn apply(&self, noise_estimate: &[u32; NUM_CHANNELS], signal: &mut [u32; NUM_CHANNELS]) {
        for (s, &noise) in signal.iter_mut().zip(noise_estimate) {
            let gain = self.wide_dynamic(noise) as i32 as u32;
            let snr = ((u64::from(*s) * u64::from(gain)) >> self.snr_shift) as u32;
            *s = if snr < (2 << PCAN_SNR_BITS) {
                snr.wrapping_mul(snr) >> (2 + 2 * PCAN_SNR_BITS - PCAN_OUTPUT_BITS)
            } else {
                (snr >> (PCAN_SNR_BITS - PCAN_OUTPUT_BITS)).wrapping_sub(1 << PCAN_OUTPUT_BITS)
            };
        }
    }
}

/// The log correction table: (log2(1 + i/128) - i/128) in Q16, 129 entries.
fn log_lut() -> [i32; 129] {
    let mut lut = [0i32; 129];
    for (i, v) in lut.iter_mut().enumerate() {
        let f = i as f64 / 128.0;
        *v = (65_536.0 * ((1.0 + f).log2() - f)).round() as i32;
    }
    lut
}

fn log_scaled(lut: &[i32; 129], x: u32) -> u32 {
    let integer = msb32(x) - 1;
    let mut frac = (i64::from(x) - (1i64 << integer)) as i32;
    if integer < LOG_SCALE_LOG2 {
        frac <<= LOG_SCALE_LOG2 - integer;
    } else {
        frac >>= integer - LOG_SCALE_LOG2;
    }
    let base_seg = (frac >> (LOG_SCALE_LOG2 - LOG_SEGMENTS_LOG2)) as usize;
    let seg_unit = (1i32 << LOG_SCALE_LOG2) >> LOG_SEGMENTS_LOG2;
    let (c0, c1) = (lut[base_seg], lut[base_seg + 1]);
    let rel_pos = ((c1 - c0).wrapping_mul(frac - seg_unit * base_seg as i32)) >> LOG_SCALE_LOG2;
    let fraction = (frac + c0 + rel_pos) as u32;
    let log2 = (integer << LOG_SCALE_LOG2).wrapping_add(fraction);
    let round = 1u32 << (LOG_SCALE_LOG2 - 1);
    let loge = ((LOG_COEFF * u64::from(log2) + u64::from(round)) >> LOG_SCALE_LOG2) as u32;
    (loge << LOG_SCALE_SHIFT).wrapping_add(round) >> LOG_SCALE_LOG2
}

/// The streaming frontend: feed 16 kHz samples, get a 40-value frame every 10 ms once 30 ms
/// have arrived. The output does not depend on how the samples are split into calls.
pub struct Frontend {
    window: [i16; WINDOW_SAMPLES],
    input: [i16; WINDOW_SAMPLES],
    input_used: usize,
    fft: RealFft16,
    fft_in: Vec<i16>,
    energy: Vec<i32>,
    filterbank: Filterbank,
    noise: NoiseReduction,
    pcan: Pcan,
    log_lut: [i32; 129],
    correction_bits: i32,
}

impl Default for Frontend {
    fn default() -> Self {
        Self::new()
    }
}

impl Frontend {
    /// A frontend in its initial state (noise estimates at zero).
    pub fn new() -> Frontend {
        let mut window = [0i16; WINDOW_SAMPLES];
        let arg = std::f32::consts::PI * 2.0 / WINDOW_SAMPLES as f32;
        for (i, w) in window.iter_mut().enumerate() {
            let v = 0.5 - 0.5 * std::hint::black_box(arg * (i as f32 + 0.5)).cos();
            *w = (v * (1u32 << WINDOW_BITS) as f32 + 0.5).floor() as i16;
        }
        let correction_bits = msb32(FFT_SIZE as u32) as i32 - 1 - FILTERBANK_BITS / 2;
        Frontend {
            window,
            input: [0; WINDOW_SAMPLES],
            input_used: 0,
            fft: RealFft16::new(FFT_SIZE),
            fft_in: vec![0; FFT_SIZE],
            energy: vec![0; FFT_SIZE / 2 + 1],
            filterbank: Filterbank::new(SAMPLE_RATE, FFT_SIZE / 2 + 1),
            noise: NoiseReduction::new(),
            pcan: Pcan::new(correction_bits),
            log_lut: log_lut(),
            correction_bits,
        }
    }

    /// Back to the initial state.
    pub fn reset(&mut self) {
        self.input_used = 0;
        self.input = [0; WINDOW_SAMPLES];
        self.noise.estimate = [0; NUM_CHANNELS];
    }

    /// Feeds samples; calls `sink` with each frame completed (its integer feature values).
    pub fn push(&mut self, mut samples: &[i16], mut sink: impl FnMut(&[u16; NUM_CHANNELS])) {
        while !samples.is_empty() {
            let n = samples.len().min(WINDOW_SAMPLES - self.input_used);
            self.input[self.input_used..self.input_used + n].copy_from_slice(&samples[..n]);
            self.input_used += n;
            samples = &samples[n..];
            if self.input_used == WINDOW_SAMPLES {
                let frame = self.frame();
                self.input.copy_within(STEP_SAMPLES.., 0);
                self.input_used -= STEP_SAMPLES;
                sink(&frame);
            }
        }
    }

    /// One frame from the full window.
    fn frame(&mut self) -> [u16; NUM_CHANNELS] {
        let mut max_abs: i16 = 0;
        for i in 0..WINDOW_SAMPLES {
            let v = ((i32::from(self.input[i]) * i32::from(self.window[i])) >> WINDOW_BITS) as i16;
            self.fft_in[i] = v;
            max_abs = max_abs.max(v.wrapping_abs());
        }
        let shift = 15 - msb32(max_abs.max(0) as u32);
        for v in &mut self.fft_in[..WINDOW_SAMPLES] {
            *v = ((*v as u16 as u32) << shift) as u16 as i16;
        }
        self.fft_in[WINDOW_SAMPLES..].fill(0);
        let spectrum = self.fft.forward(&self.fft_in);
        for (e, c) in self.energy.iter_mut().zip(spectrum) {
            let (r, i) = (i32::from(c.0), i32::from(c.1));
            *e = r.wrapping_mul(r).wrapping_add(i.wrapping_mul(i));
        }
        // Bins outside [start, end) carry zero weights; the reference leaves them unconverted.
        let (lo, hi) = (self.filterbank.start_index, self.filterbank.end_index);
        self.energy[..lo].fill(0);
        self.energy[hi.min(FFT_SIZE / 2 + 1)..].fill(0);
        let mut signal = [0u32; NUM_CHANNELS];
        self.filterbank.apply(&self.energy, shift, &mut signal);
        self.noise.apply(&mut signal);
        self.pcan.apply(&self.noise.estimate, &mut signal);
        let mut out = [0u16; NUM_CHANNELS];
        for (o, &s) in out.iter_mut().zip(&signal) {
            let v = if self.correction_bits < 0 {
                s >> (-self.correction_bits)
            } else {
                s << self.correction_bits
            };
            let v = if v > 1 {
                log_scaled(&self.log_lut, v)
            } else {
                0
            };
            *o = v.min(u32::from(u16::MAX)) as u16;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_table_matches_the_reference_ends() {
        let lut = log_lut();
        assert_eq!(&lut[..4], &[0, 224, 442, 654]);
        assert_eq!(&lut[124..], &[559, 421, 282, 142, 0]);
    }

    /// The float-derived tables (window, mel weights, PCAN gains), folded into one number:
    /// the value is the reference's (checked table by table against pymicro-features' C
    /// code); a C library whose `cosf`/`log1pf`/`powf` round differently shows up here.
    #[test]
    fn float_tables_are_the_references() {
        let f = Frontend::new();
        let fb = &f.filterbank;
        let all = f
            .window
            .iter()
            .chain(&fb.weights)
            .chain(&fb.unweights)
            .chain(&f.pcan.lut);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &v in all {
            h = (h ^ u64::from(v as u16)).wrapping_mul(0x100_0000_01b3);
        }
        assert_eq!((fb.start_index, fb.end_index), (5, 241));
        assert_eq!(h, TABLES_HASH, "{h:#x}");
    }

    const TABLES_HASH: u64 = 0x0644_b9a4_9e18_37e3;

    #[test]
    fn sqrt_rounds() {
        assert_eq!(sqrt64(0), 0);
        assert_eq!(sqrt64(16), 4);
        assert_eq!(sqrt64(17), 4);
        assert_eq!(sqrt64(21), 5);
        assert_eq!(sqrt64(1 << 40), 1 << 20);
    }

    #[test]
    fn silence_gives_zeros_and_frames_every_step() {
        let mut f = Frontend::new();
        let mut frames = Vec::new();
        f.push(&[0i16; 16_000], |fr| frames.push(*fr));
        assert_eq!(frames.len(), (16_000 - WINDOW_SAMPLES) / STEP_SAMPLES + 1);
        assert!(frames.iter().all(|fr| fr.iter().all(|&v| v == 0)));
    }
}
