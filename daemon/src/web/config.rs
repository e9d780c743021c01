//! The `[web]` section: the browser/phone/Kyutai-client endpoint.

use super::auth::Net;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// How the endpoint speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// A self-signed certificate made at first start and kept in the state directory
    /// (or `cert_file` + `key_file` when both are set).
    #[default]
    Auto,
    /// Plain HTTP/WebSocket: only on a loopback `listen` address.
    Off,
}

/// What a second client gets while one talks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Busy {
    /// Accepted and kept waiting, without a handshake, until the conversation is free
    /// (Kyutai's web UI shows "waiting for a slot").
    #[default]
    Wait,
    /// A kind-5 error "busy" and a clean close.
    Reject,
}

/// `[web]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve the page and `/api/chat`.
    pub enabled: bool,
    /// Address and port.
    pub listen: SocketAddr,
    /// `auto` or `off`.
    pub tls: TlsMode,
    /// A PEM certificate chain (with `key_file`) instead of the self-signed one.
    pub cert_file: Option<PathBuf>,
    /// Its PEM private key.
    pub key_file: Option<PathBuf>,
    /// Where the certificate and the token are kept (default: $STATE_DIRECTORY, which
    /// systemd sets, else /var/lib/moshid).
    pub state_dir: Option<PathBuf>,
    /// The access token's file (default: `web-token` in the state directory), made at first
    /// start with mode 0600.
    pub token_file: Option<PathBuf>,
    /// Networks whose clients need no token (CIDR). Default: loopback only.
    pub trusted: Vec<String>,
    /// Names the device is reached by besides its addresses, `localhost` and its host name
    /// (`NAME`, `NAME.local`): e.g. a name the router's DNS gives it. A request whose `Host`
    /// names none of them is refused unless it brings the token (DNS rebinding).
    pub hosts: Vec<String>,
    /// Web sessions served at once, each a conversation on the shared model (`moshid demo
    /// --web`; the appliance serves one web session at a time beside the room).
    pub max_conversations: usize,
    /// `wait` or `reject`: what a session beyond `max_conversations` gets.
    pub busy: Busy,
    /// Clients allowed to wait while one talks (`busy = "wait"`); more are rejected.
    pub queue: usize,
    /// Concurrent connections (page, API and WebSocket together). When all are taken, the
    /// oldest one that has not authenticated is closed to make room; when every one has, a
    /// newcomer is closed at once.
    pub max_connections: usize,
    /// Connections one address outside `trusted` may hold (a browser opens several).
    pub max_connections_per_address: usize,
    /// Largest WebSocket message accepted, bytes.
    pub max_message_bytes: usize,
    /// A session without any message from its client for this long is closed.
    pub idle_timeout_s: u64,
    /// Input frames that may wait for the model before the oldest is dropped.
    pub input_queue_frames: usize,
    /// Output messages that may wait for a slow client before new ones are dropped.
    pub output_queue_frames: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 8998)),
            tls: TlsMode::Auto,
            cert_file: None,
            key_file: None,
            state_dir: None,
            token_file: None,
            trusted: vec!["127.0.0.0/8".into(), "::1/128".into()],
            hosts: Vec::new(),
            max_conversations: 4,
            busy: Busy::Wait,
            queue: 4,
            max_connections: 32,
            max_connections_per_address: 8,
            max_message_bytes: 256 * 1024,
            idle_timeout_s: 20,
            input_queue_frames: 4,
            output_queue_frames: 25,
        }
    }
}

impl WebConfig {
    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .or_else(|| {
                std::env::var_os("STATE_DIRECTORY")
                    .map(|v| PathBuf::from(v.to_string_lossy().split(':').next().unwrap_or("")))
            })
            .unwrap_or_else(|| PathBuf::from("/var/lib/moshid"))
    }

    /// The token file.
    pub fn token_path(&self) -> PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| self.state_dir().join("web-token"))
    }

    /// The trusted networks, parsed.
    pub fn trusted_nets(&self) -> Result<Vec<Net>, String> {
        self.trusted.iter().map(|s| s.parse()).collect()
    }

    /// What is wrong with the section, each message starting with the field's name (as the
    /// rest of the configuration's).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        if let Err(e) = self.trusted_nets() {
            p.push(format!("`web.trusted`: {e}"));
        }
        if let Some(h) = self
            .hosts
            .iter()
            .find(|h| !super::origin::valid_host_entry(h))
        {
            p.push(format!(
                "`web.hosts`: {h:?} is not a host name or address (e.g. \"moshid.lan\"; no \
                 scheme, port or path)"
            ));
        }
        if self.tls == TlsMode::Off && !self.listen.ip().is_loopback() {
            p.push(format!(
                "`web.tls` = \"off\" is only allowed on a loopback `web.listen` address (not {}): \
                 browsers need https for the microphone, and the token would travel in clear",
                self.listen
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            p.push(
                "`web.cert_file`: cert_file and key_file go together: set both or neither".into(),
            );
        }
        if self.tls == TlsMode::Off && self.cert_file.is_some() {
            p.push("`web.cert_file`: cert_file/key_file are set but tls = \"off\"".into());
        }
        for (name, v, min, max) in [
            ("max_connections", self.max_connections, 1, 10_000),
            (
                "max_connections_per_address",
                self.max_connections_per_address,
                1,
                10_000,
            ),
            ("max_message_bytes", self.max_message_bytes, 4096, 16 << 20),
            ("queue", self.queue, 0, 1000),
            ("max_conversations", self.max_conversations, 1, 64),
            ("input_queue_frames", self.input_queue_frames, 1, 100),
            ("output_queue_frames", self.output_queue_frames, 1, 1000),
        ] {
            if !(min..=max).contains(&v) {
                p.push(format!("`web.{name}` = {v}: use {min}..={max}"));
            }
        }
        if !(1..=3600).contains(&self.idle_timeout_s) {
            p.push(format!(
                "`web.idle_timeout_s` = {}: use 1..=3600",
                self.idle_timeout_s
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_rules() {
        let d = WebConfig::default();
        assert!(d.problems().is_empty());
        let c: WebConfig = toml::from_str("tls = \"off\"\nlisten = \"0.0.0.0:8998\"").unwrap();
        assert!(c.problems()[0].contains("loopback"));
        let c: WebConfig = toml::from_str("tls = \"off\"\nlisten = \"127.0.0.1:9000\"").unwrap();
        assert!(c.problems().is_empty());
        let c: WebConfig =
            toml::from_str("trusted = [\"10.0.0.0/99\"]\nbusy = \"reject\"").unwrap();
        assert_eq!(c.busy, Busy::Reject);
        assert_eq!(c.problems().len(), 1);
        assert!(toml::from_str::<WebConfig>("bogus = 1").is_err());
        let c: WebConfig = toml::from_str("hosts = [\"moshid.lan\", \"x:80\"]").unwrap();
        assert_eq!(c.problems().len(), 1);
        assert!(c.problems()[0].contains("`web.hosts`"));
        let c: WebConfig = toml::from_str("cert_file = \"/a\"").unwrap();
        assert!(c.problems()[0].contains("together"));
    }
}
