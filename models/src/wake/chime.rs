//! The appliance's sounds, made in code so that no audio asset (and no asset licence) ships:
//! a rising two-note chime when the wake word is heard, a falling one when a conversation
//! ends, and a low two-note tone on error.
//!
//! Each note is a soft bell: a fundamental with two quieter harmonics, a 5 ms raised-cosine
//! attack (no click), an exponential decay and a 20 ms raised-cosine release that ends it at
//! exactly zero. The whole sound is scaled to [`PEAK`] so that, at full volume, it is clearly
//! audible over a quiet room but well below Moshi's own level.

use std::f64::consts::PI;

/// Which sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chime {
    /// The wake word was heard: the conversation starts (rising A5 -> E6).
    Wake,
    /// The conversation ended (falling E6 -> A5).
    End,
    /// Something failed (low G4 -> E♭4, longer notes).
    Error,
}

/// Largest absolute sample of a rendered sound, before the room's volume.
pub const PEAK: f32 = 0.35;

/// One note: onset and length in seconds, fundamental in Hz.
struct Note {
    onset: f64,
    length: f64,
    freq: f64,
}

/// Harmonics (multiple of the fundamental, relative amplitude): a bell-like timbre that
/// small speakers still reproduce (the fundamentals are above their bass roll-off).
const PARTIALS: [(f64, f64); 3] = [(1.0, 1.0), (2.0, 0.3), (3.0, 0.12)];
/// Attack and release ramps, seconds.
const ATTACK: f64 = 0.005;
const RELEASE: f64 = 0.02;

impl Chime {
    /// All sounds, for callers that prepare them once.
    pub const ALL: [Chime; 3] = [Chime::Wake, Chime::End, Chime::Error];

    fn notes(self) -> ([Note; 2], f64) {
        let n = |onset, length, freq| Note {
            onset,
            length,
            freq,
        };
        // (notes, decay time constant in seconds)
        match self {
            Chime::Wake => ([n(0.0, 0.15, 880.0), n(0.11, 0.22, 1318.51)], 0.09),
            Chime::End => ([n(0.0, 0.15, 1318.51), n(0.11, 0.22, 880.0)], 0.09),
            Chime::Error => ([n(0.0, 0.2, 392.0), n(0.18, 0.3, 311.13)], 0.15),
        }
    }

    /// A short lowercase name (`wake`, `end`, `error`), as logs and the README say it.
    pub fn name(self) -> &'static str {
        match self {
            Chime::Wake => "wake",
            Chime::End => "end",
            Chime::Error => "error",
        }
    }
}

/// The sound as mono samples at `rate` Hz, peak [`PEAK`], starting and ending at zero.
pub fn render(chime: Chime, rate: u32) -> Vec<f32> {
    let rate = f64::from(rate.max(1));
    let (notes, tau) = chime.notes();
    let end = notes.iter().map(|n| n.onset + n.length).fold(0.0, f64::max);
    let len = (end * rate).ceil() as usize;
    let mut out = vec![0.0f64; len];
    for note in &notes {
        add_note(&mut out, note, tau, rate);
    }
    let peak = out.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let scale = if peak > 0.0 {
        f64::from(PEAK) / peak
    } else {
        0.0
    };
    out.into_iter().map(|x| (x * scale) as f32).collect()
}

/// Adds one enveloped note into `out`.
fn add_note(out: &mut [f64], note: &Note, tau: f64, rate: f64) {
    let first = (note.onset * rate).round() as usize;
    let count = (note.length * rate).round() as usize;
    for (k, o) in out.iter_mut().skip(first).take(count).enumerate() {
        let t = k as f64 / rate;
        let attack = if t < ATTACK {
            0.5 - 0.5 * (PI * t / ATTACK).cos()
        } else {
            1.0
        };
        let left = note.length - t;
        let release = if left < RELEASE {
            0.5 - 0.5 * (PI * left.max(0.0) / RELEASE).cos()
        } else {
            1.0
        };
        let env = attack * release * (-t / tau).exp();
        let tone: f64 = PARTIALS
            .iter()
            .map(|&(mult, amp)| amp * (2.0 * PI * note.freq * mult * t).sin())
            .sum();
        *o += env * tone;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Energy of `x` at `freq` Hz (Goertzel), normalised by length.
    fn power_at(x: &[f32], freq: f64, rate: f64) -> f64 {
        let w = 2.0 * PI * freq / rate;
        let c = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s0 = f64::from(v) + c * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        (s1 * s1 + s2 * s2 - c * s1 * s2) / x.len() as f64
    }

    #[test]
    fn sounds_are_short_bounded_and_click_free() {
        for c in Chime::ALL {
            let s = render(c, 24_000);
            let secs = s.len() as f64 / 24_000.0;
            assert!((0.2..0.6).contains(&secs), "{} lasts {secs} s", c.name());
            let peak = s.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert!((peak - PEAK).abs() < 1e-6, "{} peak {peak}", c.name());
            assert_eq!(s[0], 0.0);
            assert!(
                s.last().unwrap().abs() < 1e-3,
                "{} ends at {:?}",
                c.name(),
                s.last()
            );
            // No step between neighbours larger than the highest partial allows.
            let max_step = s
                .windows(2)
                .map(|w| (w[1] - w[0]).abs())
                .fold(0.0, f32::max);
            assert!(max_step < 0.35, "{} jumps by {max_step}", c.name());
        }
    }

    #[test]
    fn wake_rises_end_falls_error_is_low() {
        let rate = 24_000.0;
        let halves = |c: Chime| {
            let s = render(c, 24_000);
            let (a, b) = s.split_at(s.len() / 2);
            (a.to_vec(), b.to_vec())
        };
        let (a, b) = halves(Chime::Wake);
        assert!(power_at(&a, 880.0, rate) > power_at(&a, 1318.51, rate));
        assert!(power_at(&b, 1318.51, rate) > power_at(&b, 880.0, rate));
        let (a, b) = halves(Chime::End);
        assert!(power_at(&a, 1318.51, rate) > power_at(&a, 880.0, rate));
        assert!(power_at(&b, 880.0, rate) > power_at(&b, 1318.51, rate));
        let e = render(Chime::Error, 24_000);
        assert!(power_at(&e, 392.0, rate) > power_at(&e, 880.0, rate) * 10.0);
        assert_ne!(render(Chime::Wake, 24_000), render(Chime::End, 24_000));
    }
}
