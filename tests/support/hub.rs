//! A fake Hugging Face hub on 127.0.0.1 for download tests (HTTP/1.1, one request per
//! connection): `GET /{repo}/resolve/main/{file}` answers the metadata request
//! (`Range: bytes=0-0`: ETag = sha256, X-Repo-Commit, Content-Range) and body requests
//! (`Range: bytes=N-`) per a plan that can stall, break off, corrupt or ignore the range.
//! Used by tests/*.rs (through support/) and by the daemon's unit tests
//! (daemon/src/store/download_tests.rs includes this file).

#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The commit every answer names.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// What the hub does with one body request, in order; the last one repeats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Body {
    /// Sends the rest.
    Full,
    /// Sends the rest with one byte changed (same size): only the hash can tell.
    Corrupt,
    /// Sends this many bytes, then nothing (the connection stays open 20 s).
    StallAfter(usize),
    /// Sends this many bytes, then closes.
    CloseAfter(usize),
    /// Sends half of the rest, then closes.
    CloseHalfway,
    /// Answers 200 with the whole file.
    IgnoreRange,
}

/// How the hub misbehaves on every body request (the plan in one word).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HubMode {
    /// Serves the files as advertised.
    Good,
    /// Serves one byte changed (same size).
    Corrupt,
    /// Closes the connection half way through the body.
    Truncate,
}

/// Body requests answered so far, and what to do with the next ones.
#[derive(Default)]
pub struct Plan {
    steps: Vec<Body>,
    answered: usize,
}

/// A running fake hub.
pub struct FakeHub {
    /// `http://127.0.0.1:PORT`, for HF_ENDPOINT.
    pub url: String,
    /// What it serves.
    pub files: Vec<(String, Vec<u8>)>,
    /// The `Range` of every request, in order.
    pub ranges: Arc<Mutex<Vec<String>>>,
    /// The body plan, replaceable while it runs.
    pub plan: Arc<Mutex<Plan>>,
}

impl FakeHub {
    /// Serves `files`, every body request per `mode`, at `bytes_per_sec` (usize::MAX:
    /// as fast as it goes).
    pub fn start(files: Vec<(String, Vec<u8>)>, mode: HubMode, bytes_per_sec: usize) -> FakeHub {
        let body = match mode {
            HubMode::Good => Body::Full,
            HubMode::Corrupt => Body::Corrupt,
            HubMode::Truncate => Body::CloseHalfway,
        };
        FakeHub::serve(files, vec![body], 206, bytes_per_sec)
    }

    /// Serves `files` with body requests per `plan` and `meta_status` (206 normally) on
    /// metadata requests.
    pub fn serve(
        files: Vec<(String, Vec<u8>)>,
        plan: Vec<Body>,
        meta_status: u16,
        bytes_per_sec: usize,
    ) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let plan = Arc::new(Mutex::new(Plan {
            steps: plan,
            answered: 0,
        }));
        let (log, steps, served) = (ranges.clone(), plan.clone(), files.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (path, range) = read_request(&conn);
                log.lock().unwrap().push(range.clone());
                let body = if range == "bytes=0-0" {
                    None
                } else {
                    let mut p = steps.lock().unwrap();
                    p.answered += 1;
                    Some(p.steps[(p.answered - 1).min(p.steps.len() - 1)])
                };
                let file = served
                    .iter()
                    .find(|(n, _)| path.ends_with(&format!("/resolve/main/{n}")))
                    .map(|(_, d)| d.clone());
                let a = Answer {
                    range,
                    body,
                    meta_status,
                    bytes_per_sec,
                };
                // A stalled answer must not hold up the next connection.
                std::thread::spawn(move || a.send(conn, file.as_deref()));
            }
        });
        FakeHub {
            url,
            files,
            ranges,
            plan,
        }
    }

    /// A hub that is not there (a port nobody listens on).
    pub fn gone() -> FakeHub {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        FakeHub {
            url: format!("http://127.0.0.1:{port}"),
            files: vec![],
            ranges: Arc::default(),
            plan: Arc::default(),
        }
    }

    /// `127.0.0.1:PORT`, as messages name the server.
    pub fn host(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// The `Range` of every request so far.
    pub fn ranges(&self) -> Vec<String> {
        self.ranges.lock().unwrap().clone()
    }

    /// From now on, body requests follow `plan`, from its start.
    pub fn replan(&self, plan: Vec<Body>) {
        *self.plan.lock().unwrap() = Plan {
            steps: plan,
            answered: 0,
        };
    }
}

/// The request's path and `Range` header ("" without one).
fn read_request(conn: &TcpStream) -> (String, String) {
    let mut r = BufReader::new(conn);
    let (mut path, mut range) = (String::new(), String::new());
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            return (path, range);
        }
        if path.is_empty() {
            path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: ") {
            range = v.trim().to_string();
        }
    }
}

/// One answer to send.
struct Answer {
    range: String,
    /// None: the metadata request.
    body: Option<Body>,
    meta_status: u16,
    bytes_per_sec: usize,
}

impl Answer {
    fn send(&self, mut c: TcpStream, file: Option<&[u8]>) {
        let Some(data) = file else {
            let _ = c.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        };
        let len = data.len();
        let head = |status: &str, extra: String, body_len: usize| {
            format!(
                "HTTP/1.1 {status}\r\nETag: \"{}\"\r\nX-Repo-Commit: {COMMIT}\r\n{extra}\
                 Content-Length: {body_len}\r\nConnection: close\r\n\r\n",
                sha256_hex(data)
            )
        };
        let Some(body) = self.body else {
            let status = match self.meta_status {
                206 => "206 Partial Content".to_string(),
                s => format!("{s} Refused"),
            };
            let range = format!("Content-Range: bytes 0-0/{len}\r\n");
            let _ = c.write_all(head(&status, range, 1).as_bytes());
            let _ = c.write_all(&data[..1]);
            return;
        };
        let start: usize = self
            .range
            .trim_start_matches("bytes=")
            .trim_end_matches('-')
            .parse()
            .unwrap_or(0);
        if body == Body::IgnoreRange {
            let _ = c.write_all(head("200 OK", String::new(), len).as_bytes());
            self.trickle(&mut c, data);
            return;
        }
        let mut rest = data[start.min(len)..].to_vec();
        let range = format!("Content-Range: bytes {start}-{}/{len}\r\n", len - 1);
        if c.write_all(head("206 Partial Content", range, rest.len()).as_bytes())
            .is_err()
        {
            return;
        }
        let n = match body {
            Body::StallAfter(k) | Body::CloseAfter(k) => k.min(rest.len()),
            Body::CloseHalfway => rest.len() / 2,
            _ => rest.len(),
        };
        if body == Body::Corrupt && rest.len() > 10 {
            let i = rest.len() / 2;
            rest[i] ^= 0x55;
        }
        self.trickle(&mut c, &rest[..n]);
        if let Body::StallAfter(_) = body {
            std::thread::sleep(Duration::from_secs(20));
        }
    }

    /// Writes `b` at the hub's rate.
    fn trickle(&self, c: &mut TcpStream, b: &[u8]) {
        let chunk = if self.bytes_per_sec == usize::MAX {
            b.len().max(1)
        } else {
            (self.bytes_per_sec / 20).max(1)
        };
        for part in b.chunks(chunk) {
            if c.write_all(part).is_err() {
                return;
            }
            if self.bytes_per_sec != usize::MAX {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = c.flush();
    }
}

/// Lowercase hex sha256, as the hub's ETag of an LFS file.
pub fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic pseudo-random bytes.
pub fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
