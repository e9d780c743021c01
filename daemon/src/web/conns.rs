//! Connection accounting: who holds the endpoint's connections, so that one peer cannot lock
//! everyone out.
//!
//! An address outside `trusted` holds at most `max_connections_per_address` connections.
//! When all `max_connections` are taken, a newcomer makes room by closing the oldest
//! connection that has not authenticated (no request with the token yet, not from a trusted
//! address); connections that have are never closed for room. A connection is counted from
//! its accept until it closes, WebSocket sessions included (the session holds its
//! [`Admission`] after the HTTP upgrade).

use super::auth::Net;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One open connection.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    ip: IpAddr,
    authenticated: AtomicBool,
    evict: tokio::sync::Notify,
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address already holds `max_connections_per_address`.
    PerAddress(usize),
    /// Every connection is taken by authenticated clients.
    Full(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::PerAddress(n) => write!(f, "over max_connections_per_address ({n})"),
            Refusal::Full(n) => write!(f, "over max_connections ({n}), all authenticated"),
        }
    }
}

/// The open connections, oldest first.
pub struct Conns {
    open: Mutex<(u64, Vec<Arc<Conn>>)>,
    max: usize,
    per_address: usize,
    trusted: Vec<Net>,
}

/// Held for as long as a connection is open (by its task, then by its WebSocket session).
pub struct Admission {
    conn: Arc<Conn>,
    conns: Arc<Conns>,
    /// True when a connection had to be closed to make room for this one.
    pub evicted_another: bool,
}

impl Conns {
    /// Limits from `[web]`.
    pub fn new(max: usize, per_address: usize, trusted: Vec<Net>) -> Arc<Conns> {
        Arc::new(Conns {
            open: Mutex::new((0, Vec::new())),
            max: max.max(1),
            per_address: per_address.max(1),
            trusted,
        })
    }

    /// Counts a new connection from `ip`, closing the oldest unauthenticated one when all
    /// are taken; an error when it must be closed itself.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let trusted = self.trusted.iter().any(|n| n.contains(ip));
        let mut g = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mine = g.1.iter().filter(|c| c.ip == ip).count();
        if !trusted && mine >= self.per_address {
            return Err(Refusal::PerAddress(self.per_address));
        }
        let mut evicted_another = false;
        if g.1.len() >= self.max {
            let oldest = g.1.iter().position(|c| !c.authenticated());
            let Some(i) = oldest else {
                return Err(Refusal::Full(self.max));
            };
            // Removed now, so the count is right at once; its task closes it.
            g.1.remove(i).evict.notify_one();
            evicted_another = true;
        }
        g.0 += 1;
        let conn = Arc::new(Conn {
            id: g.0,
            ip,
            authenticated: AtomicBool::new(trusted),
            evict: tokio::sync::Notify::new(),
        });
        g.1.push(conn.clone());
        Ok(Admission {
            conn,
            conns: self.clone(),
            evicted_another,
        })
    }

    /// Open connections (page, API and WebSocket).
    pub fn len(&self) -> usize {
        self.open.lock().map(|g| g.1.len()).unwrap_or(0)
    }
}

impl Conn {
    fn authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }
}

impl Admission {
    /// The connection brought the token (or comes from a trusted address): it is no longer
    /// closed to make room.
    pub fn authenticate(&self) {
        self.conn.authenticated.store(true, Ordering::Relaxed);
    }

    /// Resolves when the connection was closed to make room for a newer one.
    pub async fn evicted(&self) {
        self.conn.evict.notified().await
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut g = self.conns.open.lock().unwrap_or_else(|e| e.into_inner());
        g.1.retain(|c| c.id != self.conn.id);
    }
}

/// A log line that may repeat at the rate a peer can make it (a connect/close loop wrote
/// 52,907 warnings in 5 s): one line per interval, the next one saying how many were left
/// out meanwhile.
pub struct Throttled {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    /// At most one line per `interval`.
    pub const fn new(interval: Duration) -> Throttled {
        Throttled {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Logs `msg` at `level`, or counts it when a line was logged less than an interval ago.
    pub fn log(&self, level: log::Level, msg: std::fmt::Arguments<'_>) {
        let Some(left_out) = self.admit(Instant::now()) else {
            return;
        };
        if left_out == 0 {
            log::log!(level, "{msg}");
        } else {
            let s = self.interval.as_secs();
            log::log!(
                level,
                "{msg} (and {left_out} more like it in the last {s} s)"
            );
        }
    }

    /// Some(lines left out since the last one) when a line may be written at `now`.
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match g.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                g.1 += 1;
                None
            }
            _ => {
                let left_out = g.1;
                *g = (Some(now), 0);
                Some(left_out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_is_held_to_its_share_and_trusted_ones_are_not() {
        let c = Conns::new(10, 3, vec!["127.0.0.0/8".parse().unwrap()]);
        let held: Vec<_> = (0..3).map(|_| c.admit(ip("10.0.0.9")).unwrap()).collect();
        assert_eq!(c.admit(ip("10.0.0.9")).err(), Some(Refusal::PerAddress(3)));
        let other = c.admit(ip("10.0.0.8")).unwrap();
        let local: Vec<_> = (0..5).map(|_| c.admit(ip("127.0.0.1")).unwrap()).collect();
        assert_eq!(c.len(), 9);
        drop(held);
        assert_eq!(c.len(), 6);
        drop((other, local));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn when_full_the_oldest_unauthenticated_connection_makes_room() {
        let c = Conns::new(4, 4, vec!["127.0.0.1/32".parse().unwrap()]);
        let first = c.admit(ip("10.0.0.1")).unwrap();
        let authed = c.admit(ip("10.0.0.2")).unwrap();
        authed.authenticate();
        let trusted = c.admit(ip("127.0.0.1")).unwrap();
        let idle = c.admit(ip("10.0.0.3")).unwrap();
        let newcomer = c.admit(ip("127.0.0.1")).unwrap();
        assert!(newcomer.evicted_another);
        // The oldest unauthenticated one (`first`) was told to close, and no longer counts.
        let woke = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(5), first.evicted())
                    .await
                    .is_ok()
            });
        assert!(woke);
        assert_eq!(c.len(), 4);
        let next = c.admit(ip("10.0.0.4")).unwrap();
        assert!(next.evicted_another); // `idle`
        newcomer.authenticate();
        next.authenticate();
        assert_eq!(c.admit(ip("10.0.0.5")).err(), Some(Refusal::Full(4)));
        drop((first, authed, trusted, idle, newcomer, next));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn throttled_lines_are_counted_not_written() {
        let t = Throttled::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.admit(t0), Some(0));
        for i in 1..1000 {
            assert_eq!(t.admit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(t.admit(t0 + Duration::from_secs(11)), Some(999));
        assert_eq!(t.admit(t0 + Duration::from_secs(12)), None);
    }
}
