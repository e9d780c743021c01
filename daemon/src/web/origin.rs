//! Host and Origin checks: the defences against cross-site requests and DNS rebinding.
//!
//! A browser on a trusted address (the kiosk's own screen, a LAN range in `trusted`) carries
//! that trust to every page it opens: a page of another site could POST to `/api/control`
//! or open `/api/chat` with it. And a name the attacker controls, re-pointed at the device
//! (DNS rebinding), makes such a page same-origin with the device. So:
//!
//! - every API request must name the device in `Host` (an address it was reached on,
//!   `localhost`, its host name, `[web] hosts`), unless it brings the token in its URL
//!   (the token is the credential; a rebinding page does not have it);
//! - every state-changing request and WebSocket upgrade that carries an `Origin` (browsers
//!   always send one there) must come from the device's own origin, unless it brings the
//!   token in its URL: that is how Kyutai's web UI served from another origin connects
//!   (`worker_auth_id=TOKEN`). Non-browser clients send no `Origin`; they pass on the
//!   token or a trusted address as before.

use std::net::IpAddr;

/// The names the device answers to.
#[derive(Debug, Clone)]
pub struct Site {
    /// Lower-case host names (no port): `localhost`, the host name, `[web] hosts`.
    names: Vec<String>,
    /// Served over TLS: its own origin is `https://`.
    tls: bool,
}

/// Why a request was refused (the HTTP 403 body says what to do).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `Host` names something else (DNS rebinding, or a name the device does not know).
    #[error(
        "Host {0:?} does not name this device: use its address or host name, or add the \
         name to [web] hosts"
    )]
    Host(String),
    /// A page of another origin without the token.
    #[error(
        "Origin {0:?} is not this device's page: a page served elsewhere (e.g. Kyutai's web \
         UI) must pass the token (?token= or ?worker_auth_id=)"
    )]
    Origin(String),
}

impl Site {
    /// `localhost`, this machine's host name (and `NAME.local`, its mDNS name) and `extra`
    /// (`[web] hosts`).
    pub fn new(extra: &[String], tls: bool) -> Site {
        let mut names = vec!["localhost".to_string()];
        if let Ok(h) = hostname::get() {
            let h = normalize(&h.to_string_lossy());
            if !h.is_empty() {
                names.push(format!("{h}.local"));
                names.push(h);
            }
        }
        names.extend(extra.iter().map(|h| normalize(h)));
        Site { names, tls }
    }

    /// True when `host` (a `Host` value: name or address, maybe a port) names the device
    /// reached on `local` (the connection's own address).
    pub fn names_device(&self, host: &str, local: IpAddr) -> bool {
        let name = normalize(split_port(host).0);
        if let Ok(ip) = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return ip.to_canonical() == local.to_canonical();
        }
        self.names.contains(&name)
    }

    /// Checks a request's `Host` and, when it changes state (`guarded`), its `Origin`.
    /// `token_in_url`: it brought a valid token in its query, which answers both.
    pub fn check(
        &self,
        host: Option<&str>,
        origin: Option<&str>,
        local: IpAddr,
        guarded: bool,
        token_in_url: bool,
    ) -> Result<(), Refused> {
        if token_in_url {
            return Ok(());
        }
        // No Host: an HTTP/1.0 tool, never a browser (which rebinding needs).
        if let Some(h) = host.filter(|h| !self.names_device(h, local)) {
            return Err(Refused::Host(clip(h)));
        }
        match origin {
            Some(o) if guarded && !self.own_origin(o, host, local) => Err(Refused::Origin(clip(o))),
            _ => Ok(()),
        }
    }

    /// True when `origin` is the device's page: the scheme it serves, the same host and
    /// port as the request's `Host` (or, without one, a name of the device).
    fn own_origin(&self, origin: &str, host: Option<&str>, local: IpAddr) -> bool {
        let scheme = if self.tls { "https" } else { "http" };
        let Some(rest) = origin
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
        else {
            return false; // another scheme, or "null" (sandboxed frames, file: pages)
        };
        let default = if self.tls { 443 } else { 80 };
        let with_port = |h: &str| {
            let (name, port) = split_port(h);
            (normalize(name), port.unwrap_or(default))
        };
        match host {
            Some(h) => with_port(rest) == with_port(h) && self.names_device(rest, local),
            None => self.names_device(rest, local),
        }
    }
}

/// Lower case without a trailing dot (`Kitchen.` and `kitchen` are one name).
fn normalize(h: &str) -> String {
    h.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `name:port`, `[v6]:port`, `name` or `[v6]` into the name and the port.
fn split_port(h: &str) -> (&str, Option<u16>) {
    let h = h.trim();
    if h.starts_with('[') {
        return match h.split_once("]:") {
            Some((a, p)) => (&h[..a.len() + 1], p.parse().ok()),
            None => (h, None),
        };
    }
    match h.rsplit_once(':') {
        Some((a, p)) if !a.contains(':') => (a, p.parse().ok()),
        _ => (h, None),
    }
}

/// At most 100 characters of what a client sent, for the log and the answer.
fn clip(s: &str) -> String {
    s.chars().take(100).collect()
}

/// True when `h` is usable as a `[web] hosts` entry: a host name or address, no scheme,
/// port or path.
pub fn valid_host_entry(h: &str) -> bool {
    let h = h.trim();
    !h.is_empty()
        && h.len() <= 253
        && (h.parse::<IpAddr>().is_ok()
            || h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(tls: bool) -> Site {
        Site {
            names: vec!["localhost".into(), "kitchen".into(), "moshid.lan".into()],
            tls,
        }
    }

    const LAN: &str = "192.168.1.20";

    #[test]
    fn hosts_name_the_device_or_are_refused() {
        let s = site(true);
        let local: IpAddr = LAN.parse().unwrap();
        for ok in [
            "192.168.1.20:8998",
            "192.168.1.20",
            "localhost:8998",
            "Kitchen.:8998",
            "moshid.lan",
        ] {
            assert!(s.names_device(ok, local), "{ok}");
        }
        for bad in [
            "evil.example:8998",
            "192.168.1.21:8998",
            "kitchen.evil.example",
            "",
        ] {
            assert!(!s.names_device(bad, local), "{bad}");
        }
        let v6: IpAddr = "::1".parse().unwrap();
        assert!(s.names_device("[::1]:8998", v6));
        let mapped: IpAddr = "::ffff:192.168.1.20".parse().unwrap();
        assert!(s.names_device("192.168.1.20:8998", mapped));
    }

    #[test]
    fn foreign_origins_need_the_token_and_absent_ones_pass() {
        let s = site(true);
        let local: IpAddr = LAN.parse().unwrap();
        let host = Some("192.168.1.20:8998");
        let own = Some("https://192.168.1.20:8998");
        assert_eq!(s.check(host, own, local, true, false), Ok(()));
        assert_eq!(s.check(host, None, local, true, false), Ok(()));
        for bad in [
            "https://evil.example",
            "http://192.168.1.20:8998",
            "https://192.168.1.20:9000",
            "null",
        ] {
            assert_eq!(
                s.check(host, Some(bad), local, true, false),
                Err(Refused::Origin(bad.into())),
                "{bad}"
            );
            // Kyutai's UI elsewhere, with the token; and reads are not guarded.
            assert_eq!(s.check(host, Some(bad), local, true, true), Ok(()));
            assert_eq!(s.check(host, Some(bad), local, false, false), Ok(()));
        }
        let rebound = Some("evil.example:8998");
        assert!(matches!(
            s.check(rebound, None, local, false, false),
            Err(Refused::Host(_))
        ));
        let plain = site(false);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            plain.check(Some("localhost"), Some("http://localhost"), lo, true, false),
            Ok(())
        );
    }

    #[test]
    fn host_entries_are_names_or_addresses() {
        assert!(valid_host_entry("moshid.lan"));
        assert!(valid_host_entry("10.0.0.7"));
        assert!(valid_host_entry("fe80::1"));
        for bad in ["", "https://x", "x:8998", "a/b", "a b"] {
            assert!(!valid_host_entry(bad), "{bad}");
        }
    }
}
