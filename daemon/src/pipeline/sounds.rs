//! The room's sounds on the inference thread (`[wake] sounds`): rendered once
//! (`moshid_models::wake::chime`), then mixed frame by frame into what goes to the speaker, at
//! the room's volume. Played through the same output path as Moshi's voice, so the device's
//! echo reference (or the queued frame) carries them to the canceller as far end.

use moshid_hal::MODEL_RATE;
use moshid_models::wake::chime::{render, Chime};

/// The three sounds and the one playing.
pub(super) struct Sounds {
    rendered: Vec<(Chime, Vec<f32>)>,
    /// (index in `rendered`, next sample).
    playing: Option<(usize, usize)>,
}

impl Sounds {
    /// Renders the sounds at the model's rate (a few hundred ms each, once per pipeline).
    pub(super) fn new() -> Sounds {
        Sounds {
            rendered: Chime::ALL
                .iter()
                .map(|&c| (c, render(c, MODEL_RATE)))
                .collect(),
            playing: None,
        }
    }

    /// Starts `c` from its beginning; it replaces a sound still playing (the newest news
    /// matters, and two overlapping chimes would only blur).
    pub(super) fn start(&mut self, c: Chime) {
        self.playing = self
            .rendered
            .iter()
            .position(|(k, _)| *k == c)
            .map(|i| (i, 0));
    }

    /// A sound has samples left.
    pub(super) fn is_playing(&self) -> bool {
        self.playing.is_some()
    }

    /// Adds the next `out.len()` samples of the playing sound into `out` at `gain`.
    pub(super) fn mix(&mut self, out: &mut [f32], gain: f32) {
        let Some((i, pos)) = self.playing else { return };
        let samples = &self.rendered[i].1;
        let chunk = samples.get(pos..).unwrap_or_default();
        for (o, &s) in out.iter_mut().zip(chunk) {
            *o = (*o + s * gain).clamp(-1.0, 1.0);
        }
        let next = pos + out.len();
        self.playing = (next < samples.len()).then_some((i, next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sound_is_mixed_frame_by_frame_at_the_gain() {
        let want = render(Chime::End, MODEL_RATE);
        let mut s = Sounds::new();
        assert!(!s.is_playing());
        s.start(Chime::End);
        let mut got = Vec::new();
        while s.is_playing() {
            let mut f = vec![0.0f32; 1920];
            s.mix(&mut f, 0.5);
            got.extend_from_slice(&f);
        }
        assert_eq!(got.len(), want.len().div_ceil(1920) * 1920);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(*g, w * 0.5);
        }
        assert!(got[want.len()..].iter().all(|&x| x == 0.0));
    }
}
