//! Downloads from a Hugging Face hub (or a mirror at `HF_ENDPOINT`) into the hub cache,
//! with bounded waits.
//!
//! hf-hub's own downloader has no connect or read timeout (a server that stops sending
//! hangs it forever at the same percentage), refuses a `.part` larger than the file with
//! an unrelated error, and appends whatever a server that ignores `Range` sends. This one
//! keeps hf-hub's cache layout (`blobs/<etag>`, `snapshots/<commit>/<file>`, `refs/<rev>`)
//! and Python's request sequence, and adds: connect and read timeouts, retries with
//! exponential backoff that resume from the `.part`, a stall reported as such (naming the
//! file and the server), and a `.part` that cannot be resumed removed and started again.

use super::{Progress, ProgressFn, StoreError};
use hf_hub::{Cache, Repo, RepoType};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The hub when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How long to wait for the server and how often to try.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// TCP (and TLS) connect.
    pub connect_timeout: Duration,
    /// Longest silence while receiving: past it the server counts as stalled.
    pub read_timeout: Duration,
    /// Attempts per file before giving up (each one resumes the `.part`).
    pub attempts: u32,
    /// Wait after the first failed attempt; doubles after each one.
    pub first_wait: Duration,
    /// Longest wait between attempts.
    pub max_wait: Duration,
}

impl Default for Policy {
    /// 10 s timeouts (Python's `HF_HUB_DOWNLOAD_TIMEOUT`; under half of the unit's
    /// WatchdogSec), 5 attempts 1, 2, 4, 8 s apart.
    fn default() -> Policy {
        Policy {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(10),
            attempts: 5,
            first_wait: Duration::from_secs(1),
            max_wait: Duration::from_secs(30),
        }
    }
}

impl Policy {
    /// The default, with `MOSHID_DOWNLOAD_TIMEOUT_S` (seconds, both timeouts) and
    /// `MOSHID_DOWNLOAD_ATTEMPTS` when set (slow links; tests).
    pub fn from_env() -> Policy {
        let mut p = Policy::default();
        let num = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        if let Some(s) = num("MOSHID_DOWNLOAD_TIMEOUT_S").filter(|s| *s > 0.0 && *s < 86400.0) {
            p.connect_timeout = Duration::from_secs_f64(s);
            p.read_timeout = Duration::from_secs_f64(s);
        }
        if let Some(n) = num("MOSHID_DOWNLOAD_ATTEMPTS").filter(|n| *n >= 1.0 && *n <= 1000.0) {
            p.attempts = n as u32;
        }
        p
    }

    /// The wait after failed attempt `n` (1-based).
    fn wait(&self, n: u32) -> Duration {
        let doubled = self
            .first_wait
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(20));
        doubled.min(self.max_wait)
    }
}

/// Why one attempt failed.
enum Failure {
    /// Worth another attempt (timeouts, lost connections, 5xx, 429).
    Retry(String),
    /// Not (the file or repo does not exist, no access, local disk trouble).
    Fatal(StoreError),
}

type Attempt<T> = Result<T, Failure>;

/// A hub client.
pub struct Hub {
    endpoint: String,
    token: Option<String>,
    /// Follows redirects (the file itself lives on a CDN).
    agent: ureq::Agent,
    /// Does not: the hub's own answer carries the commit and the etag.
    direct: ureq::Agent,
    policy: Policy,
}

impl Hub {
    /// The hub at `HF_ENDPOINT` (default huggingface.co), `HF_TOKEN` when set.
    pub fn from_env(policy: Policy) -> Hub {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Hub::new(&endpoint, std::env::var("HF_TOKEN").ok(), policy)
    }

    /// The hub at `endpoint`.
    pub fn new(endpoint: &str, token: Option<String>, policy: Policy) -> Hub {
        let builder = || {
            ureq::AgentBuilder::new()
                .try_proxy_from_env(true)
                .timeout_connect(policy.connect_timeout)
                .timeout_read(policy.read_timeout)
                .timeout_write(policy.read_timeout)
                .user_agent(concat!("moshid/", env!("CARGO_PKG_VERSION")))
        };
        Hub {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.trim().is_empty()),
            agent: builder().build(),
            direct: builder().redirects(0).build(),
            policy,
        }
    }

    /// The server, for messages (`huggingface.co`, `127.0.0.1:8080`).
    pub fn server(&self) -> &str {
        let rest = self
            .endpoint
            .split_once("://")
            .map_or(self.endpoint.as_str(), |(_, r)| r);
        rest.split('/').next().unwrap_or(rest)
    }

    /// Downloads `file` of the model repo `repo_id` at `revision` into `cache` (resuming
    /// a `.part`), retrying with backoff; returns the snapshot path. The content is not
    /// verified here.
    pub fn fetch(
        &self,
        cache: &Cache,
        repo_id: &str,
        revision: &str,
        file: &str,
        progress: ProgressFn<'_>,
    ) -> Result<PathBuf, StoreError> {
        let url = format!(
            "{}/{repo_id}/resolve/{}/{file}",
            self.endpoint,
            revision.replace('/', "%2F")
        );
        let dl = Download {
            hub: self,
            cache,
            repo: Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string()),
            repo_id,
            file,
            url,
        };
        let mut n = 1;
        loop {
            let why = match dl.attempt(progress) {
                Ok(path) => return Ok(path),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(why)) => why,
            };
            if n >= self.policy.attempts {
                return Err(StoreError::Download {
                    file: file.to_string(),
                    server: self.server().to_string(),
                    message: format!("{why}; gave up after {n} attempts (run again to resume)"),
                });
            }
            let wait = self.policy.wait(n);
            log::warn!(
                "download of {file} from {}: {why}; attempt {} of {} in {:.0?}",
                self.server(),
                n + 1,
                self.policy.attempts,
                wait
            );
            pause(wait, &mut |left| {
                progress(Progress::Retrying {
                    file,
                    why: &why,
                    next: n + 1,
                    of: self.policy.attempts,
                    wait: left,
                })
            });
            n += 1;
        }
    }
}

/// Sleeps `wait` in steps of at most a second, telling `tick` what is left before each.
fn pause(wait: Duration, tick: &mut dyn FnMut(Duration)) {
    let end = Instant::now() + wait;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        tick(left);
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_secs(1)));
    }
}

/// The `.part` being written.
struct Sink<'a> {
    f: &'a mut std::fs::File,
    path: &'a Path,
}

/// What the hub says about a file.
struct Meta {
    commit: String,
    etag: String,
    size: u64,
}

/// One file to download.
struct Download<'a> {
    hub: &'a Hub,
    cache: &'a Cache,
    repo: Repo,
    repo_id: &'a str,
    file: &'a str,
    url: String,
}

impl Download<'_> {
    /// One attempt: the file's metadata, then the bytes still missing.
    fn attempt(&self, progress: ProgressFn<'_>) -> Attempt<PathBuf> {
        let meta = self.metadata()?;
        let folder = self.cache.path().join(self.repo.folder_name());
        let blob = folder.join("blobs").join(&meta.etag);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| Failure::Fatal(StoreError::Io { path, error })
        };
        if !blob.exists() {
            let blobs = folder.join("blobs");
            std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
            let part = blob.with_extension("part");
            self.fill(&part, meta.size, progress)?;
            std::fs::rename(&part, &blob).map_err(io(&blob))?;
        }
        let pointer = folder.join("snapshots").join(&meta.commit).join(self.file);
        if let Some(dir) = pointer.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        if std::fs::symlink_metadata(&pointer).is_err() {
            // Relative, as Python and hf-hub make it: the cache can move.
            let depth = self.file.matches('/').count() + 2;
            let target = PathBuf::from("../".repeat(depth))
                .join("blobs")
                .join(&meta.etag);
            std::os::unix::fs::symlink(&target, &pointer).map_err(io(&pointer))?;
        }
        self.cache
            .repo(self.repo.clone())
            .create_ref(&meta.commit)
            .map_err(io(&folder))?;
        Ok(pointer)
    }

    /// `GET` with `Range: bytes=0-0` on the hub, following only its own (relative)
    /// redirects: the commit and the etag, then the size from the `Content-Range`.
    fn metadata(&self) -> Attempt<Meta> {
        let mut url = self.url.clone();
        let mut resp = self.get(&self.hub.direct, &url, "bytes=0-0")?;
        let mut hops = 0;
        while (300..400).contains(&resp.status()) && hops < 10 {
            let Some(loc) = resp.header("location").map(str::to_string) else {
                break;
            };
            if !loc.starts_with('/') {
                break;
            }
            url = format!("{}{loc}", origin(&url));
            resp = self.get(&self.hub.direct, &url, "bytes=0-0")?;
            hops += 1;
        }
        let header = |r: &ureq::Response, k: &str| r.header(k).map(|v| v.replace('"', ""));
        let missing = |status: u16, k: &str| {
            Failure::Fatal(self.refused(
                status,
                &format!("the answer lacks the {k} header (is HF_ENDPOINT a Hugging Face hub?)"),
            ))
        };
        let etag = header(&resp, "x-linked-etag")
            .or_else(|| header(&resp, "etag"))
            .ok_or_else(|| missing(resp.status(), "ETag"))?;
        let commit = header(&resp, "x-repo-commit")
            .ok_or_else(|| missing(resp.status(), "X-Repo-Commit"))?;
        if !safe_name(&etag) || !safe_name(&commit) {
            return Err(Failure::Fatal(self.refused(
                resp.status(),
                &format!("unusable etag {etag:?} or commit {commit:?}"),
            )));
        }
        if (300..400).contains(&resp.status()) {
            let loc = resp.header("location").unwrap_or_default().to_string();
            resp = self.get(&self.hub.agent, &loc, "bytes=0-0")?;
        }
        let size = resp
            .header("content-range")
            .and_then(|r| r.rsplit('/').next())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| missing(resp.status(), "Content-Range"))?;
        Ok(Meta { commit, etag, size })
    }

    /// Brings `part` to `size` bytes: resumes what is there, restarts what cannot be.
    fn fill(&self, part: &Path, size: u64, progress: ProgressFn<'_>) -> Attempt<()> {
        let io = |error| {
            Failure::Fatal(StoreError::Io {
                path: part.to_path_buf(),
                error,
            })
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(part)
            .map_err(io)?;
        let mut have = f.metadata().map_err(io)?.len();
        if have > size {
            log::warn!(
                "{}: {have} bytes, more than the {size} of {}: cannot be resumed, starting again",
                part.display(),
                self.file
            );
            f.set_len(0).map_err(io)?;
            have = 0;
        }
        progress(Progress::Bytes {
            file: self.file,
            done: have,
            total: size,
        });
        if have == size {
            return Ok(());
        }
        let resp = self.get(&self.hub.agent, &self.url, &format!("bytes={have}-"))?;
        have = self.resume_at(&resp, &mut f, have, size)?;
        f.seek(SeekFrom::Start(have)).map_err(io)?;
        let mut sink = Sink {
            f: &mut f,
            path: part,
        };
        self.receive(resp.into_reader(), &mut sink, have, size, progress)?;
        f.sync_all().map_err(io)
    }

    /// Where the server's answer starts: at `have` (206), at 0 (200: it ignored the range;
    /// the `.part` is emptied). Anything else empties the `.part` for the next attempt.
    fn resume_at(
        &self,
        resp: &ureq::Response,
        f: &mut std::fs::File,
        have: u64,
        size: u64,
    ) -> Attempt<u64> {
        let restart = |f: &mut std::fs::File, why: String| {
            let _ = f.set_len(0);
            Failure::Retry(why)
        };
        match resp.status() {
            200 => {
                if have > 0 {
                    log::info!(
                        "{} ignores Range: downloading {} from the start",
                        self.hub.server(),
                        self.file
                    );
                }
                f.set_len(0).map_err(|e| restart(f, e.to_string()))?;
                Ok(0)
            }
            206 => {
                let start = resp
                    .header("content-range")
                    .and_then(|r| r.trim().strip_prefix("bytes "))
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.trim().parse::<u64>().ok());
                if start == Some(have) {
                    Ok(have)
                } else {
                    Err(restart(f, format!("the server resumed at {start:?} instead of byte {have} of {size}; starting again")))
                }
            }
            s => Err(restart(
                f,
                format!("HTTP {s} when resuming at byte {have} of {size}; starting again"),
            )),
        }
    }

    /// Copies the body into `f` from `have`; a silence past the read timeout, a closed
    /// connection or more bytes than announced end the attempt.
    fn receive(
        &self,
        mut body: impl Read,
        sink: &mut Sink<'_>,
        mut have: u64,
        size: u64,
        progress: ProgressFn<'_>,
    ) -> Attempt<()> {
        let mut buf = vec![0u8; 1 << 16];
        let at = |have: u64| format!("{} of {}", mb(have), mb(size));
        while have < size {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => {
                    return Err(Failure::Retry(format!(
                        "the server stalled: nothing received for {:.0?} at {}",
                        self.hub.policy.read_timeout,
                        at(have)
                    )))
                }
                Err(e) => {
                    return Err(Failure::Retry(format!(
                        "the connection broke at {} ({e})",
                        at(have)
                    )))
                }
            };
            let take = (n as u64).min(size - have) as usize;
            sink.f.write_all(&buf[..take]).map_err(|error| {
                Failure::Fatal(StoreError::Io {
                    path: sink.path.to_path_buf(),
                    error,
                })
            })?;
            have += take as u64;
            progress(Progress::Bytes {
                file: self.file,
                done: have,
                total: size,
            });
        }
        if have < size {
            return Err(Failure::Retry(format!(
                "the connection closed at {}",
                at(have)
            )));
        }
        Ok(())
    }

    /// One `GET` with a `Range`, errors sorted into retry or not.
    fn get(&self, agent: &ureq::Agent, url: &str, range: &str) -> Attempt<ureq::Response> {
        let mut req = agent
            .get(url)
            .set("Range", range)
            // A byte range of a compressed body would not resume.
            .set("Accept-Encoding", "identity");
        if let Some(t) = &self.hub.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        match req.call() {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(s, _)) if s == 429 || s >= 500 => {
                Err(Failure::Retry(format!("HTTP {s} from the server")))
            }
            Err(ureq::Error::Status(s, _)) => {
                let hint = match s {
                    401 | 403 => "a gated or private repo: set HF_TOKEN to a token with access",
                    404 => "no such repo, revision or file: check the voice preset",
                    _ => "the server refused the request",
                };
                Err(Failure::Fatal(self.refused(s, hint)))
            }
            Err(ureq::Error::Transport(t)) => Err(Failure::Retry(transport(&t))),
        }
    }

    fn refused(&self, status: u16, hint: &str) -> StoreError {
        StoreError::Refused {
            repo: self.repo_id.to_string(),
            file: self.file.to_string(),
            server: self.hub.server().to_string(),
            status,
            hint: hint.to_string(),
        }
    }
}

/// ureq's transport error without the URL it repeats (the message names file and server).
fn transport(t: &ureq::Transport) -> String {
    let what = match t.kind() {
        ureq::ErrorKind::Dns => "cannot resolve the server's name",
        ureq::ErrorKind::ConnectionFailed => "cannot connect",
        ureq::ErrorKind::TooManyRedirects => "too many redirects",
        ureq::ErrorKind::ProxyConnect | ureq::ErrorKind::ProxyUnauthorized => "the proxy failed",
        _ => "network error",
    };
    let detail = std::error::Error::source(t)
        .map(|s| s.to_string())
        .or_else(|| t.message().map(str::to_string));
    match detail {
        Some(d) if is_timeout_text(&d) => format!("{what}: timed out"),
        Some(d) => format!("{what}: {d}"),
        None => what.to_string(),
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

fn is_timeout_text(s: &str) -> bool {
    s.contains("timed out") || s.contains("Resource temporarily unavailable")
}

/// `scheme://host[:port]` of `url`.
fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

/// An etag or commit usable as a file name (a hostile server must not pick the path).
fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

#[cfg(test)]
#[path = "download_tests.rs"]
mod tests;
