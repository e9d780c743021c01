//! MQTT control: availability (with last will), retained state, transcript, validated
//! commands with `error` replies, Home Assistant discovery, TLS and credentials.
//!
//! Runs a single-threaded tokio runtime on its own thread. Everything it publishes uses
//! `try_publish`, so neither it nor the audio path ever waits on the broker. After a
//! connection error a fresh client reconnects with backoff (at most 2 s), so nothing
//! queued for the dead connection is sent; on every ConnAck `online` goes first, then
//! discovery and the state, then the subscriptions. Transcripts are only published while
//! connected (dropped and counted otherwise). On shutdown the last state (`stopped`) and
//! `offline` go out before DISCONNECT.

pub mod discovery;
pub mod messages;

use crate::config::MqttConfig;
use crate::control::{parse_command_with, Command, Shared};
use crate::pipeline::Event;
use messages::{Failure, Rejected, TranscriptPiece, WakeEvent};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, EventLoop, LastWill, MqttOptions, Packet, QoS,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors setting up MQTT.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A TLS file could not be used.
    #[error("mqtt.tls: {path}: {message}")]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The password file could not be read.
    #[error("mqtt.password_file {path}: {error}")]
    Password {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The runtime thread could not start.
    #[error("cannot start the MQTT thread: {0}")]
    Thread(std::io::Error),
}

/// The topics of one device.
#[derive(Debug, Clone)]
pub struct Topics {
    /// The device id.
    pub device_id: String,
    /// `<base>/<id>`.
    pub base: String,
    /// Retained `online`/`offline`.
    pub availability: String,
    /// Retained state JSON.
    pub state: String,
    /// Transcript JSON messages.
    pub transcript: String,
    /// Rejected-command reports.
    pub error: String,
    /// Wake-word detections (the Home Assistant `event` entity's topic).
    pub wake: String,
}

impl Topics {
    /// Topics under `<base_topic>/<device_id>/`.
    pub fn new(base_topic: &str, device_id: &str) -> Topics {
        let base = format!("{base_topic}/{device_id}");
        Topics {
            device_id: device_id.to_string(),
            availability: format!("{base}/availability"),
            state: format!("{base}/state"),
            transcript: format!("{base}/transcript"),
            error: format!("{base}/error"),
            wake: format!("{base}/wake"),
            base,
        }
    }

    /// `<base>/set/<name>`.
    pub fn command(&self, name: &str) -> String {
        format!("{}/set/{name}", self.base)
    }
}

/// Applies a validated command (provided by the service).
pub type CommandFn = Arc<dyn Fn(Command) + Send + Sync>;

/// A running MQTT client.
pub struct Mqtt {
    events: crate::pipeline::EventTx,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mqtt {
    /// Where the pipeline sends transcript and other events.
    pub fn events(&self) -> crate::pipeline::EventTx {
        self.events.clone()
    }

    /// Publishes `message` on the `error` topic (dropped and counted when the queue is
    /// full or the broker away).
    pub fn report_error(&self, message: &str) {
        if self
            .events
            .try_send(Event::Error(message.to_string()))
            .is_err()
        {
            log::warn!("MQTT queue full: error report dropped");
        }
    }

    /// Publishes `offline`, disconnects cleanly and stops, within `timeout`.
    pub fn shutdown(mut self, timeout: Duration) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.thread.take() {
            let deadline = Instant::now() + timeout;
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

/// Builds the client options: identity, credentials, last will, TLS.
pub fn options(cfg: &MqttConfig, topics: &Topics) -> Result<MqttOptions, MqttError> {
    let mut o = MqttOptions::new(format!("moshid-{}", topics.device_id), &cfg.host, cfg.port);
    o.set_keep_alive(Duration::from_secs(cfg.keepalive_s));
    o.set_clean_session(true);
    // rumqttc drops the connection on an incoming packet over its limit, and a retained one
    // comes back on every reconnect: an endless loop. Accept packets up to a size that is
    // harmless to hold, and ignore oversized commands ourselves (Ctx::on_message).
    o.set_max_packet_size(MAX_INCOMING_PACKET, 256 * 1024);
    o.set_last_will(LastWill::new(
        &topics.availability,
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(user) = &cfg.username {
        let pass = match (&cfg.password, &cfg.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|error| MqttError::Password {
                    path: f.clone(),
                    error,
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            (None, None) => String::new(),
        };
        o.set_credentials(user, pass);
    }
    if let Some(tls) = &cfg.tls {
        let config = tls_config(tls)?;
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
        ));
    }
    Ok(o)
}

fn tls_config(t: &crate::config::TlsConfig) -> Result<rustls::ClientConfig, MqttError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls_err = |path: &std::path::Path, message: String| MqttError::Tls {
        path: path.to_path_buf(),
        message,
    };
    let read_certs = |path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, MqttError> {
        let f = std::fs::File::open(path).map_err(|e| tls_err(path, e.to_string()))?;
        let certs: Result<Vec<_>, _> =
            rustls_pemfile::certs(&mut std::io::BufReader::new(f)).collect();
        let certs = certs.map_err(|e| tls_err(path, format!("not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(tls_err(path, "no PEM certificate found in it".into()));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(&t.ca_file)? {
        roots
            .add(c)
            .map_err(|e| tls_err(&t.ca_file, format!("bad CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&t.ca_file, e.to_string()))?
        .with_root_certificates(roots);
    match (&t.client_cert, &t.client_key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert)?;
            let f = std::fs::File::open(key).map_err(|e| tls_err(key, e.to_string()))?;
            let k: PrivateKeyDer<'static> =
                rustls_pemfile::private_key(&mut std::io::BufReader::new(f))
                    .map_err(|e| tls_err(key, format!("not PEM: {e}")))?
                    .ok_or_else(|| tls_err(key, "no private key found in it".into()))?;
            builder
                .with_client_auth_cert(certs, k)
                .map_err(|e| tls_err(cert, format!("client certificate/key rejected: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Connects (in the background) and serves until shut down.
pub fn start(
    cfg: &MqttConfig,
    device_id: &str,
    voices: Vec<String>,
    personas: Vec<String>,
    shared: Arc<Shared>,
    on_command: CommandFn,
) -> Result<Mqtt, MqttError> {
    let topics = Topics::new(&cfg.base_topic, device_id);
    let opts = options(cfg, &topics)?;
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(256);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let ctx = Ctx {
        topics,
        discovery: cfg.discovery.then(|| cfg.discovery_prefix.clone()),
        voices,
        personas,
        shared,
        on_command,
        broker: format!("{}:{}", cfg.host, cfg.port),
        queued: AtomicUsize::new(0),
    };
    let thread = std::thread::Builder::new()
        .name("moshid-mqtt".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    log::error!("cannot start the MQTT runtime: {e}");
                    return;
                }
            };
            rt.block_on(serve(ctx, opts, events_rx, stop_rx));
        })
        .map_err(MqttError::Thread)?;
    Ok(Mqtt {
        events: events_tx,
        shutdown: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Requests rumqttc may hold for one connection. Small on purpose: what must reach the
/// broker (availability, discovery, state: about ten messages) is published right after
/// each ConnAck into an empty queue, and nothing else is queued while disconnected.
const REQUEST_CAPACITY: usize = 64;
/// Largest MQTT packet read: the protocol's own limit (a 268,435,455-byte remaining length
/// and a 5-byte fixed header), so no packet a broker sends can make rumqttc drop the
/// connection (with 16 MB, a retained 17 MB message did so on every reconnect: 40
/// disconnects in 10 s). MQTT 3.1.1 cannot ask the broker to drop big messages; the cost is
/// holding one such message while it is read, and it is then ignored as a command.
const MAX_INCOMING_PACKET: usize = 268_435_455 + 5;
/// Largest command payload acted on: every command is a few bytes; anything bigger is
/// ignored, logged and reported on `error`.
const MAX_COMMAND_PAYLOAD: usize = 4096;
/// Room kept free for what the broker must know: transcripts never take the last slots.
const RESERVED: usize = 16;

struct Ctx {
    topics: Topics,
    discovery: Option<String>,
    voices: Vec<String>,
    /// `[personas]` names (`set/persona`, the Home Assistant select when any).
    personas: Vec<String>,
    shared: Arc<Shared>,
    on_command: CommandFn,
    broker: String,
    /// Requests handed to rumqttc that it has not written out yet.
    queued: AtomicUsize,
}

impl Ctx {
    fn publish(&self, c: &AsyncClient, topic: &str, retain: bool, payload: Vec<u8>) {
        if c.try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .is_err()
        {
            self.shared.dropped_events.fetch_add(1, Ordering::Relaxed);
        } else {
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// rumqttc wrote a request out (or the queue went with its client).
    fn written(&self, reset: bool) {
        if reset {
            self.queued.store(0, Ordering::Relaxed);
        } else {
            let _ = self
                .queued
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| q.checked_sub(1));
        }
    }

    fn publish_state(&self, c: &AsyncClient) {
        match serde_json::to_vec(&self.shared.snapshot()) {
            Ok(p) => self.publish(c, &self.topics.state, true, p),
            Err(e) => log::error!("cannot serialise state: {e}"),
        }
    }

    fn publish_discovery(&self, c: &AsyncClient) {
        if let Some(prefix) = &self.discovery {
            for (topic, payload) in
                discovery::entities_with(&self.topics, prefix, &self.voices, &self.personas)
            {
                self.publish(c, &topic, true, json_bytes(&payload));
            }
        }
    }

    /// Availability first (it replaces the retained last will), then discovery and state.
    fn announce(&self, c: &AsyncClient) {
        self.publish(c, &self.topics.availability, true, b"online".to_vec());
        self.publish_discovery(c);
        self.publish_state(c);
    }

    /// Everything a (re)connected session needs: retained topics and subscriptions.
    fn on_connected(&self, c: &AsyncClient) {
        self.announce(c);
        let mut subs = vec![format!("{}/set/+", self.topics.base)];
        subs.extend(self.discovery.as_ref().map(|p| format!("{p}/status")));
        for t in subs {
            if c.try_subscribe(t, QoS::AtLeastOnce).is_ok() {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn on_message(&self, c: &AsyncClient, topic: &str, payload: &[u8]) {
        if let Some(prefix) = &self.discovery {
            if topic == format!("{prefix}/status") {
                if payload == b"online" {
                    // Home Assistant restarted: it forgot availability too.
                    log::info!("Home Assistant came online: re-sending availability and discovery");
                    self.announce(c);
                }
                return;
            }
        }
        let Some(name) = topic.strip_prefix(&format!("{}/set/", self.topics.base)) else {
            return;
        };
        if payload.len() > MAX_COMMAND_PAYLOAD {
            let reason = format!(
                "payload of {} bytes ignored: commands are at most {MAX_COMMAND_PAYLOAD} bytes",
                payload.len()
            );
            log::warn!(command = name; "rejected command on {topic}: {reason}");
            self.report(c, topic, &payload[..64], &reason);
            return;
        }
        match parse_command_with(name, payload, &self.voices, &self.personas) {
            Ok(cmd) => {
                log::info!(command = name; "command {cmd:?}");
                // Applied by the supervisor; the state follows on the next tick.
                (self.on_command)(cmd);
            }
            Err(reason) => {
                log::warn!(command = name; "rejected command on {topic}: {reason}");
                self.report(c, topic, payload, &reason);
            }
        }
    }

    /// Publishes a rejected command on `error`.
    fn report(&self, c: &AsyncClient, topic: &str, payload: &[u8], reason: &str) {
        let msg = Rejected::new(topic, payload, reason);
        self.publish(c, &self.topics.error, false, json_bytes(&msg));
    }

    /// A transcript piece: only while connected (never queued for a broker that is away).
    fn on_event(&self, c: &AsyncClient, connected: bool, ev: Event) {
        let (text, time) = match ev {
            Event::Transcript { text, time } => (text, time),
            Event::Error(e) if connected => {
                let msg = Failure { error: &e };
                self.publish(c, &self.topics.error, false, json_bytes(&msg));
                return;
            }
            // Not queued while disconnected: a detection is news only when it happens.
            Event::Wake(h) if connected => {
                let msg = WakeEvent::new(&h.wake_word, h.probability);
                self.publish(c, &self.topics.wake, false, json_bytes(&msg));
                return;
            }
            _ => return,
        };
        if !connected {
            self.shared
                .dropped_transcripts
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.queued.load(Ordering::Relaxed) >= REQUEST_CAPACITY - RESERVED {
            // The broker is slow: the last slots are for availability and state.
            self.shared
                .dropped_transcripts
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let msg = TranscriptPiece::new(&text, time).to_json();
        match c.try_publish(&self.topics.transcript, QoS::AtMostOnce, false, msg) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.shared
                    .dropped_transcripts
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One MQTT session's mutable state, across reconnects.
struct Session {
    ctx: Ctx,
    opts: MqttOptions,
    client: AsyncClient,
    eventloop: EventLoop,
    connected: bool,
    backoff: Duration,
    seen_rev: u64,
    last_state: Instant,
}

impl Session {
    fn new(ctx: Ctx, opts: MqttOptions) -> Session {
        let (client, eventloop) = AsyncClient::new(opts.clone(), REQUEST_CAPACITY);
        Session {
            ctx,
            opts,
            client,
            eventloop,
            connected: false,
            backoff: Duration::from_millis(250),
            seen_rev: u64::MAX,
            last_state: Instant::now(),
        }
    }

    fn on_packet(&mut self, p: Packet) {
        match p {
            Packet::ConnAck(_) => {
                log::info!(broker = self.ctx.broker.as_str(); "MQTT connected");
                self.connected = true;
                self.backoff = Duration::from_millis(250);
                self.ctx.on_connected(&self.client);
            }
            Packet::Publish(p) => self.ctx.on_message(&self.client, &p.topic, &p.payload),
            _ => {}
        }
    }

    /// After a connection error: a fresh client, so that nothing queued for the dead
    /// connection goes out before `online` on the next one.
    fn on_error(&mut self, e: ConnectionError) {
        let broker = self.ctx.broker.as_str();
        if self.connected {
            log::warn!(broker = broker; "MQTT connection lost: {e}; reconnecting");
        } else {
            log::warn!(broker = broker; "MQTT: {}; retrying in {:?}", explain(&e), self.backoff);
        }
        self.connected = false;
        (self.client, self.eventloop) = AsyncClient::new(self.opts.clone(), REQUEST_CAPACITY);
        self.ctx.written(true);
    }

    /// Re-publishes the state on any change, and every 2 s for the moving figures.
    fn on_tick(&mut self) {
        let rev = self.ctx.shared.revision.load(Ordering::Relaxed);
        if self.connected
            && (rev != self.seen_rev || self.last_state.elapsed() >= Duration::from_secs(2))
        {
            self.seen_rev = rev;
            self.last_state = Instant::now();
            self.ctx.publish_state(&self.client);
        }
    }

    /// The last state (`stopped`), then `offline`, then DISCONNECT, all on the wire.
    async fn goodbye(&mut self) {
        if !self.connected {
            return;
        }
        self.ctx.publish_state(&self.client);
        self.ctx.publish(
            &self.client,
            &self.ctx.topics.availability,
            true,
            b"offline".to_vec(),
        );
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(800), drain(&mut self.eventloop)).await;
    }
}

async fn serve(
    ctx: Ctx,
    opts: MqttOptions,
    mut events: tokio::sync::mpsc::Receiver<Event>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut s = Session::new(ctx, opts);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let ev = if s.connected {
            tokio::select! {
                ev = s.eventloop.poll() => ev,
                Some(ev) = events.recv() => {
                    s.ctx.on_event(&s.client, true, ev);
                    continue;
                }
                _ = tick.tick() => {
                    s.on_tick();
                    continue;
                }
                _ = &mut stop => {
                    s.goodbye().await;
                    break;
                }
            }
        } else {
            match connect(&mut s, &mut events, &mut stop).await {
                Some(ev) => ev,
                None => break,
            }
        };
        match ev {
            Ok(rumqttc::Event::Incoming(p)) => s.on_packet(p),
            Ok(rumqttc::Event::Outgoing(
                rumqttc::Outgoing::Publish(_) | rumqttc::Outgoing::Subscribe(_),
            )) => s.ctx.written(false),
            Ok(_) => {}
            Err(e) => {
                s.on_error(e);
                tokio::select! {
                    _ = tokio::time::sleep(s.backoff) => {}
                    _ = &mut stop => break,
                }
                // At most 2 s: the broker's return is noticed well within 5 s.
                s.backoff = (s.backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// One `poll` while not connected, never interrupted by anything but a stop (None).
///
/// rumqttc builds the connection (TCP, TLS, CONNECT, CONNACK) inside `poll`, in a future of
/// its own: dropping it half way (a tick or an event winning a `select!`) drops the
/// connection, and when CONNECT had gone out the next attempt takes the session over, so
/// the broker publishes this client's own last will, `offline`, right before its `online`
/// (and a handshake slower than the tick never completes). So the same future is polled
/// to its end; events meanwhile are handled as while disconnected (transcripts dropped).
async fn connect(
    s: &mut Session,
    events: &mut tokio::sync::mpsc::Receiver<Event>,
    stop: &mut tokio::sync::oneshot::Receiver<()>,
) -> Option<Result<rumqttc::Event, ConnectionError>> {
    let poll = s.eventloop.poll();
    tokio::pin!(poll);
    loop {
        tokio::select! {
            ev = &mut poll => return Some(ev),
            Some(ev) = events.recv() => s.ctx.on_event(&s.client, false, ev),
            _ = &mut *stop => return None,
        }
    }
}

async fn drain(eventloop: &mut EventLoop) {
    loop {
        match eventloop.poll().await {
            Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A connection error, explained for a person.
fn explain(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)
        | ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => {
            "broker refused the credentials: check mqtt.username and mqtt.password".into()
        }
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused: is the broker running and mqtt.host/mqtt.port right?".into()
        }
        ConnectionError::Tls(t) => {
            format!("TLS failed: {t} (check mqtt.tls.ca_file and the broker's certificate name)")
        }
        other => other.to_string(),
    }
}

/// A message body (serialising these structs cannot fail: strings and numbers only).
fn json_bytes(msg: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(msg).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_discovery() {
        let t = Topics::new("moshid", "kitchen");
        assert_eq!(t.availability, "moshid/kitchen/availability");
        assert_eq!(t.command("mute"), "moshid/kitchen/set/mute");
        let voices = vec!["moshiko".to_string(), "moshika".to_string()];
        let e = discovery::entities(&t, "homeassistant", &voices);
        let topics: Vec<_> = e.iter().map(|(t, _)| t.as_str()).collect();
        for want in [
            "homeassistant/switch/kitchen/conversation/config",
            "homeassistant/switch/kitchen/mute/config",
            "homeassistant/number/kitchen/volume/config",
            "homeassistant/select/kitchen/voice/config",
            "homeassistant/sensor/kitchen/latency/config",
            "homeassistant/sensor/kitchen/state/config",
        ] {
            assert!(topics.contains(&want), "{want} missing");
        }
        let voice = &e.iter().find(|(t, _)| t.contains("select")).unwrap().1;
        let voice = serde_json::to_value(voice).unwrap();
        assert_eq!(voice["options"][1], "moshika");
        assert_eq!(voice["availability_topic"], "moshid/kitchen/availability");
        assert_eq!(voice["command_topic"], "moshid/kitchen/set/voice");
        // A persona select only where personas are configured.
        assert!(!topics.iter().any(|t| t.contains("persona")));
        let personas = vec!["desk".to_string(), "guide".to_string()];
        let e = discovery::entities_with(&t, "homeassistant", &voices, &personas);
        let (topic, persona) = e.iter().find(|(t, _)| t.contains("persona")).unwrap();
        assert_eq!(topic, "homeassistant/select/kitchen/persona/config");
        let persona = serde_json::to_value(persona).unwrap();
        assert_eq!(persona["options"][1], "guide");
        assert_eq!(persona["command_topic"], "moshid/kitchen/set/persona");
        assert_eq!(persona["value_template"], "{{ value_json.persona }}");
    }

    #[test]
    fn tls_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let cfg = crate::config::TlsConfig {
            ca_file: ca,
            client_cert: None,
            client_key: None,
        };
        let e = tls_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
