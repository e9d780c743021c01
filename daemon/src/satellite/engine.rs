//! [`RemoteEngine`]: the room's model step when the model is a brain elsewhere. `step` never
//! waits: it hands the frame to the link (a full queue drops it), takes whatever replies
//! and text have come back, and plays the reply due now from the jitter buffer (silence
//! when it is not back: a late frame, counted in the state's `remote_late_frames`).

use super::jitter::{Jitter, Played};
use super::link::{Link, Report};
use super::{Down, LinkState, UpFrame};
use crate::config::BrainUrl;
use crate::control::Shared;
use crate::engine::{Engine, EngineError, SamplingOverride};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Frames that may wait for the link (a link stuck connecting drops the rest).
const UP_QUEUE: usize = 8;
/// Replies and text pieces that may wait for the next step.
const DOWN_QUEUE: usize = 256;

/// What the link thread is started with.
pub(super) struct LinkParts {
    /// The brains, in order.
    pub urls: Vec<BrainUrl>,
    /// The brain's token.
    pub token: Option<String>,
    /// TLS for `wss://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Connect + handshake limit.
    pub timeout: Duration,
    /// `[sampling]` as query parameters.
    pub base_sampling: Vec<(&'static str, String)>,
    /// The daemon's state.
    pub shared: Arc<Shared>,
    /// MQTT `error`.
    pub report: Report,
}

/// The satellite's engine (see the module comment).
pub struct RemoteEngine {
    up: tokio::sync::mpsc::Sender<UpFrame>,
    down: crossbeam_channel::Receiver<Down>,
    state: Arc<LinkState>,
    shared: Arc<Shared>,
    jitter: Jitter,
    gen: u64,
    seq: u64,
    describe: String,
}

impl RemoteEngine {
    pub(super) fn start(p: LinkParts, max_delay: usize) -> anyhow::Result<RemoteEngine> {
        let (up_tx, up_rx) = tokio::sync::mpsc::channel(UP_QUEUE);
        let (down_tx, down_rx) = crossbeam_channel::bounded(DOWN_QUEUE);
        let state = Arc::new(LinkState::default());
        let urls: Vec<String> = p.urls.iter().map(|u| u.to_string()).collect();
        let describe = format!("satellite of {}", urls.join(", "));
        let link = Link {
            urls: p.urls,
            token: p.token,
            tls: p.tls,
            timeout: p.timeout,
            base_sampling: p.base_sampling,
            state: state.clone(),
            shared: p.shared.clone(),
            report: p.report,
            up: up_rx,
            down: down_tx,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("moshid-satellite".into())
            .spawn(move || rt.block_on(link.run()))?;
        Ok(RemoteEngine {
            up: up_tx,
            down: down_rx,
            state,
            shared: p.shared,
            jitter: Jitter::new(max_delay),
            gen: 0,
            seq: 0,
            describe,
        })
    }

    /// The jitter buffer's delay and the late replies so far, in the log.
    fn log_figures(&self, when: &str) {
        if self.seq == 0 {
            return;
        }
        let late = self.shared.remote_late_frames.load(Ordering::Relaxed);
        log::info!(
            delay_frames = self.jitter.delay(), late_frames = late;
            "satellite, {when}: replies play {} frame(s) ({} ms) after their input; {late} late",
            self.jitter.delay(), self.jitter.delay() * 80
        );
    }

    /// Takes what the link sent since the last step.
    fn drain(&mut self, text: &mut String) {
        while let Ok(d) = self.down.try_recv() {
            match d {
                Down::Live { gen, first } if gen == self.gen => self.jitter.set_live(Some(first)),
                Down::Lost => self.jitter.set_live(None),
                Down::Reply { gen, seq, samples } if gen == self.gen => {
                    self.jitter.arrive(seq, samples, self.seq)
                }
                Down::Text { gen, text: t } if gen == self.gen => text.push_str(&t),
                _ => {}
            }
        }
    }
}

impl Drop for RemoteEngine {
    fn drop(&mut self) {
        self.log_figures("engine released");
    }
}

impl Engine for RemoteEngine {
    fn step(
        &mut self,
        input: &[f32],
        output: &mut [f32],
        text: &mut String,
    ) -> Result<(), EngineError> {
        self.seq += 1;
        let mut samples = self.jitter.buffer();
        samples.clear();
        samples.extend_from_slice(input);
        let frame = UpFrame {
            gen: self.gen,
            seq: self.seq,
            samples,
        };
        if self.up.try_send(frame).is_err() {
            log::debug!("satellite: the link is behind, frame {} dropped", self.seq);
        }
        self.drain(text);
        if self.jitter.play(self.seq, output) == Played::Late {
            self.shared
                .remote_late_frames
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.log_figures("conversation reset");
        self.gen += 1;
        self.state.generation.store(self.gen, Ordering::Relaxed);
        self.jitter.set_live(None);
    }

    fn set_sampling(&mut self, s: &SamplingOverride) {
        self.state.set_sampling(s);
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}
