//! Capture and playback streams: a thread per device exchanging 80 ms 24 kHz mono frames
//! with the rest of the program through bounded queues, with xrun recovery and reopening
//! after device loss.

use crate::alsa::{AlsaCapture, AlsaPlayback, AlsaRequest};
use crate::device::{
    CaptureDevice, CaptureOpener, DeviceError, DeviceParams, PlaybackDevice, PlaybackOpener,
    SampleFormat,
};
use crate::resample::StreamResampler;
use crate::wavfile::{WavCapture, WavPlayback};
use crate::{HalError, FRAME_SAMPLES, MODEL_RATE};
use crossbeam_channel::{
    bounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Duration of one frame.
pub const FRAME_DURATION: Duration = Duration::from_millis(80);
/// First wait before reopening a lost device; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between reopen attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One 80 ms frame of 24 kHz mono audio.
#[derive(Debug, Clone)]
pub struct Frame {
    /// [`FRAME_SAMPLES`] samples in [-1, 1].
    pub samples: Vec<f32>,
    /// When the first sample hit the microphone (capture) or was handed to the device
    /// (playback reference), as well as the host can tell.
    pub captured_at: Instant,
}

/// Where a stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Opening the device for the first time.
    Starting,
    /// Moving audio.
    Running,
    /// The device is gone; reopening with backoff.
    Error,
    /// The source ended (WAV capture) or the stream was stopped.
    Finished,
}

/// Counters of a stream, read without blocking it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStats {
    /// Where the stream stands.
    pub state: StreamState,
    /// 80 ms frames delivered (capture) or played (playback, including silence fill).
    pub frames: u64,
    /// Overruns/underruns recovered.
    pub xruns: u64,
    /// Successful reopens after a loss.
    pub reopens: u64,
    /// Frames dropped because the queue was full (capture) or silence frames inserted
    /// because it was empty (playback).
    pub dropped: u64,
    /// Frames waiting in the queue now.
    pub queue_depth: usize,
}

#[derive(Default)]
struct Shared {
    state: AtomicU8,
    frames: AtomicU64,
    xruns: AtomicU64,
    reopens: AtomicU64,
    dropped: AtomicU64,
    stop: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn set_state(&self, s: StreamState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }
    fn state(&self) -> StreamState {
        match self.state.load(Ordering::Relaxed) {
            0 => StreamState::Starting,
            1 => StreamState::Running,
            2 => StreamState::Error,
            _ => StreamState::Finished,
        }
    }
    fn set_error(&self, e: String) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some(e);
        }
    }
    fn stats(&self, queue_depth: usize) -> StreamStats {
        StreamStats {
            state: self.state(),
            frames: self.frames.load(Ordering::Relaxed),
            xruns: self.xruns.load(Ordering::Relaxed),
            reopens: self.reopens.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            queue_depth,
        }
    }
    /// Sleeps `d` in small steps; false when asked to stop meanwhile.
    fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(10)));
        }
        !self.stop.load(Ordering::Relaxed)
    }
}

/// Where a stream's audio comes from or goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An ALSA PCM name.
    Alsa(String),
    /// A WAV file (`wav:PATH` on the command line).
    Wav(PathBuf),
}

impl Endpoint {
    /// `wav:PATH` is a WAV file, anything else an ALSA PCM name.
    pub fn parse(s: &str) -> Self {
        match s.strip_prefix("wav:") {
            Some(p) => Endpoint::Wav(PathBuf::from(p)),
            None => Endpoint::Alsa(s.to_string()),
        }
    }

    /// A file processed as fast as the consumer goes: no frame is dropped or invented
    /// (capture waits for room in the queue, playback never fills gaps with silence).
    /// Anything else keeps real time and drops or fills instead.
    pub fn is_batch(&self, pace: bool) -> bool {
        matches!(self, Endpoint::Wav(_)) && !pace
    }
}

/// Capture configuration.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// The device (a WAV file brings its own rate and channel count).
    pub device: Endpoint,
    /// Device rate in Hz (16000, 44100, 48000, ...).
    pub rate: u32,
    /// Device channel count (e.g. 6 for a mic array).
    pub channels: usize,
    /// Device sample format.
    pub format: SampleFormat,
    /// Channels averaged into the mono signal; empty means all.
    pub mic_channels: Vec<usize>,
    /// Linear gain applied after the channel mix.
    pub gain: f32,
    /// Requested period in frames.
    pub period_frames: usize,
    /// Requested buffer in frames.
    pub buffer_frames: usize,
    /// Deliver no faster than real time (for devices/files that are not paced).
    pub pace: bool,
    /// Queue length in frames; when full the oldest frame is dropped.
    pub queue_frames: usize,
}

impl CaptureConfig {
    /// Defaults for `device`: 48 kHz, 1 channel, S16, channel 0, unit gain, 20 ms periods,
    /// 80 ms buffer, not paced, 8-frame queue.
    pub fn new(device: &str) -> Self {
        Self {
            device: Endpoint::parse(device),
            rate: 48_000,
            channels: 1,
            format: SampleFormat::S16,
            mic_channels: Vec::new(),
            gain: 1.0,
            period_frames: 960,
            buffer_frames: 3840,
            pace: false,
            queue_frames: 8,
        }
    }
}

/// Highest microphone gain accepted (+40 dB).
pub const MAX_GAIN: f32 = 100.0;

impl CaptureConfig {
    /// Checks the values a capture cannot run with (the gain multiplies every sample).
    pub fn validate(&self) -> Result<(), HalError> {
        if !(self.gain.is_finite() && (0.0..=MAX_GAIN).contains(&self.gain)) {
            return Err(HalError::Config(format!(
                "microphone gain {}: use 0..={MAX_GAIN}",
                self.gain
            )));
        }
        Ok(())
    }
}

/// Playback configuration.
#[derive(Debug, Clone)]
pub struct PlaybackConfig {
    /// The device.
    pub device: Endpoint,
    /// Device rate in Hz.
    pub rate: u32,
    /// Device channel count; the mono signal goes to every channel.
    pub channels: usize,
    /// Device sample format.
    pub format: SampleFormat,
    /// Requested period in frames.
    pub period_frames: usize,
    /// Requested buffer in frames.
    pub buffer_frames: usize,
    /// Consume no faster than real time (for devices/files that are not paced).
    pub pace: bool,
    /// Queue length in frames; `send` refuses frames when full.
    pub queue_frames: usize,
}

impl PlaybackConfig {
    /// Defaults for `device`: 48 kHz stereo S16, 20 ms periods, 80 ms buffer, 8-frame queue.
    pub fn new(device: &str) -> Self {
        Self {
            device: Endpoint::parse(device),
            rate: 48_000,
            channels: 2,
            format: SampleFormat::S16,
            period_frames: 960,
            buffer_frames: 3840,
            pace: false,
            queue_frames: 8,
        }
    }
}

fn capture_opener(cfg: &CaptureConfig) -> CaptureOpener {
    let cfg = cfg.clone();
    Box::new(move || -> Result<Box<dyn CaptureDevice>, HalError> {
        Ok(match &cfg.device {
            Endpoint::Wav(p) => Box::new(WavCapture::open(p, cfg.pace)?),
            Endpoint::Alsa(name) => Box::new(AlsaCapture::open(&AlsaRequest {
                device: name,
                rate: cfg.rate,
                channels: cfg.channels,
                format: cfg.format,
                period_frames: cfg.period_frames,
                buffer_frames: cfg.buffer_frames,
            })?),
        })
    })
}

fn playback_opener(cfg: &PlaybackConfig) -> PlaybackOpener {
    let cfg = cfg.clone();
    Box::new(move || -> Result<Box<dyn PlaybackDevice>, HalError> {
        Ok(match &cfg.device {
            Endpoint::Wav(p) => Box::new(WavPlayback::create(p, cfg.rate, cfg.channels, cfg.pace)?),
            Endpoint::Alsa(name) => Box::new(AlsaPlayback::open(&AlsaRequest {
                device: name,
                rate: cfg.rate,
                channels: cfg.channels,
                format: cfg.format,
                period_frames: cfg.period_frames,
                buffer_frames: cfg.buffer_frames,
            })?),
        })
    })
}

/// Holds the device open across losses: reopens with exponential backoff.
struct Reopen<D: ?Sized> {
    opener: Box<dyn FnMut() -> Result<Box<D>, HalError> + Send>,
}

impl<D: ?Sized> Reopen<D> {
    /// Tries until it opens or the stream is stopped (None).
    fn reopen(&mut self, shared: &Shared) -> Option<Box<D>> {
        shared.set_state(StreamState::Error);
        let mut backoff = MIN_BACKOFF;
        loop {
            if !shared.sleep(backoff) {
                return None;
            }
            match (self.opener)() {
                Ok(d) => {
                    shared.reopens.fetch_add(1, Ordering::Relaxed);
                    shared.set_state(StreamState::Running);
                    return Some(d);
                }
                Err(e) => {
                    shared.set_error(e.to_string());
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Mixes the chosen channels of interleaved audio to mono with a gain (no allocation);
/// returns the number of frames written to `out`.
pub fn mix(
    interleaved: &[f32],
    channels: usize,
    pick: &[usize],
    gain: f32,
    out: &mut [f32],
) -> usize {
    let frames = interleaved.len() / channels;
    let scale = gain / pick.len() as f32;
    for (o, f) in out
        .iter_mut()
        .zip(interleaved.chunks_exact(channels))
        .take(frames)
    {
        *o = pick.iter().map(|&c| f[c]).sum::<f32>() * scale;
    }
    frames
}

fn check_channels(
    pick: &[usize],
    params: &DeviceParams,
    device: &Endpoint,
) -> Result<Vec<usize>, HalError> {
    if pick.is_empty() {
        return Ok((0..params.channels).collect());
    }
    if let Some(&bad) = pick.iter().find(|&&c| c >= params.channels) {
        return Err(HalError::Config(format!(
            "microphone channel {bad} does not exist: {device:?} has {} channels (0..{})",
            params.channels,
            params.channels.saturating_sub(1)
        )));
    }
    Ok(pick.to_vec())
}

/// A running capture: frames come out of [`CaptureStream::recv`].
pub struct CaptureStream {
    rx: Receiver<Frame>,
    pool_tx: Sender<Vec<f32>>,
    shared: Arc<Shared>,
    params: DeviceParams,
    batch: bool,
    thread: Option<JoinHandle<()>>,
}

impl CaptureStream {
    /// Opens the configured device (ALSA or WAV) and starts capturing. Opening errors are
    /// returned here (naming the device and listing what exists); later losses are retried.
    pub fn start(cfg: &CaptureConfig) -> Result<Self, HalError> {
        Self::with_opener(cfg, capture_opener(cfg))
    }

    /// Like [`Self::start`] with a custom device opener (e.g. a wrapper that injects faults).
    pub fn with_opener(cfg: &CaptureConfig, mut opener: CaptureOpener) -> Result<Self, HalError> {
        cfg.validate()?;
        let dev = opener()?;
        let params = dev.params().clone();
        let pick = check_channels(&cfg.mic_channels, &params, &cfg.device)?;
        let resampler = StreamResampler::new(params.rate, MODEL_RATE)?;
        let (tx, rx) = bounded(cfg.queue_frames.max(1));
        let (pool_tx, pool_rx) = bounded(cfg.queue_frames.max(1) + 2);
        let shared = Arc::new(Shared::default());
        let worker = CaptureWorker {
            dev,
            reopen: Reopen { opener },
            shared: shared.clone(),
            tx,
            drain: rx.clone(),
            pool: pool_rx,
            pick,
            gain: cfg.gain,
            pace: cfg.pace,
            batch: cfg.device.is_batch(cfg.pace),
            resampler,
            buf: vec![0.0; params.period_frames.max(1) * params.channels],
            mono: vec![0.0; params.period_frames.max(1)],
        };
        let thread = std::thread::Builder::new()
            .name("moshid-capture".into())
            .spawn(move || worker.run())
            .map_err(|e| HalError::Config(format!("cannot start the capture thread: {e}")))?;
        Ok(Self {
            rx,
            pool_tx,
            shared,
            params,
            batch: cfg.device.is_batch(cfg.pace),
            thread: Some(thread),
        })
    }

    /// What the device agreed to.
    pub fn params(&self) -> &DeviceParams {
        &self.params
    }

    /// True for a file read as fast as it is consumed (see [`Endpoint::is_batch`]): its
    /// queue is never a backlog to skip.
    pub fn is_batch(&self) -> bool {
        self.batch
    }

    /// The next frame, waiting up to `timeout`; None on timeout or when the stream ended.
    pub fn recv(&self, timeout: Duration) -> Option<Frame> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Gives a frame's buffer back so the capture thread can reuse it.
    pub fn recycle(&self, frame: Frame) {
        let _ = self.pool_tx.try_send(frame.samples);
    }

    /// True once the source ended (WAV capture) and the queue is empty.
    pub fn is_finished(&self) -> bool {
        self.shared.state() == StreamState::Finished && self.rx.is_empty()
    }

    /// Counters, without blocking the stream.
    pub fn stats(&self) -> StreamStats {
        self.shared.stats(self.rx.len())
    }

    /// The last device error (while in [`StreamState::Error`]).
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().ok().and_then(|g| g.clone())
    }

    /// Stops the thread and closes the device.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for CaptureStream {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct CaptureWorker {
    dev: Box<dyn CaptureDevice>,
    reopen: Reopen<dyn CaptureDevice>,
    shared: Arc<Shared>,
    tx: Sender<Frame>,
    drain: Receiver<Frame>,
    pool: Receiver<Vec<f32>>,
    pick: Vec<usize>,
    gain: f32,
    pace: bool,
    /// A file read as fast as it is consumed: wait for room instead of dropping.
    batch: bool,
    resampler: StreamResampler,
    buf: Vec<f32>,
    mono: Vec<f32>,
}

impl CaptureWorker {
    fn run(mut self) {
        self.shared.set_state(StreamState::Running);
        let mut started = Instant::now();
        let mut done: u64 = 0;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let ch = self.dev.params().channels;
            let rate = self.dev.params().rate;
            match self.dev.read(&mut self.buf) {
                Ok(frames) => {
                    let now = Instant::now();
                    let n = mix(
                        &self.buf[..frames * ch],
                        ch,
                        &self.pick,
                        self.gain,
                        &mut self.mono,
                    );
                    if self.resampler.push(&self.mono[..n]).is_err() {
                        self.resampler.reset();
                    }
                    self.deliver(now);
                    done += frames as u64;
                    if self.pace {
                        let due = started + Duration::from_secs_f64(done as f64 / rate as f64);
                        let now = Instant::now();
                        if due > now {
                            self.shared.sleep(due - now);
                        }
                    }
                }
                Err(DeviceError::Xrun) => {
                    self.shared.xruns.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = self.dev.recover() {
                        self.shared.set_error(e.to_string());
                        if !self.reopen_device() {
                            break;
                        }
                        (started, done) = (Instant::now(), 0);
                    }
                }
                Err(DeviceError::Lost(e)) => {
                    self.shared.set_error(e);
                    if !self.reopen_device() {
                        break;
                    }
                    (started, done) = (Instant::now(), 0);
                }
                Err(DeviceError::EndOfStream) => {
                    self.flush_last_frame();
                    break;
                }
                Err(DeviceError::Failed(e)) => {
                    self.shared.set_error(e);
                    return self.shared.set_state(StreamState::Error);
                }
            }
        }
        self.shared.set_state(StreamState::Finished);
    }

    /// At the end of a file: the samples short of a whole frame, padded with silence, so
    /// that nothing of the input is lost.
    fn flush_last_frame(&mut self) {
        if self.resampler.available() == 0 {
            return;
        }
        self.mono.fill(0.0);
        for _ in 0..1000 {
            if self.resampler.available() >= FRAME_SAMPLES
                || self.resampler.push(&self.mono).is_err()
            {
                break;
            }
        }
        self.deliver(Instant::now());
    }

    /// Replaces the device; false when the stream was stopped meanwhile.
    fn reopen_device(&mut self) -> bool {
        loop {
            let Some(dev) = self.reopen.reopen(&self.shared) else {
                return false;
            };
            let p = dev.params();
            // A device that comes back different (other rate/channels) cannot feed the
            // buffers sized for it: keep trying until the right one returns.
            if p.channels * p.period_frames.max(1) <= self.buf.len()
                && self.pick.iter().all(|&c| c < p.channels)
                && StreamResampler::new(p.rate, MODEL_RATE)
                    .map(|r| self.resampler = r)
                    .is_ok()
            {
                self.dev = dev;
                return true;
            }
            self.shared
                .set_error(format!("device came back with different parameters: {p:?}"));
        }
    }

    fn deliver(&mut self, read_done: Instant) {
        while self.resampler.available() >= FRAME_SAMPLES {
            let mut samples = self
                .pool
                .try_recv()
                .unwrap_or_else(|_| vec![0.0; FRAME_SAMPLES]);
            samples.resize(FRAME_SAMPLES, 0.0);
            let after = self.resampler.available();
            let _ = self.resampler.pop(&mut samples);
            // The frame's first sample is `after` samples (plus the resampler delay) older
            // than the newest sample, which arrived when the read returned.
            let age = (after + self.resampler.delay()) as f64 / MODEL_RATE as f64;
            let captured_at = read_done
                .checked_sub(Duration::from_secs_f64(age))
                .unwrap_or(read_done);
            let mut frame = Frame {
                samples,
                captured_at,
            };
            if self.batch {
                // A file: wait for the consumer instead of dropping (checking for stop).
                while let Err(e) = self.tx.send_timeout(frame, FRAME_DURATION) {
                    match e {
                        crossbeam_channel::SendTimeoutError::Timeout(f)
                            if !self.shared.stop.load(Ordering::Relaxed) =>
                        {
                            frame = f
                        }
                        _ => return,
                    }
                }
                self.shared.frames.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            loop {
                match self.tx.try_send(frame) {
                    Ok(()) => break,
                    Err(TrySendError::Full(f)) => {
                        // Real time wins: drop the oldest frame, keep the newest.
                        if self.drain.try_recv().is_ok() {
                            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        frame = f;
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
            self.shared.frames.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A running playback: frames go in with [`PlaybackStream::send`]; what was actually sent to
/// the device (including silence fill) comes back on [`PlaybackStream::reference`] for
/// echo cancellation.
pub struct PlaybackStream {
    tx: Option<Sender<Frame>>,
    reference: Receiver<Frame>,
    /// Frame buffers for reuse: from reference frames nobody read, and from readers.
    pool: (Sender<Vec<f32>>, Receiver<Vec<f32>>),
    shared: Arc<Shared>,
    params: DeviceParams,
    thread: Option<JoinHandle<()>>,
    rx_len: Receiver<Frame>,
}

impl PlaybackStream {
    /// Opens the configured device and starts the playback thread.
    pub fn start(cfg: &PlaybackConfig) -> Result<Self, HalError> {
        Self::with_opener(cfg, playback_opener(cfg))
    }

    /// Like [`Self::start`] with a custom device opener.
    pub fn with_opener(cfg: &PlaybackConfig, mut opener: PlaybackOpener) -> Result<Self, HalError> {
        let dev = opener()?;
        let params = dev.params().clone();
        let resampler = StreamResampler::new(MODEL_RATE, params.rate)?;
        let (tx, rx) = bounded::<Frame>(cfg.queue_frames.max(1));
        let (ref_tx, ref_rx) = bounded(cfg.queue_frames.max(1) * 2);
        let pool = bounded(cfg.queue_frames.max(1) * 2 + 4);
        let shared = Arc::new(Shared::default());
        let out_frames =
            (FRAME_SAMPLES as u64 * params.rate as u64 / MODEL_RATE as u64) as usize + 64;
        let worker = PlaybackWorker {
            dev,
            reopen: Reopen { opener },
            shared: shared.clone(),
            rx: rx.clone(),
            ref_tx,
            ref_drain: ref_rx.clone(),
            pool: pool.0.clone(),
            pace: cfg.pace,
            fill_gaps: !cfg.device.is_batch(cfg.pace),
            resampler,
            mono: vec![0.0; out_frames],
            inter: vec![0.0; out_frames * params.channels],
            failed: false,
        };
        let thread = std::thread::Builder::new()
            .name("moshid-playback".into())
            .spawn(move || worker.run())
            .map_err(|e| HalError::Config(format!("cannot start the playback thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            reference: ref_rx,
            pool,
            shared,
            params,
            thread: Some(thread),
            rx_len: rx,
        })
    }

    /// What the device agreed to.
    pub fn params(&self) -> &DeviceParams {
        &self.params
    }

    /// Queues a frame; gives it back when the queue is full (the caller is ahead of the
    /// device) or the samples are not [`FRAME_SAMPLES`] long.
    pub fn send(&self, frame: Frame) -> Result<(), Frame> {
        if frame.samples.len() != FRAME_SAMPLES {
            return Err(frame);
        }
        match &self.tx {
            Some(tx) => tx.try_send(frame).map_err(|e| e.into_inner()),
            None => Err(frame),
        }
    }

    /// Queues a frame, waiting for room; gives it back once the playback thread has ended
    /// (its device failed for good), which would otherwise leave nobody to make room.
    pub fn send_blocking(&self, frame: Frame) -> Result<(), Frame> {
        if frame.samples.len() != FRAME_SAMPLES {
            return Err(frame);
        }
        let Some(tx) = &self.tx else {
            return Err(frame);
        };
        let mut frame = frame;
        loop {
            match tx.send_timeout(frame, FRAME_DURATION) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Disconnected(f)) => return Err(f),
                Err(SendTimeoutError::Timeout(f)) => {
                    if self.has_stopped() {
                        return Err(f);
                    }
                    frame = f;
                }
            }
        }
    }

    /// True once the playback thread has ended: its device failed for good (see
    /// [`Self::finish`] for why), or the stream was closed.
    pub fn has_stopped(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// The far-end reference: each frame as handed to the device, stamped with that time.
    pub fn reference(&self) -> &Receiver<Frame> {
        &self.reference
    }

    /// A frame buffer to fill and [`Self::send`]: a recycled one when there is one, so a
    /// steady stream allocates nothing.
    pub fn buffer(&self) -> Vec<f32> {
        match self.pool.1.try_recv() {
            Ok(b) if b.len() == FRAME_SAMPLES => b,
            _ => vec![0.0; FRAME_SAMPLES],
        }
    }

    /// Where readers of [`Self::reference`] give the frames' buffers back.
    pub fn recycler(&self) -> Sender<Vec<f32>> {
        self.pool.0.clone()
    }

    /// What the device buffers: audio written to it but not yet heard.
    pub fn device_delay(&self) -> Duration {
        Duration::from_secs_f64(self.params.buffer_frames as f64 / self.params.rate.max(1) as f64)
    }

    /// Counters, without blocking the stream.
    pub fn stats(&self) -> StreamStats {
        self.shared.stats(self.rx_len.len())
    }

    /// The last device error.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().ok().and_then(|g| g.clone())
    }

    /// Plays everything queued, drains the device and stops; an error when the device
    /// failed for good on the way (a WAV file that could not be written completely).
    pub fn finish(mut self) -> Result<(), HalError> {
        self.close()
    }

    /// Like [`Self::finish`], for an owner that keeps the (now closed) stream.
    pub fn close(&mut self) -> Result<(), HalError> {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        match self.shared.state() {
            StreamState::Error => Err(HalError::Stream(format!(
                "playback failed: {}",
                self.last_error().unwrap_or_else(|| "unknown error".into())
            ))),
            _ => Ok(()),
        }
    }

    /// Stops now, dropping what is queued.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PlaybackStream {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct PlaybackWorker {
    dev: Box<dyn PlaybackDevice>,
    reopen: Reopen<dyn PlaybackDevice>,
    shared: Arc<Shared>,
    rx: Receiver<Frame>,
    ref_tx: Sender<Frame>,
    ref_drain: Receiver<Frame>,
    pool: Sender<Vec<f32>>,
    pace: bool,
    /// Keep the device fed with silence when no frame comes in time (real-time devices).
    fill_gaps: bool,
    resampler: StreamResampler,
    mono: Vec<f32>,
    inter: Vec<f32>,
    /// The device failed for good ([`DeviceError::Failed`]).
    failed: bool,
}

impl PlaybackWorker {
    fn run(mut self) {
        self.shared.set_state(StreamState::Running);
        let mut spare: Option<Vec<f32>> = None;
        let (started, mut played) = (Instant::now(), 0u64);
        while !self.shared.stop.load(Ordering::Relaxed) {
            let frame = match self.next_frame(&mut spare) {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(()) => break,
            };
            let Some(handed) = self.write_frame(&frame.samples) else {
                break;
            };
            self.shared.frames.fetch_add(1, Ordering::Relaxed);
            played += 1;
            if self.pace {
                // Like a sound card: one frame per 80 ms, whatever the device accepts.
                let due = started + FRAME_DURATION * played as u32;
                let now = Instant::now();
                if due > now {
                    self.shared.sleep(due - now);
                }
            }
            self.send_reference(frame.samples, handed, &mut spare);
        }
        if let Err(e) = self.dev.finish() {
            // The first failure is the one to report.
            if !self.failed {
                self.shared.set_error(e.to_string());
            }
            self.failed = true;
        }
        // A failed stream stays in Error: its owner reads why with `finish`/`last_error`.
        let end = if self.failed {
            StreamState::Error
        } else {
            StreamState::Finished
        };
        self.shared.set_state(end);
    }

    /// The next frame to play: queued, or silence when starved on a real-time device;
    /// `Ok(None)` means wait again, `Err` that the sender is gone.
    fn next_frame(&mut self, spare: &mut Option<Vec<f32>>) -> Result<Option<Frame>, ()> {
        match self.rx.recv_timeout(FRAME_DURATION) {
            Ok(f) => Ok(Some(f)),
            Err(RecvTimeoutError::Disconnected) => Err(()),
            Err(RecvTimeoutError::Timeout) if !self.fill_gaps => Ok(None),
            Err(RecvTimeoutError::Timeout) => {
                // Starved: keep the device fed with silence so it does not underrun.
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                let mut s = spare.take().unwrap_or_else(|| vec![0.0; FRAME_SAMPLES]);
                s.iter_mut().for_each(|v| *v = 0.0);
                Ok(Some(Frame {
                    samples: s,
                    captured_at: Instant::now(),
                }))
            }
        }
    }

    /// Resamples, interleaves and writes one frame, recovering xruns and reopening a lost
    /// device; returns when it was handed to the device, None to stop.
    fn write_frame(&mut self, samples: &[f32]) -> Option<Instant> {
        if self.resampler.push(samples).is_err() {
            self.resampler.reset();
        }
        let n = self.resampler.available().min(self.mono.len());
        let _ = self.resampler.pop(&mut self.mono[..n]);
        let ch = self.dev.params().channels;
        for (f, &v) in self.inter.chunks_exact_mut(ch).zip(&self.mono[..n]) {
            f.iter_mut().for_each(|s| *s = v);
        }
        let handed = Instant::now();
        let mut off = 0;
        while off < n {
            if self.shared.stop.load(Ordering::Relaxed) {
                return None;
            }
            match self.dev.write(&self.inter[off * ch..n * ch]) {
                Ok(w) => off += w,
                Err(DeviceError::Xrun) => {
                    self.shared.xruns.fetch_add(1, Ordering::Relaxed);
                    if self.dev.recover().is_err() && !self.reopen_device() {
                        return None;
                    }
                }
                Err(DeviceError::Lost(e)) => {
                    self.shared.set_error(e);
                    // The rest of this frame is lost with the device.
                    return self.reopen_device().then_some(handed);
                }
                Err(DeviceError::EndOfStream) => return None,
                Err(DeviceError::Failed(e)) => {
                    self.shared.set_error(e);
                    self.failed = true;
                    return None;
                }
            }
        }
        Some(handed)
    }

    /// Hands the frame to the echo reference, stamped with when the device got it.
    fn send_reference(&mut self, samples: Vec<f32>, handed: Instant, spare: &mut Option<Vec<f32>>) {
        let r = Frame {
            samples,
            captured_at: handed,
        };
        match self.ref_tx.try_send(r) {
            Ok(()) => {}
            Err(TrySendError::Full(r)) => {
                // Nobody is reading the reference: keep the newest, recycle the oldest.
                if let Ok(old) = self.ref_drain.try_recv() {
                    let _ = self.pool.try_send(old.samples);
                }
                let _ = self.ref_tx.try_send(r);
            }
            Err(TrySendError::Disconnected(r)) => *spare = Some(r.samples),
        }
    }

    fn reopen_device(&mut self) -> bool {
        loop {
            let Some(dev) = self.reopen.reopen(&self.shared) else {
                return false;
            };
            let p = dev.params();
            if self.mono.len() * p.channels <= self.inter.len()
                && StreamResampler::new(MODEL_RATE, p.rate)
                    .map(|r| self.resampler = r)
                    .is_ok()
            {
                self.dev = dev;
                return true;
            }
            self.shared
                .set_error(format!("device came back with different parameters: {p:?}"));
        }
    }
}
