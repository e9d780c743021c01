//! systemd's notify protocol (`Type=notify`): READY, STATUS, WATCHDOG, STOPPING, RELOADING.
//!
//! Every call is a no-op when `NOTIFY_SOCKET` is unset (run by hand), and failures are
//! logged once rather than stopping the daemon: the service manager is an observer.

use sd_notify::NotifyState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Sends notifications to the service manager.
#[derive(Debug)]
pub struct Notifier {
    watchdog: Option<Duration>,
    warned: AtomicBool,
}

impl Notifier {
    /// Reads `WATCHDOG_USEC`/`WATCHDOG_PID` from the environment. Like
    /// `sd_watchdog_enabled(3)`, a missing `WATCHDOG_PID` means "this process".
    pub fn from_env() -> Notifier {
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&u| u > 0);
        let for_us = match std::env::var("WATCHDOG_PID") {
            Ok(pid) => pid.trim().parse::<u32>().ok() == Some(std::process::id()),
            Err(_) => true,
        };
        let watchdog = usec.filter(|_| for_us).map(Duration::from_micros);
        Notifier {
            watchdog,
            warned: AtomicBool::new(false),
        }
    }

    /// The watchdog timeout systemd enforces (`WatchdogSec=`), if any.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(false, states) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                log::warn!("cannot notify systemd through NOTIFY_SOCKET: {e} (further failures are not logged)");
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `STATUS=...`: one human-readable line.
    pub fn status(&self, status: &str) {
        // systemd shows one line; newlines would split the datagram into bogus fields.
        let line = status.replace('\n', " ");
        self.send(&[NotifyState::Status(&line)]);
    }

    /// `WATCHDOG=1`: the inference loop is alive.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC` (systemd 253+ requires it for Type=notify-reload).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading configuration"),
            ]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }
}
