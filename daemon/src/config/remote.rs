//! `[model.remote]`: the brain a satellite talks to (`[model] source = "remote"`): one or
//! more Kyutai `/api/chat` addresses tried in order, the token, and how to trust the brain's
//! certificate. Only the model step goes over the network; the room stays local.

use serde::{Deserialize, Deserializer};
use std::path::PathBuf;
use std::str::FromStr;

/// `[model.remote]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// `ws://` or `wss://` addresses of `/api/chat`, tried in order: the first that answers
    /// serves the conversation, the next one on failure.
    pub urls: Vec<BrainUrl>,
    /// A file holding the brain's access token (its `web-token`), sent as `?token=`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The brain's certificate (or its CA), PEM: the only one trusted for `wss://`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (still encrypted, but anyone on the network can pose as the
    /// brain). Without it and without `ca_file`, the system's CA bundle is used.
    #[serde(default)]
    pub insecure: bool,
    /// Seconds to wait for a brain to connect and send its handshake; a busy brain that
    /// makes us wait longer counts as busy and the next address is tried.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_s: u64,
    /// Most frames (80 ms each) the jitter buffer may hold back replies for.
    #[serde(default = "default_max_delay")]
    pub max_delay_frames: usize,
}

fn default_connect_timeout() -> u64 {
    5
}

fn default_max_delay() -> usize {
    6
}

impl RemoteConfig {
    /// The `[model.remote]` problems, each naming its field.
    pub fn problems(&self, p: &mut Vec<String>) {
        if self.urls.is_empty() {
            p.push(
                "`model.remote.urls`: give at least one brain, e.g. [\"wss://brain.local:8998/api/chat\"]"
                    .into(),
            );
        }
        if self.insecure && self.ca_file.is_some() {
            p.push("`model.remote.insecure`: pin the brain's certificate with `ca_file` or accept any with `insecure = true`, not both".into());
        }
        if self.ca_file.is_some() && !self.urls.iter().any(|u| u.secure) {
            p.push("`model.remote.ca_file`: only `wss://` addresses use a certificate".into());
        }
        if !(1..=120).contains(&self.connect_timeout_s) {
            p.push(format!(
                "`model.remote.connect_timeout_s` = {}: use 1..=120 seconds",
                self.connect_timeout_s
            ));
        }
        if !(1..=25).contains(&self.max_delay_frames) {
            p.push(format!(
                "`model.remote.max_delay_frames` = {}: use 1..=25 frames (80 ms each)",
                self.max_delay_frames
            ));
        }
    }
}

/// One brain address, parsed once: `ws[s]://HOST[:PORT][/PATH]` (the path defaults to
/// `/api/chat`; no query: the token comes from `token_file`, sampling from `[sampling]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrainUrl {
    /// `wss://` (TLS) or `ws://`.
    pub secure: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (default 443 / 80).
    pub port: u16,
    /// Path, starting with `/`.
    pub path: String,
}

/// An address that is not a brain's.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("brain address {0:?}: {1}")]
pub struct BrainUrlError(String, &'static str);

impl FromStr for BrainUrl {
    type Err = BrainUrlError;
    fn from_str(s: &str) -> Result<BrainUrl, BrainUrlError> {
        let bad = |why| BrainUrlError(s.to_string(), why);
        let t = s.trim();
        let (secure, rest) = if let Some(r) = t.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = t.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(bad("use wss://HOST:PORT/api/chat (or ws:// without TLS)"));
        };
        if rest.contains('?') || rest.contains('#') {
            return Err(bad(
                "no query: the token goes in token_file, sampling in [sampling]",
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) =
            split_host_port(authority).ok_or_else(|| bad("HOST[:PORT] is malformed"))?;
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let path = if path.is_empty() || path == "/" {
            "/api/chat".to_string()
        } else {
            path.to_string()
        };
        Ok(BrainUrl {
            secure,
            port: port.unwrap_or(if secure { 443 } else { 80 }),
            host: host.to_string(),
            path,
        })
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`; None when the port does not parse.
fn split_host_port(a: &str) -> Option<(&str, Option<u16>)> {
    if let Some(r) = a.strip_prefix('[') {
        let (h, tail) = r.split_once(']')?;
        return match tail.strip_prefix(':') {
            Some(p) => Some((h, Some(p.parse().ok()?))),
            None if tail.is_empty() => Some((h, None)),
            None => None,
        };
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p.parse().ok()?))),
        _ => Some((a, None)),
    }
}

impl std::fmt::Display for BrainUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.secure { "wss" } else { "ws" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

impl<'de> Deserialize<'de> for BrainUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BrainUrl, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_once_with_defaults() {
        let u: BrainUrl = "wss://brain.local:8998/api/chat".parse().unwrap();
        assert_eq!(
            (u.secure, u.host.as_str(), u.port),
            (true, "brain.local", 8998)
        );
        assert_eq!(u.to_string(), "wss://brain.local:8998/api/chat");
        let u: BrainUrl = "ws://10.0.0.2".parse().unwrap();
        assert_eq!(u.to_string(), "ws://10.0.0.2:80/api/chat");
        let u: BrainUrl = "wss://[::1]:9000/".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        assert_eq!(u.to_string(), "wss://[::1]:9000/api/chat");
    }

    #[test]
    fn bad_addresses_say_what_to_write() {
        for (s, says) in [
            ("https://brain/api/chat", "wss://"),
            ("wss://brain/api/chat?token=x", "token_file"),
            ("wss://brain:port/api/chat", "malformed"),
            ("wss:///api/chat", "no host"),
        ] {
            let e = s.parse::<BrainUrl>().unwrap_err().to_string();
            assert!(e.contains(says), "{s}: {e}");
        }
    }

    #[test]
    fn section_problems_name_their_field() {
        let r: RemoteConfig = toml::from_str(
            "urls = []\nca_file = \"/x.pem\"\ninsecure = true\nconnect_timeout_s = 0",
        )
        .unwrap();
        let mut p = Vec::new();
        r.problems(&mut p);
        let all = p.join("\n");
        for f in ["urls", "insecure", "ca_file", "connect_timeout_s"] {
            assert!(all.contains(&format!("model.remote.{f}")), "{f}: {all}");
        }
    }
}
