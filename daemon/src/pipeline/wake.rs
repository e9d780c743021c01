//! The wake-word listener of the inference thread: while the room is idle, its echo-cancelled
//! 24 kHz frames are resampled to 16 kHz and run through the detector
//! (`moshid_models::wake`); a detection starts the room's conversation.

use std::sync::Arc;

use moshid_hal::resample::StreamResampler;
use moshid_hal::MODEL_RATE;
use moshid_models::wake::{Detector, WakeModel};

/// What the pipeline needs to listen for a wake word (`[wake]`, its model loaded).
#[derive(Debug, Clone)]
pub struct WakeParams {
    /// The model.
    pub model: Arc<WakeModel>,
    /// The cutoff instead of the model's (`[wake] sensitivity`).
    pub cutoff: Option<f64>,
}

/// A detection.
#[derive(Debug, Clone, PartialEq)]
pub struct Heard {
    /// The wake word's model (`okay_nabu`, or a model file's name).
    pub wake_word: Arc<str>,
    /// The window mean that crossed the cutoff.
    pub probability: f64,
}

/// Detector + resampler, with buffers allocated once.
pub(super) struct Listener {
    name: Arc<str>,
    det: Detector,
    rs: StreamResampler,
    block: Vec<f32>,
    pcm: Vec<i16>,
}

/// 10 ms at 16 kHz: the listener feeds the detector in these steps.
const BLOCK: usize = 160;

impl Listener {
    /// A listener, or None (logged) when the detector or the resampler cannot be made.
    pub(super) fn new(p: &WakeParams) -> Option<Listener> {
        let made = Detector::new(&p.model)
            .map_err(|e| e.to_string())
            .and_then(|mut det| {
                if let Some(c) = p.cutoff {
                    det.set_cutoff(c);
                }
                let rs = StreamResampler::new(MODEL_RATE, 16_000).map_err(|e| e.to_string())?;
                Ok((det, rs))
            });
        match made {
            Ok((det, rs)) => Some(Listener {
                name: Arc::from(p.model.name.as_str()),
                det,
                rs,
                block: vec![0.0; BLOCK],
                pcm: vec![0; BLOCK],
            }),
            Err(e) => {
                log::error!("wake word disabled: {e}");
                None
            }
        }
    }

    /// Forgets what it heard (a conversation started or ended).
    pub(super) fn reset(&mut self) {
        self.det.reset();
        self.rs.reset();
    }

    /// Feeds one 24 kHz frame; returns the first detection in it.
    pub(super) fn hear(&mut self, frame: &[f32]) -> Option<Heard> {
        if let Err(e) = self.rs.push(frame) {
            log::warn!("wake word: frame skipped: {e}");
            return None;
        }
        let mut heard = None;
        while self.rs.pop(&mut self.block) {
            for (p, &x) in self.pcm.iter_mut().zip(&self.block) {
                *p = (x * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16;
            }
            let r = self.det.push_samples(&self.pcm, |i| {
                if i.detection && heard.is_none() {
                    heard = Some(Heard {
                        wake_word: self.name.clone(),
                        probability: i.mean,
                    });
                }
            });
            if let Err(e) = r {
                log::warn!("wake word: {e}");
            }
        }
        heard
    }
}
