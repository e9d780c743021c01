//! State shared between the audio/inference threads, the supervisor and MQTT.
//!
//! The hot path only reads and writes atomics here; nothing in it takes a lock that
//! the network side could hold for long.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

/// What the appliance is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Downloading or loading models, opening audio.
    Loading,
    /// Ready, not in a conversation.
    Idle,
    /// Listening and speaking.
    Conversation,
    /// Something failed; see `error` in the state.
    Error,
    /// The daemon stopped cleanly (the last retained state; availability is `offline`).
    Stopped,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Loading,
            1 => Phase::Idle,
            2 => Phase::Conversation,
            3 => Phase::Error,
            _ => Phase::Stopped,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            Phase::Loading => 0,
            Phase::Idle => 1,
            Phase::Conversation => 2,
            Phase::Error => 3,
            Phase::Stopped => 4,
        }
    }

    /// The status line a steady phase starts with (the supervisor adds figures later).
    fn status(self) -> Option<&'static str> {
        match self {
            Phase::Idle => Some("idle: waiting for a conversation"),
            Phase::Conversation => Some("conversation"),
            Phase::Stopped => Some("stopped"),
            Phase::Loading | Phase::Error => None,
        }
    }
}

/// The live state: written by the pipeline and commands, read by MQTT and systemd.
#[derive(Debug)]
pub struct Shared {
    phase: AtomicU8,
    /// User wants a conversation (the `conversation` switch).
    pub conversation: AtomicBool,
    /// Microphone muted: the model hears silence.
    pub muted: AtomicBool,
    /// Output volume 0-100.
    pub volume: AtomicU8,
    /// Ask the inference thread to reset the model state (set/reset).
    pub reset_requested: AtomicBool,
    /// The wake-word switch (`set/wake`): off, the room does not listen for its wake word
    /// even with `[wake] enabled`. On at start.
    pub wake_on: AtomicBool,
    /// Input frames skipped because inference fell behind.
    pub dropped_frames: AtomicU64,
    /// Output frames lost because the playback queue was full.
    pub dropped_output: AtomicU64,
    /// Events lost because the MQTT queue was full.
    pub dropped_events: AtomicU64,
    /// Transcript pieces not sent because the broker was unreachable.
    pub dropped_transcripts: AtomicU64,
    /// Web sessions: input frames dropped (oldest first) while the model was behind.
    pub web_dropped_input: AtomicU64,
    /// Web sessions: output messages dropped because the client did not keep up.
    pub web_dropped_output: AtomicU64,
    /// Satellite: replies from the brain that were not back in time (played as silence).
    pub remote_late_frames: AtomicU64,
    /// The model is a brain over the network (`[model] source = "remote"`).
    pub satellite: AtomicBool,
    /// Model steps done since start.
    pub steps: AtomicU64,
    /// Last end-to-end latency (capture to playback), f32 bits, milliseconds.
    latency_ms: AtomicU32,
    /// Moving-average real-time factor (step time / 80 ms), f32 bits.
    rtf: AtomicU32,
    /// Milliseconds since `epoch` of the inference loop's last progress (heartbeat).
    pub heartbeat_ms: AtomicU64,
    /// Bumped on every change that should be re-published.
    pub revision: AtomicU64,
    /// Level of what the model last heard (after mute and AEC), dBFS x 10.
    input_level: std::sync::atomic::AtomicI32,
    /// Latency distribution since start.
    pub latency_stats: Histogram,
    /// Model step time distribution since start.
    pub step_stats: Histogram,
    epoch: std::time::Instant,
    text: Mutex<SharedText>,
    /// The room's conversation as the kiosk screen shows it.
    pub room: crate::room::RoomLog,
}

/// An allocation-free histogram of milliseconds (5 ms buckets up to 2.56 s).
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU32; 512],
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

/// Summary figures of a [`Histogram`].
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Figures {
    /// Samples recorded.
    pub count: u64,
    /// Mean in ms.
    pub mean_ms: f64,
    /// Median in ms (bucket resolution 5 ms).
    pub p50_ms: f64,
    /// 95th percentile in ms (bucket resolution 5 ms).
    pub p95_ms: f64,
    /// Maximum in ms.
    pub max_ms: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    const BUCKET_MS: f64 = 5.0;

    /// Records one value.
    pub fn record(&self, ms: f32) {
        let us = (ms.max(0.0) * 1000.0) as u64;
        let b = ((ms.max(0.0) as f64 / Self::BUCKET_MS) as usize).min(self.buckets.len() - 1);
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    fn quantile(&self, q: f64, count: u64) -> f64 {
        let target = (q * count as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed) as u64;
            if seen >= target {
                return (i as f64 + 0.5) * Self::BUCKET_MS;
            }
        }
        self.buckets.len() as f64 * Self::BUCKET_MS
    }

    /// Mean, median, p95 and max.
    pub fn figures(&self) -> Figures {
        let count = self.count.load(Ordering::Relaxed);
        if count == 0 {
            return Figures::default();
        }
        let max_ms = self.max_us.load(Ordering::Relaxed) as f64 / 1000.0;
        Figures {
            count,
            mean_ms: self.sum_us.load(Ordering::Relaxed) as f64 / 1000.0 / count as f64,
            p50_ms: self.quantile(0.5, count).min(max_ms),
            p95_ms: self.quantile(0.95, count).min(max_ms),
            max_ms,
        }
    }
}

#[derive(Debug, Default)]
struct SharedText {
    voice: String,
    persona: Option<String>,
    /// The web sessions' clients (`web 10.0.0.7:5123`), in the order they came.
    web_sessions: Vec<String>,
    web_error: Option<String>,
    status: String,
    error: Option<String>,
    download: Option<f32>,
    wake_word: Option<String>,
}

/// A JSON snapshot of [`Shared`] (the retained `state` topic).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StateSnapshot {
    /// `loading`, `idle`, `conversation` or `error`.
    pub phase: Phase,
    /// Microphone muted.
    pub muted: bool,
    /// Volume 0-100.
    pub volume: u8,
    /// Voice preset.
    pub voice: String,
    /// PersonaPlex persona every conversation starts with (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persona: Option<String>,
    /// Conversations in progress on the model: the room's (while it is on) and the web
    /// sessions'.
    pub conversations: usize,
    /// Who they are with: `room`, and `web ADDRESS:PORT` per web session.
    pub endpoints: Vec<String>,
    /// End-to-end latency in ms (capture to playback), last frame.
    pub latency_ms: f64,
    /// Real-time factor of the model step (below 1 = faster than real time).
    pub rtf: f64,
    /// Input frames skipped since start.
    pub dropped_frames: u64,
    /// Transcript pieces not sent while the broker was unreachable.
    pub dropped_transcripts: u64,
    /// Web sessions: input frames dropped (oldest first) while the model was behind.
    pub web_dropped_input: u64,
    /// Web sessions: output messages a slow client could not take.
    pub web_dropped_output: u64,
    /// Satellite only: the brain's replies that were not back in time (silence instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_late_frames: Option<u64>,
    /// Model steps since start.
    pub steps: u64,
    /// Level of what the model last heard (after mute and echo cancellation), dBFS.
    pub input_dbfs: f64,
    /// The wake word the room listens for (its model's name), null when it does not listen
    /// (`[wake]` off, its model did not load, or `set/wake OFF`).
    pub wake_word: Option<String>,
    /// Human-readable status line.
    pub status: String,
    /// Download progress 0-100 while fetching models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_percent: Option<f32>,
    /// Last error: why phase is `error`, or a refused change (a failed reload) while the
    /// rest kept running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the web endpoint does not serve (it could not listen); the rest runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_error: Option<String>,
}

impl Shared {
    /// New state in phase `loading`.
    pub fn new(voice: &str, volume: u8, conversation: bool) -> Shared {
        Shared {
            phase: AtomicU8::new(Phase::Loading.as_u8()),
            conversation: AtomicBool::new(conversation),
            muted: AtomicBool::new(false),
            volume: AtomicU8::new(volume.min(100)),
            reset_requested: AtomicBool::new(false),
            wake_on: AtomicBool::new(true),
            dropped_frames: AtomicU64::new(0),
            dropped_output: AtomicU64::new(0),
            dropped_events: AtomicU64::new(0),
            dropped_transcripts: AtomicU64::new(0),
            web_dropped_input: AtomicU64::new(0),
            web_dropped_output: AtomicU64::new(0),
            remote_late_frames: AtomicU64::new(0),
            satellite: AtomicBool::new(false),
            steps: AtomicU64::new(0),
            latency_ms: AtomicU32::new(0),
            rtf: AtomicU32::new(0),
            heartbeat_ms: AtomicU64::new(0),
            revision: AtomicU64::new(0),
            input_level: std::sync::atomic::AtomicI32::new(-1200),
            latency_stats: Histogram::default(),
            step_stats: Histogram::default(),
            epoch: std::time::Instant::now(),
            room: crate::room::RoomLog::default(),
            text: Mutex::new(SharedText {
                voice: voice.to_string(),
                status: "starting".into(),
                ..Default::default()
            }),
        }
    }

    fn bump(&self) {
        self.revision.fetch_add(1, Ordering::Relaxed);
    }

    fn text(&self) -> std::sync::MutexGuard<'_, SharedText> {
        // A poisoned lock only means a thread panicked while holding it; the strings
        // inside are still valid.
        self.text.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Sets the phase. Entering a steady phase (idle, conversation, stopped) also sets its
    /// status line, under the same lock, so that no snapshot shows one without the other.
    pub fn set_phase(&self, p: Phase) {
        let mut t = self.text();
        if self.phase.swap(p.as_u8(), Ordering::Relaxed) != p.as_u8() {
            if let Some(status) = p.status() {
                t.status = status.to_string();
            }
            drop(t);
            self.bump();
        }
    }

    /// A web session started (`name`: `web ADDRESS:PORT`).
    pub fn add_web_session(&self, name: &str) {
        self.text().web_sessions.push(name.to_string());
        self.bump();
    }

    /// A web session ended.
    pub fn remove_web_session(&self, name: &str) {
        let mut t = self.text();
        if let Some(i) = t.web_sessions.iter().position(|n| n == name) {
            t.web_sessions.remove(i);
        }
        drop(t);
        self.bump();
    }

    /// Records why the web endpoint does not serve (None: it serves).
    pub fn set_web_error(&self, msg: Option<&str>) {
        self.text().web_error = msg.map(str::to_string);
        self.bump();
    }

    /// Why the web endpoint does not serve, if it does not.
    pub fn web_error(&self) -> Option<String> {
        self.text().web_error.clone()
    }

    /// Enters phase `error` with a message.
    pub fn set_error(&self, msg: &str) {
        self.text().error = Some(msg.to_string());
        self.set_phase(Phase::Error);
        self.bump();
    }

    /// Records a problem that did not stop anything (a reload that was refused): the phase
    /// stays, the message shows in the state's `error` until the next successful change.
    pub fn set_warning(&self, msg: &str) {
        self.text().error = Some(msg.to_string());
        self.bump();
    }

    /// Clears a previous error.
    pub fn clear_error(&self) {
        if self.text().error.take().is_some() {
            self.bump();
        }
    }

    /// Sets the human-readable status line (also sent as systemd STATUS=).
    pub fn set_status(&self, s: &str) {
        let mut t = self.text();
        if t.status != s {
            t.status = s.to_string();
            drop(t);
            self.bump();
        }
    }

    /// The status line.
    pub fn status(&self) -> String {
        self.text().status.clone()
    }

    /// Download progress while fetching (None when not downloading).
    pub fn set_download(&self, pct: Option<f32>) {
        self.text().download = pct;
        self.bump();
    }

    /// Sets the voice name.
    pub fn set_voice(&self, v: &str) {
        self.text().voice = v.to_string();
        self.bump();
    }

    /// Sets the persona name (None: no persona).
    pub fn set_persona(&self, p: Option<&str>) {
        self.text().persona = p.map(str::to_string);
        self.bump();
    }

    /// Sets the wake word the running pipeline listens for (None: it does not listen).
    pub fn set_wake_word(&self, name: Option<&str>) {
        self.text().wake_word = name.map(str::to_string);
        self.bump();
    }

    /// Records the end-to-end latency of one played frame.
    pub fn record_latency(&self, ms: f32) {
        self.latency_ms.store(ms.to_bits(), Ordering::Relaxed);
        self.latency_stats.record(ms);
    }

    /// Records the RMS level of what the model heard.
    pub fn record_input_rms(&self, rms: f32) {
        let db = if rms > 1e-6 {
            20.0 * rms.log10()
        } else {
            -120.0
        };
        self.input_level
            .store((db.max(-120.0) * 10.0).round() as i32, Ordering::Relaxed);
    }

    /// Level of what the model last heard, dBFS (-120 = digital silence).
    pub fn input_dbfs(&self) -> f32 {
        self.input_level.load(Ordering::Relaxed) as f32 / 10.0
    }

    /// Records one model step and its duration.
    pub fn record_step(&self, step_s: f32) {
        self.step_stats.record(step_s * 1000.0);
        let rtf = step_s / 0.08;
        let old = f32::from_bits(self.rtf.load(Ordering::Relaxed));
        // Exponential moving average over ~20 steps: steady but quick to follow.
        let new = if old == 0.0 {
            rtf
        } else {
            old * 0.95 + rtf * 0.05
        };
        self.rtf.store(new.to_bits(), Ordering::Relaxed);
        self.steps.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks that the inference loop made progress now.
    pub fn beat(&self) {
        self.heartbeat_ms.store(
            self.epoch.elapsed().as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
    }

    /// Time since the last heartbeat (None before the first).
    pub fn since_beat(&self) -> Option<std::time::Duration> {
        let hb = self.heartbeat_ms.load(Ordering::Relaxed);
        if hb == 0 {
            return None;
        }
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        Some(std::time::Duration::from_millis(now.saturating_sub(hb)))
    }

    /// Latest latency in ms.
    pub fn latency_ms(&self) -> f32 {
        f32::from_bits(self.latency_ms.load(Ordering::Relaxed))
    }

    /// Moving-average RTF.
    pub fn rtf(&self) -> f32 {
        f32::from_bits(self.rtf.load(Ordering::Relaxed))
    }

    /// A consistent-enough snapshot for publishing.
    pub fn snapshot(&self) -> StateSnapshot {
        let t = self.text();
        let phase = self.phase();
        let room = (phase == Phase::Conversation).then(|| "room".to_string());
        let endpoints: Vec<String> = room.into_iter().chain(t.web_sessions.clone()).collect();
        StateSnapshot {
            phase,
            muted: self.muted.load(Ordering::Relaxed),
            volume: self.volume.load(Ordering::Relaxed),
            voice: t.voice.clone(),
            persona: t.persona.clone(),
            conversations: endpoints.len(),
            endpoints,
            latency_ms: (self.latency_ms() as f64 * 10.0).round() / 10.0,
            rtf: (self.rtf() as f64 * 1000.0).round() / 1000.0,
            dropped_frames: self.dropped_frames.load(Ordering::Relaxed),
            dropped_transcripts: self.dropped_transcripts.load(Ordering::Relaxed),
            web_dropped_input: self.web_dropped_input.load(Ordering::Relaxed),
            web_dropped_output: self.web_dropped_output.load(Ordering::Relaxed),
            remote_late_frames: self
                .satellite
                .load(Ordering::Relaxed)
                .then(|| self.remote_late_frames.load(Ordering::Relaxed)),
            steps: self.steps.load(Ordering::Relaxed),
            input_dbfs: (self.input_dbfs() as f64 * 10.0).round() / 10.0,
            wake_word: t
                .wake_word
                .clone()
                .filter(|_| self.wake_on.load(Ordering::Relaxed)),
            status: t.status.clone(),
            download_percent: t.download,
            error: t.error.clone(),
            web_error: t.web_error.clone(),
        }
    }
}

/// A validated command (from MQTT).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Start or stop the conversation.
    Conversation(bool),
    /// Mute or unmute the microphone.
    Mute(bool),
    /// Set the volume 0-100.
    Volume(u8),
    /// Switch to a voice preset (reloads the model).
    Voice(String),
    /// Forget the conversation so far.
    Reset,
    /// Turn the wake word on or off (`set/wake`).
    Wake(bool),
    /// Start conversations as this `[personas]` entry (reloads the model, like a voice).
    Persona(String),
}

/// The command names, as in `set/<name>` topics.
pub const COMMANDS: [&str; 7] = [
    "conversation",
    "mute",
    "volume",
    "voice",
    "reset",
    "persona",
    "wake",
];

fn on_off(payload: &str) -> Result<bool, String> {
    match payload.trim().to_ascii_uppercase().as_str() {
        "ON" | "TRUE" | "1" => Ok(true),
        "OFF" | "FALSE" | "0" => Ok(false),
        _ => Err(format!("expected ON or OFF, got {:?}", clip(payload))),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Parses and validates a command; `Err` says why it was rejected (no personas configured:
/// what the fuzz target and the tests call).
#[cfg(test)]
pub fn parse_command(name: &str, payload: &[u8], voices: &[String]) -> Result<Command, String> {
    parse_command_with(name, payload, voices, &[])
}

/// [`parse_command`] knowing the configured personas (`set/persona`).
pub fn parse_command_with(
    name: &str,
    payload: &[u8],
    voices: &[String],
    personas: &[String],
) -> Result<Command, String> {
    if name == "persona" {
        let p = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8".to_string())?;
        let p = p.trim();
        if personas.iter().any(|x| x == p) {
            return Ok(Command::Persona(p.to_string()));
        }
        return Err(if personas.is_empty() {
            "no personas are configured: add [personas.NAME] entries to the config".to_string()
        } else {
            format!(
                "unknown persona {:?}; known: {}",
                clip(p),
                personas.join(", ")
            )
        });
    }
    let payload = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8".to_string())?;
    match name {
        "conversation" => on_off(payload).map(Command::Conversation),
        "mute" => on_off(payload).map(Command::Mute),
        "volume" => {
            let v: f64 = payload
                .trim()
                .parse()
                .map_err(|_| format!("expected a number 0-100, got {:?}", clip(payload)))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("volume {v} is out of range 0-100"));
            }
            Ok(Command::Volume(v.round() as u8))
        }
        "voice" => {
            let v = payload.trim();
            if voices.iter().any(|x| x == v) {
                Ok(Command::Voice(v.to_string()))
            } else {
                Err(format!(
                    "unknown voice {:?}; known: {}",
                    clip(v),
                    voices.join(", ")
                ))
            }
        }
        "reset" => Ok(Command::Reset),
        "wake" => on_off(payload).map(Command::Wake),
        other => Err(format!(
            "unknown command {:?}; known: {}",
            clip(other),
            COMMANDS.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_validate() {
        let voices = vec!["moshiko".to_string(), "moshika".to_string()];
        assert_eq!(
            parse_command("conversation", b"ON", &voices),
            Ok(Command::Conversation(true))
        );
        assert_eq!(
            parse_command("mute", b"off", &voices),
            Ok(Command::Mute(false))
        );
        assert_eq!(
            parse_command("volume", b" 42 ", &voices),
            Ok(Command::Volume(42))
        );
        assert!(parse_command("volume", b"101", &voices).is_err());
        assert!(parse_command("volume", b"loud", &voices).is_err());
        assert!(parse_command("mute", b"maybe", &voices).is_err());
        assert!(parse_command("voice", b"nobody", &voices).is_err());
        assert!(parse_command("mute", &[0xff, 0xfe], &voices).is_err());
        assert_eq!(
            parse_command("voice", b"moshika", &voices),
            Ok(Command::Voice("moshika".into()))
        );
        assert!(parse_command("explode", b"", &voices).is_err());
    }

    #[test]
    fn persona_commands_name_the_configured_personas() {
        let voices = vec!["moshiko".to_string()];
        let personas = vec!["desk".to_string(), "guide".to_string()];
        assert_eq!(
            parse_command_with("persona", b" guide\n", &voices, &personas),
            Ok(Command::Persona("guide".into()))
        );
        let e = parse_command_with("persona", b"chef", &voices, &personas).unwrap_err();
        assert!(e.contains("desk, guide"), "{e}");
        let e = parse_command("persona", b"desk", &voices).unwrap_err();
        assert!(e.contains("[personas.NAME]"), "{e}");
        let s = Shared::new("moshiko", 50, false);
        let state = serde_json::to_value(s.snapshot()).unwrap();
        assert!(state.get("persona").is_none(), "no key without a persona");
        s.set_persona(Some("desk"));
        assert_eq!(s.snapshot().persona.as_deref(), Some("desk"));
    }

    #[test]
    fn the_wake_switch_hides_the_wake_word() {
        let voices = vec!["moshiko".to_string()];
        assert_eq!(
            parse_command("wake", b"off", &voices),
            Ok(Command::Wake(false))
        );
        assert!(parse_command("wake", b"okay_nabu", &voices).is_err());
        let s = Shared::new("moshiko", 50, false);
        let state = serde_json::to_value(s.snapshot()).unwrap();
        // Null, not absent: the key says the appliance knows about wake words.
        assert_eq!(state["wake_word"], serde_json::Value::Null);
        s.set_wake_word(Some("okay_nabu"));
        assert_eq!(s.snapshot().wake_word.as_deref(), Some("okay_nabu"));
        s.wake_on.store(false, Ordering::Relaxed);
        assert_eq!(s.snapshot().wake_word, None);
    }

    #[test]
    fn snapshot_reflects_state() {
        let s = Shared::new("moshiko", 50, false);
        assert_eq!(s.snapshot().phase, Phase::Loading);
        s.set_phase(Phase::Idle);
        s.muted.store(true, Ordering::Relaxed);
        s.record_step(0.04);
        s.record_latency(123.4);
        let j = serde_json::to_value(s.snapshot()).unwrap();
        assert_eq!(j["phase"], "idle");
        assert_eq!(j["muted"], true);
        assert_eq!(j["latency_ms"], 123.4);
        assert_eq!(j["rtf"], 0.5);
        assert!(j.get("error").is_none());
        s.set_error("boom");
        assert_eq!(s.snapshot().error.as_deref(), Some("boom"));
        assert_eq!(j["conversations"], 0, "the room is idle");
        assert_eq!(j["endpoints"], serde_json::json!([]));
        s.set_phase(Phase::Conversation);
        s.add_web_session("web 10.0.0.7:5123");
        s.add_web_session("web 10.0.0.8:6000");
        s.remove_web_session("web 10.0.0.7:5123");
        s.web_dropped_output.store(3, Ordering::Relaxed);
        let j = serde_json::to_value(s.snapshot()).unwrap();
        assert_eq!(j["conversations"], 2);
        assert_eq!(
            j["endpoints"],
            serde_json::json!(["room", "web 10.0.0.8:6000"])
        );
        assert_eq!(j["web_dropped_output"], 3);
    }
}
