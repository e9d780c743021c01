//! Downloads against a real HTTP server on 127.0.0.1 that answers like the hub and can
//! stall, break off, ignore `Range` or refuse.

use super::super::{fetch_file, Progress, StoreError};
use super::{Hub, Policy};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[path = "../../../tests/support/hub.rs"]
mod hub;
use hub::{sha256_hex, Body, FakeHub};

const FILE: &str = "model.q8.gguf";

/// A hub serving `data` as the moshiko preset's LM.
fn serve(data: Vec<u8>, plan: Vec<Body>, meta_status: u16) -> FakeHub {
    FakeHub::serve(
        vec![(FILE.to_string(), data)],
        plan,
        meta_status,
        usize::MAX,
    )
}

fn content(len: usize) -> Vec<u8> {
    hub::bytes(len, 5)
}

fn quick(attempts: u32) -> Policy {
    Policy {
        connect_timeout: Duration::from_millis(500),
        read_timeout: Duration::from_millis(300),
        attempts,
        first_wait: Duration::from_millis(10),
        max_wait: Duration::from_millis(50),
    }
}

/// `fetch_file` of the moshiko preset's LM from `server`; returns the result and every
/// retry message.
fn fetch(
    hub: &Path,
    server: &FakeHub,
    policy: Policy,
) -> (Result<PathBuf, StoreError>, Vec<String>) {
    let preset = crate::config::builtin_voices()["moshiko"].clone();
    let client = Hub::new(&server.url, None, policy);
    let mut retries = Vec::new();
    let r = fetch_file(hub, &client, &preset, FILE, false, &mut |p| {
        if let Progress::Retrying { why, next, .. } = p {
            retries.push((next, why.to_string()));
        }
    });
    // Reported about once a second of each wait: one entry per attempt.
    retries.dedup();
    (r, retries.into_iter().map(|(_, why)| why).collect())
}

fn part_path(hub: &Path, data: &[u8]) -> PathBuf {
    hub.join("models--kyutai--moshiko-candle-q8/blobs")
        .join(format!("{}.part", sha256_hex(data)))
}

#[test]
fn a_stall_is_named_and_retried_and_the_download_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(300_000);
    let server = serve(
        data.clone(),
        vec![Body::StallAfter(100_000), Body::Full],
        206,
    );
    let (r, retries) = fetch(dir.path(), &server, quick(3));
    let path = r.expect("the second attempt completes");
    assert_eq!(std::fs::read(&path).unwrap(), data, "resumed file's bytes");
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert!(retries[0].contains("stalled"), "{retries:?}");
    assert!(retries[0].contains("0.10 MB of 0.30 MB"), "{retries:?}");
    assert_eq!(
        server.ranges(),
        ["bytes=0-0", "bytes=0-", "bytes=0-0", "bytes=100000-"],
        "the second attempt resumes after the bytes received"
    );
    assert!(!part_path(dir.path(), &data).exists());
}

#[test]
fn a_server_that_keeps_stalling_gives_one_clear_error_and_the_part_resumes_later() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(200_000);
    let server = serve(data.clone(), vec![Body::StallAfter(50_000)], 206);
    let (r, retries) = fetch(dir.path(), &server, quick(2));
    let e = r.unwrap_err().to_string();
    let host = server.host();
    assert!(
        e.starts_with(&format!(
            "cannot download {FILE} from {host}: the server stalled"
        )),
        "{e}"
    );
    assert!(e.contains("gave up after 2 attempts"), "{e}");
    assert!(!e.contains("HF_TOKEN"), "{e}");
    assert_eq!(retries.len(), 1);
    // Each attempt kept what it received: 50 kB, then 50 kB more.
    let part = part_path(dir.path(), &data);
    assert_eq!(std::fs::read(&part).unwrap(), &data[..100_000]);
    // A later run against a healthy server resumes from there.
    let healthy = serve(data.clone(), vec![Body::Full], 206);
    let path = fetch(dir.path(), &healthy, quick(1)).0.expect("resumed");
    assert_eq!(std::fs::read(path).unwrap(), data);
    assert_eq!(healthy.ranges(), ["bytes=0-0", "bytes=100000-"]);
}

#[test]
fn a_connection_closed_early_is_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(150_000);
    let server = serve(data.clone(), vec![Body::CloseAfter(7_000), Body::Full], 206);
    let (r, retries) = fetch(dir.path(), &server, quick(3));
    assert_eq!(std::fs::read(r.unwrap()).unwrap(), data);
    assert!(retries[0].contains("at 0.01 MB of 0.15 MB"), "{retries:?}");
    assert_eq!(server.ranges()[3], "bytes=7000-");
}

#[test]
fn a_part_larger_than_the_file_is_removed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(10_000);
    let part = part_path(dir.path(), &data);
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, vec![0xAAu8; 12_345]).unwrap();
    let server = serve(data.clone(), vec![Body::Full], 206);
    let (r, retries) = fetch(dir.path(), &server, quick(1));
    assert_eq!(std::fs::read(r.expect("restarted")).unwrap(), data);
    assert!(retries.is_empty());
    assert_eq!(server.ranges(), ["bytes=0-0", "bytes=0-"]);
}

#[test]
fn a_server_ignoring_range_restarts_from_the_first_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(20_000);
    let part = part_path(dir.path(), &data);
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &data[..3_000]).unwrap();
    let server = serve(data.clone(), vec![Body::IgnoreRange], 206);
    let (r, _) = fetch(dir.path(), &server, quick(1));
    assert_eq!(
        std::fs::read(r.unwrap()).unwrap(),
        data,
        "no duplicated prefix"
    );
    assert_eq!(server.ranges(), ["bytes=0-0", "bytes=3000-"]);
}

#[test]
fn refusals_are_not_retried_and_say_what_they_mean() {
    for (status, says) in [(404, "check the voice preset"), (401, "HF_TOKEN")] {
        let dir = tempfile::tempdir().unwrap();
        let server = serve(content(100), vec![Body::Full], status);
        let (r, retries) = fetch(dir.path(), &server, quick(5));
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains(&format!("HTTP {status}")) && e.contains(says),
            "{e}"
        );
        assert!(e.contains("kyutai/moshiko-candle-q8"), "{e}");
        assert!(retries.is_empty());
        assert_eq!(server.ranges().len(), 1, "asked once");
    }
}

#[test]
fn no_server_is_a_connect_error_after_the_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeHub::gone();
    let port = server.host().rsplit(':').next().unwrap().to_string();
    let (r, retries) = fetch(dir.path(), &server, quick(3));
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains(&format!("from 127.0.0.1:{port}: cannot connect")),
        "{e}"
    );
    assert!(e.contains("gave up after 3 attempts"), "{e}");
    assert_eq!(retries.len(), 2, "{retries:?}");
}

#[test]
fn backoff_doubles_up_to_the_limit() {
    let p = Policy::default();
    let waits: Vec<u64> = (1..=7).map(|n| p.wait(n).as_secs()).collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
}
