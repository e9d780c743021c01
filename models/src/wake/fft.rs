//! A 16-bit fixed-point real FFT with the arithmetic of KISS FFT's `FIXED_POINT=16` build
//! (the one the TensorFlow Lite Micro frontend links): Q15 twiddles rounded from `f64`, every
//! radix-4 butterfly input divided by 4 with rounding, products rounded to Q15, and a final
//! split step that halves again. Only power-of-4 half sizes are needed here (512 real points:
//! a 256-point complex FFT, radix 4 four times).

/// A complex value in Q15: (real, imaginary).
pub type Cpx = (i16, i16);

const SAMP_MAX: i32 = 32_767;

fn sround(x: i32) -> i16 {
    (x.wrapping_add(1 << 14) >> 15) as i16
}

fn cmul(a: Cpx, b: Cpx) -> Cpx {
    let (ar, ai, br, bi) = (
        i32::from(a.0),
        i32::from(a.1),
        i32::from(b.0),
        i32::from(b.1),
    );
    (
        sround((ar * br).wrapping_sub(ai * bi)),
        sround((ar * bi).wrapping_add(ai * br)),
    )
}

fn fixdiv(c: Cpx, div: i32) -> Cpx {
    let k = SAMP_MAX / div;
    (sround(i32::from(c.0) * k), sround(i32::from(c.1) * k))
}

fn add(a: Cpx, b: Cpx) -> Cpx {
    (a.0.wrapping_add(b.0), a.1.wrapping_add(b.1))
}

fn sub(a: Cpx, b: Cpx) -> Cpx {
    (a.0.wrapping_sub(b.0), a.1.wrapping_sub(b.1))
}

fn cexp(phase: f64) -> Cpx {
    let q = |v: f64| (0.5 + f64::from(SAMP_MAX) * v).floor() as i16;
    (q(phase.cos()), q(phase.sin()))
}

/// Forward real FFT of a fixed size, with its tables and buffers.
pub struct RealFft16 {
    ncfft: usize,
    /// (radix, remaining length) pairs, outermost first.
    factors: Vec<(usize, usize)>,
    twiddles: Vec<Cpx>,
    super_twiddles: Vec<Cpx>,
    tmp: Vec<Cpx>,
    out: Vec<Cpx>,
}

impl RealFft16 {
    /// Tables for `nfft` real points (`nfft / 2` must be a power of 4).
    pub fn new(nfft: usize) -> RealFft16 {
        let ncfft = nfft / 2;
        assert!(ncfft.is_power_of_two() && ncfft.trailing_zeros().is_multiple_of(2));
        let pi = std::f64::consts::PI;
        let twiddles = (0..ncfft)
            .map(|i| cexp(-2.0 * pi * i as f64 / ncfft as f64))
            .collect();
        let super_twiddles = (0..ncfft / 2)
            .map(|i| cexp(-pi * ((i + 1) as f64 / ncfft as f64 + 0.5)))
            .collect();
        let mut factors = Vec::new();
        let mut n = ncfft;
        while n > 1 {
            n /= 4;
            factors.push((4, n));
        }
        RealFft16 {
            ncfft,
            factors,
            twiddles,
            super_twiddles,
            tmp: vec![(0, 0); ncfft],
            out: vec![(0, 0); ncfft + 1],
        }
    }

    /// The `nfft / 2 + 1` complex bins of `input` (`nfft` samples).
    pub fn forward(&mut self, input: &[i16]) -> &[Cpx] {
        let n = self.ncfft;
        let pairs: Vec<Cpx> = input[..2 * n]
            .chunks_exact(2)
            .map(|p| (p[0], p[1]))
            .collect();
        let mut tmp = std::mem::take(&mut self.tmp);
        self.work(&mut tmp, &pairs, 0, 1, 0);
        let dc = fixdiv(tmp[0], 2);
        self.out[0] = (dc.0.wrapping_add(dc.1), 0);
        self.out[n] = (dc.0.wrapping_sub(dc.1), 0);
        for k in 1..=n / 2 {
            let fpk = fixdiv(tmp[k], 2);
            let fpnk = fixdiv((tmp[n - k].0, tmp[n - k].1.wrapping_neg()), 2);
            let f1k = add(fpk, fpnk);
            let f2k = sub(fpk, fpnk);
            let tw = cmul(f2k, self.super_twiddles[k - 1]);
            let half = |x: i16, y: i16, neg: bool| {
                let s = if neg {
                    i32::from(x) - i32::from(y)
                } else {
                    i32::from(x) + i32::from(y)
                };
                (s >> 1) as i16
            };
            self.out[k] = (half(f1k.0, tw.0, false), half(f1k.1, tw.1, false));
            self.out[n - k] = (half(f1k.0, tw.0, true), half(tw.1, f1k.1, true));
        }
        self.tmp = tmp;
        &self.out
    }

    /// Decimation in time: gather the sub-sequences recursively, then the butterflies.
    fn work(&self, out: &mut [Cpx], input: &[Cpx], in_off: usize, fstride: usize, level: usize) {
        let (p, m) = self.factors[level];
        if m == 1 {
            for (j, o) in out[..p].iter_mut().enumerate() {
                *o = input[in_off + j * fstride];
            }
        } else {
            for j in 0..p {
                self.work(
                    &mut out[j * m..(j + 1) * m],
                    input,
                    in_off + j * fstride,
                    fstride * p,
                    level + 1,
                );
            }
        }
        self.butterfly4(&mut out[..p * m], fstride, m);
    }

    fn butterfly4(&self, f: &mut [Cpx], fstride: usize, m: usize) {
        let tw = &self.twiddles;
        for k in 0..m {
            let f0 = fixdiv(f[k], 4);
            let f1 = fixdiv(f[k + m], 4);
            let f2 = fixdiv(f[k + 2 * m], 4);
            let f3 = fixdiv(f[k + 3 * m], 4);
            let s0 = cmul(f1, tw[k * fstride]);
            let s1 = cmul(f2, tw[2 * k * fstride]);
            let s2 = cmul(f3, tw[3 * k * fstride]);
            let s5 = sub(f0, s1);
            let f0 = add(f0, s1);
            let s3 = add(s0, s2);
            let s4 = sub(s0, s2);
            f[k + 2 * m] = sub(f0, s3);
            f[k] = add(f0, s3);
            f[k + m] = (s5.0.wrapping_add(s4.1), s5.1.wrapping_sub(s4.0));
            f[k + 3 * m] = (s5.0.wrapping_sub(s4.1), s5.1.wrapping_add(s4.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cosine_lands_in_its_bin() {
        let mut fft = RealFft16::new(512);
        let x: Vec<i16> = (0..512)
            .map(|i| {
                (16_000.0 * (2.0 * std::f64::consts::PI * 20.0 * i as f64 / 512.0).cos()) as i16
            })
            .collect();
        let y = fft.forward(&x).to_vec();
        let mag = |c: Cpx| (f64::from(c.0).powi(2) + f64::from(c.1).powi(2)).sqrt();
        let peak = (0..257)
            .max_by(|&a, &b| mag(y[a]).total_cmp(&mag(y[b])))
            .unwrap();
        assert_eq!(peak, 20);
        // Scaled by 1/nfft overall: 16000 * 512 / 2 / 512 = 8000.
        assert!((mag(y[20]) - 8000.0).abs() < 40.0, "{}", mag(y[20]));
    }
}
