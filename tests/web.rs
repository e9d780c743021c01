//! The web endpoint end to end: `moshid client` against `moshid demo --web` over a real TLS
//! WebSocket, the token from an untrusted address, the busy policy, and abuse (garbage,
//! oversized and text-frame messages, 100 rapid connects) that must leave the daemon up.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;
use tokio_tungstenite::tungstenite::{self, Message};

/// `moshid demo --web` on `listen` with extra args; waits until it serves.
fn serve(dir: &Path, listen: &str, extra: &[&str]) -> Daemon {
    let cache = model_cache();
    let state = dir.join("state");
    let mut args = vec![
        "demo",
        "--web",
        "--listen",
        listen,
        "--cache-dir",
        cache.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let d = Daemon::spawn(&args, &[], dir);
    let up = d.wait_log("web: serving", Duration::from_secs(120));
    assert!(up, "web demo did not start:\n{}", d.log());
    d
}

/// Runs `moshid client`; (exit ok, the JSON line, stderr).
fn client(args: &[&str]) -> (bool, serde_json::Value, String) {
    let o = Command::new(MOSHID)
        .arg("client")
        .args(args)
        .output()
        .unwrap();
    client_result(&o)
}

/// [`client`] with `--insecure` (any certificate), `extra`, `--input wav --seconds s`.
fn client_insecure(
    url: &str,
    extra: &[&str],
    wav: &str,
    seconds: &str,
) -> (bool, serde_json::Value, String) {
    let mut args = vec!["--url", url, "--insecure"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--input", wav, "--seconds", seconds]);
    client(&args)
}

fn voice_wav(dir: &Path) -> String {
    let p = dir.join("voice.wav");
    write_voice_wav(&p, 4.0);
    p.to_str().unwrap().to_string()
}

#[test]
fn client_talks_to_the_demo_over_tls() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let d = serve(dir.path(), &format!("127.0.0.1:{port}"), &[]);
    let wav = voice_wav(dir.path());
    let out = dir.path().join("heard.wav");
    let txt = dir.path().join("heard.txt");
    let url = format!("wss://localhost:{port}/api/chat?text_temperature=0.7&text_topk=25");
    let ca = dir.path().join("state/web-cert.pem");
    let (ok, j, err) = client(&[
        "--url",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--input",
        &wav,
        "--seconds",
        "3",
        "--output",
        out.to_str().unwrap(),
        "--transcript",
        txt.to_str().unwrap(),
    ]);
    assert!(ok, "client failed: {err}\n{j}\n{}", d.log());
    assert!(j["handshake_ms"].as_f64().is_some(), "{j}");
    assert_eq!(j["metadata"]["text_topk"], 25, "{j}");
    assert_eq!(j["metadata"]["lm_model_file"], "lm.safetensors");
    assert!(j["metadata"]["build_info"]["rustc_version"].is_string());
    assert!(j["audio_s"].as_f64().unwrap() >= 2.9, "{j}");
    assert!(
        j["audio_rms_dbfs"].as_f64().unwrap() > -40.0,
        "silent reply: {j}"
    );
    assert!(!j["text"].as_str().unwrap().is_empty(), "no text: {j}");
    let (n, peak) = wav_peak(&out);
    assert!(
        n >= 3 * 24_000 - 1920 && peak > 0.01,
        "{n} samples, peak {peak}"
    );
    assert!(!std::fs::read_to_string(&txt).unwrap().trim().is_empty());
    // A value that does not parse: HTTP 400, nothing started.
    let bad = format!("wss://localhost:{port}/api/chat?audio_topk=many");
    let (ok, _, err) = client(&["--url", &bad, "--insecure", "--input", &wav]);
    assert!(!ok && err.contains("400"), "{err}");
}

fn http_status(addr: &str, path: &str) -> String {
    let o = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{addr}{path}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn untrusted_addresses_need_the_token() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    // Listening on 127.0.0.2, clients connect from 127.0.0.1 (Linux picks it as the source
    // on lo), which is left out of `trusted`.
    let addr = format!("127.0.0.2:{}", free_port());
    let d = serve(dir.path(), &addr, &["--trusted", "127.0.0.2/32"]);
    let wav = voice_wav(dir.path());
    let url = format!("wss://{addr}/api/chat");
    let (ok, _, err) = client_insecure(&url, &[], &wav, "1");
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, _, err) = client_insecure(&url, &["--token", "wrong"], &wav, "1");
    assert!(!ok && err.contains("401"), "{err}");
    assert_eq!(http_status(&addr, "/"), "401");
    assert_eq!(http_status(&addr, "/api/state"), "401");
    assert!(!d.log().contains("conversation started"), "{}", d.log());
    assert!(
        d.log().contains("127.0.0.1"),
        "refusals are logged with the peer: {}",
        d.log()
    );
    // The token file: mode 0600, and the right token opens everything.
    let tf = dir.path().join("state/web-token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&tf).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = std::fs::read_to_string(&tf).unwrap().trim().to_string();
    let (ok, j, err) = client_insecure(&url, &["--token", &token], &wav, "1");
    assert!(ok, "{err} {j}");
    assert_eq!(http_status(&addr, &format!("/?token={token}")), "200");
    let kyutai = format!("{url}?worker_auth_id={token}");
    let (ok, _, err) = client_insecure(&kyutai, &[], &wav, "1");
    assert!(ok, "worker_auth_id: {err}");
}

/// A client's run checked for a real conversation: handshake, text, audio that is not silence.
fn assert_talked(who: &str, ok: bool, j: &serde_json::Value, err: &str) {
    assert!(ok, "{who}: {err} {j}");
    assert!(j["handshake_ms"].as_f64().is_some(), "{who}: {j}");
    assert!(
        !j["text"].as_str().unwrap_or("").is_empty(),
        "{who}: no text: {j}"
    );
    assert!(
        j["audio_rms_dbfs"].as_f64().unwrap() > -40.0,
        "{who}: silent: {j}"
    );
}

/// Runs `n` clients at once for `seconds`; their results.
fn clients_at_once(
    url: &str,
    wav: &str,
    n: usize,
    seconds: &str,
) -> Vec<(bool, serde_json::Value, String)> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (url, wav, seconds) = (url.to_string(), wav.to_string(), seconds.to_string());
            std::thread::spawn(move || client_insecure(&url, &[], &wav, &seconds))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn clients_share_the_model_and_one_beyond_capacity_waits_or_is_rejected() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let wav = voice_wav(dir.path());
    for busy in ["reject", "wait"] {
        let port = free_port().to_string();
        let listen = format!("127.0.0.1:{port}");
        let d = serve(
            dir.path(),
            &listen,
            &["--busy", busy, "--max-conversations", "3"],
        );
        let url = format!("wss://{listen}/api/chat");
        let talking = {
            let (url, wav) = (url.clone(), wav.clone());
            std::thread::spawn(move || clients_at_once(&url, &wav, 3, "3"))
        };
        std::thread::sleep(Duration::from_millis(1200));
        // A fourth while the three talk.
        let (ok, j, err) = client_insecure(&url, &[], &wav, "1");
        for (i, (ok, j, err)) in talking.join().unwrap().iter().enumerate() {
            assert_talked(&format!("{busy}: client {i}"), *ok, j, err);
            // All three were served at once: none waited for another's conversation.
            assert!(
                j["handshake_ms"].as_f64().unwrap() < 1000.0,
                "{busy} {i}: {j}"
            );
        }
        if busy == "reject" {
            assert!(!ok && err.contains("busy"), "{busy}: {err} {j}");
        } else {
            assert_talked("the fourth", ok, &j, &err);
            // No handshake until a conversation (3 s, started 1.2 s earlier) ended.
            assert!(j["handshake_ms"].as_f64().unwrap() > 1000.0, "{j}");
        }
        assert!(
            d.log().matches("conversation started").count() >= 3,
            "{}",
            d.log()
        );
    }
}

/// A raw WebSocket on plain TCP (the abuse test runs with --no-tls on loopback).
fn raw_ws(port: u16) -> tungstenite::WebSocket<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let url = format!("ws://127.0.0.1:{port}/api/chat");
    tungstenite::client(url, tcp).expect("upgrade").0
}

/// Reads until the server closes; the kinds of what it sent.
fn drain(ws: &mut tungstenite::WebSocket<TcpStream>) -> Vec<u8> {
    let mut kinds = Vec::new();
    while let Ok(m) = ws.read() {
        if let Message::Binary(b) = m {
            kinds.push(b[0]);
            if b[0] == 5 {
                let _ = ws.close(None);
            }
        }
    }
    kinds
}

#[test]
fn garbage_and_floods_leave_the_daemon_up() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut d = serve(dir.path(), &format!("127.0.0.1:{port}"), &["--no-tls"]);
    // Garbage audio: a kind-5 error and a close (or silence), never a crash.
    let mut ws = raw_ws(port);
    let mut junk = vec![1u8];
    junk.extend((0..70_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8));
    ws.send(Message::Binary(junk.into())).unwrap();
    let kinds = drain(&mut ws);
    assert!(
        kinds.starts_with(&[0, 4]) && kinds.contains(&5),
        "{kinds:?}"
    );
    // Oversized message: the session ends.
    let mut ws = raw_ws(port);
    let _ = ws.send(Message::Binary(vec![1u8; 2 * 1024 * 1024].into()));
    let _ = drain(&mut ws);
    // Text frames and unknown kinds are ignored; the session then idles out or we close.
    let mut ws = raw_ws(port);
    ws.send(Message::Text("hello".into())).unwrap();
    ws.send(Message::Binary(vec![9u8, 1, 2].into())).unwrap();
    ws.close(None).unwrap();
    let _ = drain(&mut ws);
    // 100 rapid connects and disconnects, half of them mid-handshake.
    for i in 0..100 {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        if i % 2 == 0 {
            let _ = tcp.write_all(b"GET /api/chat HTTP/1.1\r\nHost: x\r\n");
        }
    }
    // Over max_connections new ones are closed at once; once the flood has drained the
    // daemon answers again.
    let get = || {
        let mut plain = TcpStream::connect(("127.0.0.1", port)).ok()?;
        plain
            .write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut resp = String::new();
        let _ = plain.read_to_string(&mut resp);
        resp.starts_with("HTTP/1.1").then_some(resp)
    };
    let resp = wait_for(Duration::from_secs(15), get).unwrap_or_default();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "daemon died:\n{}",
        d.log()
    );
    // And it still talks.
    let wav = voice_wav(dir.path());
    let url = format!("ws://127.0.0.1:{port}/api/chat");
    let (ok, j, err) = client(&["--url", &url, "--input", &wav, "--seconds", "1"]);
    assert!(
        ok && j["audio_s"].as_f64().unwrap() > 0.5,
        "{err} {j}\n{}",
        d.log()
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(5)).is_some());
}

/// One raw HTTP/1.1 request over plain TCP to 127.0.0.1:`port` (`head` is the request line
/// and headers, without the blank line); the whole response.
fn http_raw(port: u16, head: &str) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("{head}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    let _ = tcp.read_to_string(&mut resp);
    resp
}

/// `POST /api/control?QUERY` from the device's own address, as curl or a script sends it.
fn post_control(port: u16, query: &str) -> String {
    http_raw(
        port,
        &format!(
            "POST /api/control?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0"
        ),
    )
}

#[test]
fn control_values_that_do_not_parse_answer_400_and_change_nothing() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _d = serve(dir.path(), &format!("127.0.0.1:{port}"), &["--no-tls"]);
    let r = post_control(port, "mute=1&volume=40");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.contains("\"muted\":true") && r.contains("\"volume\":40"),
        "{r}"
    );
    for bad in [
        "mute=yes",
        "mute=",
        "mute=2",
        "volume=999",
        "volume=-1",
        "mute=0&volume=x",
    ] {
        let r = post_control(port, bad);
        let name = bad.rsplit('&').next().unwrap().split('=').next().unwrap();
        assert!(r.starts_with("HTTP/1.1 400"), "{bad}: {r}");
        assert!(
            r.contains(name),
            "{bad}: the answer names the parameter: {r}"
        );
    }
    // Nothing of a refused request was applied, not even its valid part (mute=0 above).
    let r = http_raw(
        port,
        &format!("GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}"),
    );
    assert!(
        r.contains("\"muted\":true") && r.contains("\"volume\":40"),
        "{r}"
    );
    let r = post_control(port, "mute=off");
    assert!(r.contains("\"muted\":false"), "{r}");
}

/// A TCP connection to 127.0.0.1:`port` from the local address `src` (any 127.x.y.z: all
/// of 127.0.0.0/8 is on lo), to be a client of another address than 127.0.0.1.
fn connect_from(src: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let sin = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tcp = TcpStream::from_raw_fd(fd);
        let (a, b) = (sin(src, 0), sin([127, 0, 0, 1], port));
        if libc::bind(fd, &a as *const _ as *const libc::sockaddr, len) != 0
            || libc::connect(fd, &b as *const _ as *const libc::sockaddr, len) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(tcp)
    }
}

/// `head` (request line and headers, no blank line) on `tcp`; the response's status line.
fn status_line(mut tcp: TcpStream, head: &str) -> String {
    use std::io::BufRead;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if tcp.write_all(format!("{head}\r\n\r\n").as_bytes()).is_err() {
        return String::new();
    }
    let mut line = String::new();
    let _ = std::io::BufReader::new(tcp).read_line(&mut line);
    line.trim_end().to_string()
}

/// A WebSocket upgrade of /api/chat`query` from 127.0.0.1 with `extra` header lines.
fn upgrade(port: u16, query: &str, extra: &str) -> String {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    status_line(
        tcp,
        &format!(
            "GET /api/chat{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13{extra}"
        ),
    )
}

/// `/api/state` as the device's own page asks for it.
fn page_state(port: u16) -> serde_json::Value {
    let r = http_raw(
        port,
        &format!("GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}"),
    );
    let body = r.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {r}"))
}

#[test]
fn cross_site_requests_and_foreign_hosts_are_refused() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Loopback is trusted: this is the kiosk's browser, which needs no token.
    let d = serve(dir.path(), &format!("127.0.0.1:{port}"), &["--no-tls"]);
    let token = std::fs::read_to_string(dir.path().join("state/web-token")).unwrap();
    let token = token.trim();
    let post = |origin: &str, host: &str| {
        let head = format!(
            "POST /api/control?volume=3 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0{origin}"
        );
        http_raw(port, &head)
    };
    let own_host = format!("127.0.0.1:{port}");
    // A page of another site: fetch("/api/control?volume=3", {method: "POST", mode: "no-cors"}).
    for origin in ["https://evil.example", "null", "http://127.0.0.1:1"] {
        let r = post(&format!("\r\nOrigin: {origin}"), &own_host);
        assert!(
            r.starts_with("HTTP/1.1 403") && r.contains("Origin"),
            "{origin}: {r}"
        );
    }
    assert_ne!(
        page_state(port)["volume"],
        3,
        "a foreign page changed the volume"
    );
    // The device's own page, and a client without Origin (curl, scripts) from a trusted address.
    let r = post(&format!("\r\nOrigin: http://127.0.0.1:{port}"), &own_host);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = post("", &format!("localhost:{port}"));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // DNS rebinding: a foreign name pointed at the device.
    for path in ["/api/state", "/"] {
        let r = http_raw(
            port,
            &format!("GET {path} HTTP/1.1\r\nHost: evil.example:{port}"),
        );
        assert!(
            r.starts_with("HTTP/1.1 403") && r.contains("[web] hosts"),
            "{r}"
        );
    }
    let r = post("", &format!("evil.example:{port}"));
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // WebSocket: new WebSocket("ws://DEVICE/api/chat") from another site gets nothing.
    let evil = "\r\nOrigin: https://evil.example";
    assert!(upgrade(port, "", evil).contains("403"), "{}", d.log());
    assert!(!d.log().contains("conversation started"), "{}", d.log());
    // Kyutai's web UI served elsewhere brings the token: it connects.
    let with_token = format!("?worker_auth_id={token}");
    assert!(
        upgrade(port, &with_token, evil).contains("101"),
        "{}",
        d.log()
    );
    let own = format!("\r\nOrigin: http://127.0.0.1:{port}");
    assert!(wait_for(Duration::from_secs(30), || upgrade(port, "", &own)
        .contains("101")
        .then_some(()))
    .is_some());
}

#[test]
fn one_untrusted_peer_cannot_lock_out_the_others() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Only 127.0.0.3 is trusted: 127.0.0.1, .2, .4... need the token.
    let d = serve(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &["--no-tls", "--trusted", "127.0.0.3/32"],
    );
    let token = std::fs::read_to_string(dir.path().join("state/web-token")).unwrap();
    let host = format!("Host: 127.0.0.1:{port}");
    let state_from = |src: [u8; 4], query: &str| {
        let head = format!("GET /api/state{query} HTTP/1.1\r\n{host}\r\nConnection: close");
        connect_from(src, port)
            .map(|t| status_line(t, &head))
            .unwrap_or_default()
    };
    // A WebSocket session counts in web_connections as long as it is open (item 5).
    let mut ws = connect_from([127, 0, 0, 3], port).unwrap();
    let head = format!(
        "GET /api/chat HTTP/1.1\r\n{host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    ws.write_all(head.as_bytes()).unwrap();
    let counted = || {
        let h = format!("GET /api/state HTTP/1.1\r\n{host}\r\nConnection: close");
        let t = connect_from([127, 0, 0, 3], port).unwrap();
        let _ = status_line(t.try_clone().unwrap(), &h);
        let mut body = String::new();
        let _ = (&t).read_to_string(&mut body);
        body
    };
    let two = wait_for(Duration::from_secs(20), || {
        let r = http_raw(
            port,
            &format!("GET /api/state?token={} HTTP/1.1\r\n{host}", token.trim()),
        );
        r.contains("\"web_connections\":2").then_some(r)
    });
    assert!(two.is_some(), "the session is not counted: {}", counted());
    // 200 idle connections from one untrusted address: it keeps 8 of them, the rest close
    // at once.
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Ok(t) = connect_from([127, 0, 0, 1], port) {
            held.push(t);
        }
    }
    // Four more untrusted addresses fill every connection with idle ones.
    for last in 4..=7 {
        for _ in 0..8 {
            held.extend(connect_from([127, 0, 0, last], port));
        }
    }
    let token_q = format!("?token={}", token.trim());
    for _ in 0..3 {
        // A trusted client, and one with the token from an untrusted address, still get in:
        // the oldest connections that never authenticated make room.
        assert!(
            state_from([127, 0, 0, 3], "").contains("200"),
            "{}",
            d.log()
        );
        assert!(
            state_from([127, 0, 0, 2], &token_q).contains("200"),
            "{}",
            d.log()
        );
        assert!(
            state_from([127, 0, 0, 2], "").contains("401"),
            "{}",
            d.log()
        );
    }
    // Hundreds of refusals, a few lines in the log (one per 10 s and kind, with a count).
    let log = d.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("max_connections_per_address"))
        .count();
    assert!((1..=3).contains(&lines), "{lines} lines:\n{log}");
    drop((held, ws));
}

/// Issue 24, item 6. A client that talks but never reads: the server's socket blocks after a
/// few dozen frames (see [`ws_with_tiny_buffers`]) while the client keeps sending, so the read
/// side's idle timeout cannot fire. With one conversation slot, the session must still end
/// by itself (the write timeout: "the client read nothing for 2 s"), what the client could
/// not take must be dropped and counted, and a new client must get its handshake while the
/// stuck TCP connection stays open. Without the bounded output (a session that awaits
/// `send()` on the path that reads, as before the fix) the read loop would sit in that send:
/// no "read nothing" end, no drops counted, and the slot held until the stuck client closes,
/// so the second client's handshake would not come; each assertion below fails then.
#[test]
fn a_client_that_never_reads_does_not_hold_the_conversation() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("web.toml");
    std::fs::write(
        &cfg,
        "[model]\nsource = \"demo\"\n[web]\nidle_timeout_s = 2\n",
    )
    .unwrap();
    let listen = format!("127.0.0.1:{port}");
    let d = serve(
        dir.path(),
        &listen,
        &[
            "--no-tls",
            "--max-conversations",
            "1",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    // Up to 300 s of audio at about ten times real time (Moshi answers every frame), until
    // the server ends the session (after ~5 s here; the margin is for a slow, loaded machine,
    // whose model fills the buffers later); never a read.
    let mut stuck = ws_with_tiny_buffers(port);
    let audio = ogg_opus_voice(300.0);
    let chunks = audio.chunks(1000).count() as u32;
    let mut sent = 0;
    for chunk in audio.chunks(1000) {
        let mut m = vec![1u8];
        m.extend_from_slice(chunk);
        if stuck.send(Message::Binary(m.into())).is_err() || d.log().contains("conversation ended")
        {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_secs(30) / chunks);
    }
    assert!(
        sent < chunks,
        "the client sent everything and the session went on:\n{}",
        d.log()
    );
    // Ended by the write timeout while the client was still sending.
    assert!(
        wait_for(Duration::from_secs(10), || d
            .log()
            .contains("the client read nothing for 2 s")
            .then_some(()))
        .is_some(),
        "the session did not end on the blocked write:\n{}",
        d.log()
    );
    let st = page_state(port);
    let dropped = st["web_dropped_output"].as_u64().unwrap_or(0);
    eprintln!("sent {sent} of {chunks} chunks; web_dropped_output {dropped}");
    assert!(dropped > 0, "no output dropped: {st}");
    // The stuck TCP connection is still open on our side (nothing read, nothing closed); a new
    // client gets the one slot and its handshake.
    let mut next = raw_ws(port);
    next.get_mut()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let first = next.read();
    assert!(
        matches!(&first, Ok(Message::Binary(b)) if b.first() == Some(&0)),
        "no handshake for the next client ({first:?}):\n{}",
        d.log()
    );
    let _ = next.close(None);
    // And the server closed the stuck one: reading drains what was queued, then ends.
    stuck
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let closed = loop {
        match stuck.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false
            }
            Err(_) => break true,
        }
    };
    assert!(closed, "the stuck connection is still open:\n{}", d.log());
}

/// A WebSocket to /api/chat`query` on 127.0.0.1:`port`; its first message (with a 60 s
/// timeout: a persona's first use runs its prompt before the handshake).
fn ws_first(port: u16, query: &str) -> (tungstenite::WebSocket<TcpStream>, Vec<u8>) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let url = format!("ws://127.0.0.1:{port}/api/chat{query}");
    let mut ws = tungstenite::client(url, tcp).expect("upgrade").0;
    let first = match ws.read() {
        Ok(Message::Binary(b)) => b.to_vec(),
        other => panic!("{query}: no first message: {other:?}"),
    };
    (ws, first)
}

/// Issue 23: web sessions with their own personas on one model, at once. `persona=NAME`
/// and NVIDIA's `voice_prompt=`/`text_prompt=` each get a handshake and Moshi's audio while
/// the other talks; an unknown persona gets an error naming the configured ones, and only
/// that session; `/api/personas` lists what the page offers. (That the prompted state is the
/// one applied, bit for bit, is the daemon's unit test `each_conversation_starts_from_its_
/// own_persona_on_one_model`.)
#[test]
fn web_sessions_talk_with_their_own_personas_at_once() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let cfg = persona_model(dir.path());
    let port = free_port();
    let d = serve(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &["--no-tls", "--config", cfg.to_str().unwrap()],
    );
    let r = http_raw(
        port,
        &format!("GET /api/personas HTTP/1.1\r\nHost: 127.0.0.1:{port}"),
    );
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("{\"personas\":[\"desk\",\"guide\"]}"),
        "{r}"
    );
    let (mut desk, hs_desk) = ws_first(port, "?persona=desk");
    let nvidia = "?voice_prompt=alice.pt&text_prompt=You+sell+umbrellas+by+the+sea";
    let (mut own, hs_own) = ws_first(port, nvidia);
    assert_eq!((hs_desk[0], hs_own[0]), (0, 0), "{}", d.log());
    let (mut bad, err) = ws_first(port, "?persona=pirate");
    let err = String::from_utf8_lossy(&err).into_owned();
    assert!(
        err.starts_with('\u{5}') && err.contains("configured: desk, guide"),
        "{err}"
    );
    drop(bad.close(None));
    // Both talk at once: each gets Moshi's audio back for its own voice.
    let audio = ogg_opus_voice(2.0);
    for chunk in audio.chunks(1000) {
        for ws in [&mut desk, &mut own] {
            let mut m = vec![1u8];
            m.extend_from_slice(chunk);
            ws.send(Message::Binary(m.into())).unwrap();
        }
    }
    for (who, ws) in [("desk", &mut desk), ("own prompt", &mut own)] {
        let heard = (0..200).any(|_| matches!(ws.read(), Ok(Message::Binary(b)) if b[0] == 1));
        assert!(heard, "{who}: no audio back:\n{}", d.log());
    }
    let log = d.log();
    assert!(log.contains("; persona desk)"), "{log}");
    assert!(
        log.contains("; persona session prompt (alice, 6-word role))"),
        "{log}"
    );
    let st = page_state(port);
    assert_eq!(st["conversations"], 2, "{st}");
}
