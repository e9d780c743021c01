//! Logging: journald with structured fields when its socket exists, stderr otherwise.
//!
//! Level from `MOSHID_LOG` (`error`, `warn`, `info`, `debug`, `trace`; default `info`).

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

fn level_from_env() -> LevelFilter {
    std::env::var("MOSHID_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(LevelFilter::Info)
}

/// Installs the logger once; later calls do nothing.
pub fn init() {
    let level = level_from_env();
    if std::path::Path::new(JOURNAL_SOCKET).exists() {
        if let Ok(j) = systemd_journal_logger::JournalLog::new() {
            let j = j.with_syslog_identifier("moshid".to_string());
            if j.install().is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    if log::set_boxed_logger(Box::new(StderrLog { level })).is_ok() {
        log::set_max_level(level);
    }
}

/// One line per record on stderr: `moshid[LEVEL] message key=value ...`.
struct StderrLog {
    level: LevelFilter,
}

struct KvLine<'a>(&'a mut String);

impl<'kvs> log::kv::VisitSource<'kvs> for KvLine<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl Log for StderrLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let tag = match record.level() {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let mut line = format!("moshid[{tag}] {}", record.args());
        let _ = record.key_values().visit(&mut KvLine(&mut line));
        line.push('\n');
        // One write per line so threads do not interleave within a line.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}
