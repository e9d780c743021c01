//! Satellite mode (`[model] source = "remote"`): a satellite `moshid run` (ALSA file PCMs,
//! a real mosquitto, no model) whose model is a brain `moshid run` with `[web]` on loopback,
//! over TLS (a test CA's certificate, pinned with `ca_file`) with a token. The room is the
//! satellite's; only the model step crosses the network. Faults: a brain unreachable at the
//! start, killed in the middle of a conversation and restarted, a refused token, a foreign
//! certificate, a busy brain, and one that answers garbage (the next URL serves then).

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const TOKEN: &str = "satellite-test-token-5f2c9a";

/// A brain: `moshid run` with the demo model, `[web]` over TLS with a token, MQTT off.
struct Brain {
    dir: PathBuf,
    port: u16,
    /// `[web]` lines beside the TLS and token ones.
    web: String,
    daemon: Option<Daemon>,
}

impl Brain {
    /// Certificates and token made now; the brain starts with [`Brain::start`].
    fn new(dir: &Path, web: &str) -> Brain {
        std::fs::create_dir_all(dir).unwrap();
        make_certs(dir);
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
        write_voice_raw(&dir.join("mic.raw"), 60.0);
        let d = dir.display();
        let asound = format!(
            "pcm.mic {{ type file; slave.pcm \"null\"; file \"/dev/null\"; infile \"{d}/mic.raw\"; format \"raw\" }}\n\
             pcm.spk {{ type file; slave.pcm \"null\"; file \"{d}/spk.raw\"; format \"raw\" }}\n"
        );
        std::fs::write(dir.join("asound.conf"), asound).unwrap();
        Brain {
            dir: dir.to_path_buf(),
            port: free_port(),
            web: web.to_string(),
            daemon: None,
        }
    }

    fn url(&self) -> String {
        format!("wss://127.0.0.1:{}/api/chat", self.port)
    }

    /// Waits until the brain serves `n` conversations (its `/api/state`), so that a test
    /// that fills its slots does not race a slow start (qemu).
    fn wait_conversations(&self, n: u64) {
        let url = format!("https://127.0.0.1:{}/api/state?token={TOKEN}", self.port);
        let busy = wait_for(Duration::from_secs(60), || {
            let o = std::process::Command::new("curl")
                .args(["-sk", &url])
                .output()
                .ok()?;
            let st: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
            (st["conversations"].as_u64() == Some(n)).then_some(())
        });
        assert!(busy.is_some(), "the brain never served {n} conversation(s)");
    }

    /// Starts (again, on the same port) and waits until it listens.
    fn start(&mut self) {
        let d = self.dir.display();
        let toml = format!(
            r#"device_id = "brain"
cache_dir = "{cache}"
autostart = false
idle_timeout_s = 0
[model]
source = "demo"
[audio]
capture = "mic"
playback = "spk"
rate = 24000
format = "S16"
pace = true
[mqtt]
enabled = false
[web]
listen = "127.0.0.1:{port}"
state_dir = "{d}/state"
cert_file = "{d}/server.pem"
key_file = "{d}/server.key"
token_file = "{d}/token"
trusted = []
{web}
"#,
            cache = model_cache().display(),
            port = self.port,
            web = self.web,
        );
        let cfg = self.dir.join("brain.toml");
        std::fs::write(&cfg, toml).unwrap();
        let alsa = format!("/usr/share/alsa/alsa.conf:{d}/asound.conf");
        let daemon = Daemon::spawn(
            &["run", "--config", cfg.to_str().unwrap()],
            &[("ALSA_CONFIG_PATH", alsa.as_str())],
            &self.dir,
        );
        let port = self.port;
        let up = wait_for(Duration::from_secs(120), || {
            daemon
                .log()
                .contains("ready:")
                .then(|| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
                .flatten()
        });
        assert!(up.is_some(), "the brain did not start\n{}", daemon.log());
        self.daemon = Some(daemon);
    }

    /// SIGKILL: the brain vanishes in the middle of whatever it does.
    fn kill(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.signal(libc::SIGKILL);
            d.wait_exit(Duration::from_secs(5));
        }
    }
}

/// A satellite: the room's config with `source = "remote"`, its own empty cache folder.
struct Satellite {
    _broker: Broker,
    obs: Observer,
    notify: Notify,
    daemon: Daemon,
    dir: PathBuf,
}

impl Satellite {
    /// `[model.remote]` = `remote` (a TOML body); READY=1 awaited.
    fn start(dir: &Path, remote: &str) -> Satellite {
        std::fs::create_dir_all(dir).unwrap();
        let broker = Broker::start(dir);
        let obs = Observer::connect(broker.port, "obs", &[&topic("#")]);
        let notify = Notify::bind(dir);
        let (cfg, alsa) = write_config(dir, broker.port, &format!("[model.remote]\n{remote}"));
        let toml = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("source = \"demo\"", "source = \"remote\"")
            .replace(
                &format!("cache_dir = \"{}\"", model_cache().display()),
                &format!("cache_dir = \"{}/cache\"", dir.display()),
            );
        std::fs::write(&cfg, toml).unwrap();
        let daemon = start_daemon(dir, &cfg, &alsa, &notify);
        assert!(
            notify.wait("READY=1", Duration::from_secs(30)),
            "no READY=1\n{}",
            daemon.log()
        );
        Satellite {
            _broker: broker,
            obs,
            notify,
            daemon,
            dir: dir.to_path_buf(),
        }
    }

    /// Waits for a state for which `pred` holds (after the first `after` states).
    fn state(
        &self,
        after: usize,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.obs
            .wait_json_after(&topic("state"), after, Duration::from_secs(40), pred)
            .unwrap_or_else(|| panic!("no state with {what}\n{}", self.daemon.log()))
    }

    fn states(&self) -> usize {
        self.obs.on(&topic("state")).len()
    }

    /// Messages on the `error` topic so far.
    fn errors(&self) -> Vec<String> {
        self.obs
            .on(&topic("error"))
            .into_iter()
            .map(|m| m.payload)
            .collect()
    }

    /// Waits until the speaker file has non-silent audio after byte `from`; its length then.
    fn hears(&self, from: usize) -> usize {
        let spk = self.dir.join("spk.raw");
        wait_for(Duration::from_secs(40), || {
            let b = std::fs::read(&spk).unwrap_or_default();
            let peak = b
                .get(from & !1..)
                .unwrap_or_default()
                .chunks_exact(2)
                .map(|c| (i16::from_le_bytes([c[0], c[1]]) as f32 / 32768.0).abs())
                .fold(0.0, f32::max);
            (peak > 0.01).then_some(b.len())
        })
        .unwrap_or_else(|| panic!("the speaker stayed silent\n{}", self.daemon.log()))
    }

    fn speaker_len(&self) -> usize {
        std::fs::metadata(self.dir.join("spk.raw")).map_or(0, |m| m.len() as usize)
    }

    fn stop(mut self) {
        self.daemon.terminate(Duration::from_secs(3));
    }
}

/// The `[model.remote]` body for one brain with its CA and the right token.
fn remote_for(brain: &Brain) -> String {
    format!(
        "urls = [\"{}\"]\ntoken_file = \"{}\"\nca_file = \"{}\"\nconnect_timeout_s = 3\n",
        brain.url(),
        brain.dir.join("token").display(),
        brain.dir.join("ca.pem").display()
    )
}

#[test]
fn a_satellite_talks_through_a_brain_over_tls_with_a_token() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut brain = Brain::new(&dir.path().join("brain"), "");
    brain.start();
    let sat = Satellite::start(&dir.path().join("sat"), &remote_for(&brain));
    let st = sat.state(0, "idle", |v| v["phase"] == "idle");
    assert_eq!(st["remote_late_frames"], 0, "{st}");
    sat.obs.publish(&topic("set/conversation"), "ON");
    sat.state(0, "conversation", |v| v["phase"] == "conversation");
    // The brain's reply on the satellite's speaker, its words on the satellite's MQTT.
    sat.hears(0);
    let t = sat
        .obs
        .wait(&topic("transcript"), Duration::from_secs(30), |_| true)
        .unwrap_or_else(|| panic!("no transcript\n{}", sat.daemon.log()));
    let t: serde_json::Value = serde_json::from_str(&t.payload).unwrap();
    assert!(t["text"].is_string(), "{t}");
    assert!(sat.errors().is_empty(), "{:?}", sat.errors());
    // No model was loaded here: the cache folder holds no model file.
    let cached: Vec<_> = std::fs::read_dir(sat.dir.join("cache"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(cached.is_empty(), "{cached:?}");
    let log = sat.daemon.log();
    assert!(log.contains("satellite of wss://127.0.0.1:"), "{log}");
    assert!(!log.contains("loading model"), "{log}");
    sat.obs.publish(&topic("set/conversation"), "OFF");
    sat.state(0, "idle again", |v| v["phase"] == "idle");
    if std::env::var("SATELLITE_LOGS").is_ok() {
        eprintln!(
            "--- satellite\n{}\n--- brain\n{}",
            sat.daemon.log(),
            brain.daemon.as_ref().unwrap().log()
        );
    }
    sat.stop();
}

#[test]
fn an_unreachable_brain_is_one_error_and_a_restarted_one_resumes_the_conversation() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut brain = Brain::new(&dir.path().join("brain"), "");
    // The brain is not running: the satellite starts anyway and says so.
    let sat = Satellite::start(&dir.path().join("sat"), &remote_for(&brain));
    let url = brain.url();
    let st = sat.state(0, "error naming the brain", |v| {
        v["phase"] == "error" && v["error"].as_str().is_some_and(|e| e.contains(&url))
    });
    assert!(
        st["error"].as_str().unwrap().contains("cannot reach"),
        "{st}"
    );
    // Retries (0.5, 1, 2 s apart) say it once on MQTT; the room's loop keeps the watchdog fed.
    let pings = sat.notify.count("WATCHDOG=1");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(sat.errors().len(), 1, "{:?}", sat.errors());
    assert!(sat.errors()[0].contains(&url), "{:?}", sat.errors());
    assert!(
        sat.notify.count("WATCHDOG=1") > pings,
        "no watchdog while the brain is away"
    );
    // A conversation asked for meanwhile starts when the brain comes.
    sat.obs.publish(&topic("set/conversation"), "ON");
    brain.start();
    let n = sat.states();
    sat.state(n, "conversation without error", |v| {
        v["phase"] == "conversation" && v.get("error").is_none()
    });
    let heard = sat.hears(sat.speaker_len());
    // Killed in the middle: an error (said once more: a new outage), then a new session
    // once it is back.
    brain.kill();
    let n = sat.states();
    sat.state(n, "error after the kill", |v| v["phase"] == "error");
    wait_for(Duration::from_secs(5), || {
        (sat.errors().len() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}", sat.errors()));
    brain.start();
    let n = sat.states();
    sat.state(n, "conversation again", |v| {
        v["phase"] == "conversation" && v.get("error").is_none()
    });
    sat.hears(heard + 48_000);
    assert_eq!(sat.errors().len(), 2, "{:?}", sat.errors());
    sat.stop();
}

/// A satellite of the brain at `url` with `remote`: an error naming the brain that says `says`,
/// in the state and on MQTT.
fn fault(dir: &Path, url: &str, name: &str, remote: String, says: &[&str]) {
    let sat = Satellite::start(&dir.join(name), &remote);
    sat.obs.publish(&topic("set/conversation"), "ON");
    let st = sat.state(0, name, |v| {
        v["phase"] == "error" && v["error"].as_str().is_some_and(|e| e.contains(url))
    });
    let e = st["error"].as_str().unwrap().to_string();
    for s in says {
        assert!(e.contains(s), "{name}: {e}");
    }
    let on_mqtt = sat
        .obs
        .wait(&topic("error"), Duration::from_secs(5), |_| true)
        .unwrap_or_else(|| panic!("{name}: nothing on error"));
    assert!(on_mqtt.payload.contains(url), "{}", on_mqtt.payload);
    sat.stop();
}

#[test]
fn a_refused_token_a_foreign_certificate_and_a_busy_brain_name_the_brain() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut brain = Brain::new(
        &dir.path().join("brain"),
        "max_conversations = 1\nbusy = \"reject\"\n",
    );
    brain.start();
    let wrong_token = dir.path().join("wrong-token");
    std::fs::write(&wrong_token, "not-the-token\n").unwrap();
    let remote = remote_for(&brain).replace(
        brain.dir.join("token").to_str().unwrap(),
        wrong_token.to_str().unwrap(),
    );
    fault(
        dir.path(),
        &brain.url(),
        "token",
        remote,
        &["HTTP 401", "token"],
    );
    // Another CA than the brain's: the certificate is refused.
    let other = dir.path().join("other-ca");
    std::fs::create_dir_all(&other).unwrap();
    make_certs(&other);
    let remote = remote_for(&brain).replace(
        brain.dir.join("ca.pem").to_str().unwrap(),
        other.join("ca.pem").to_str().unwrap(),
    );
    fault(
        dir.path(),
        &brain.url(),
        "certificate",
        remote,
        &["TLS", "certificate"],
    );
    // Busy: a client holds the brain's only conversation.
    let wav = dir.path().join("voice.wav");
    write_voice_wav(&wav, 30.0);
    let url = format!("{}?token={TOKEN}", brain.url());
    let client = moshid_cmd()
        .args(["client", "--url", &url, "--ca"])
        .arg(brain.dir.join("ca.pem"))
        .arg("--input")
        .arg(&wav)
        .args(["--seconds", "25"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    brain.wait_conversations(1);
    fault(
        dir.path(),
        &brain.url(),
        "busy",
        remote_for(&brain),
        &["busy"],
    );
    let mut client = client;
    let _ = client.kill();
    let _ = client.wait();
    // Busy that makes us wait (no handshake within connect_timeout_s) is busy too.
    brain.kill();
    brain.web = "max_conversations = 1\nbusy = \"wait\"\n".into();
    brain.start();
    let mut client = moshid_cmd()
        .args(["client", "--url", &url, "--ca"])
        .arg(brain.dir.join("ca.pem"))
        .arg("--input")
        .arg(&wav)
        .args(["--seconds", "25"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    brain.wait_conversations(1);
    fault(
        dir.path(),
        &brain.url(),
        "busy-wait",
        remote_for(&brain),
        &["no handshake within 3 s", "busy"],
    );
    let _ = client.kill();
    let _ = client.wait();
    brain.kill();
}

#[test]
fn check_config_reads_the_token_and_the_certificate_of_a_satellite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("sat.toml");
    let write = |remote: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[model]\nsource = \"remote\"\n[web]\nenabled = false\n[model.remote]\n{remote}"
            ),
        )
        .unwrap();
        let o = moshid(&["check-config", cfg.to_str().unwrap()]);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout),
        )
    };
    let token = d.join("token");
    let (ok, out) = write(&format!(
        "urls = [\"wss://brain.local:8998/api/chat\"]\ntoken_file = \"{}\"\ninsecure = true\n",
        token.display()
    ));
    assert!(
        !ok && out.contains("token_file") && out.contains("web-token"),
        "{out}"
    );
    std::fs::write(&token, "t\n").unwrap();
    let (ok, out) = write(&format!(
        "urls = [\"wss://brain.local:8998/api/chat\"]\ntoken_file = \"{}\"\ninsecure = true\n",
        token.display()
    ));
    assert!(ok, "{out}");
    assert!(
        out.contains("a brain over the network (wss://brain.local:8998/api/chat)"),
        "{out}"
    );
    let (ok, out) = write(&format!(
        "urls = [\"wss://brain.local:8998/api/chat\"]\nca_file = \"{}\"\n",
        token.display()
    ));
    assert!(
        !ok && out.contains("model.remote") && out.contains("certificate"),
        "{out}"
    );
    let (ok, out) = write("urls = [\"https://brain.local/api/chat\"]\n");
    assert!(!ok && out.contains("wss://"), "{out}");
}

/// A WebSocket server that answers every session with a handshake, then garbage audio; the
/// request URIs it got.
// tungstenite's accept callback returns its own (large) ErrorResponse: not ours to shrink.
#[allow(clippy::result_large_err)]
fn garbage_brain() -> (u16, Arc<Mutex<Vec<String>>>) {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let uris = Arc::new(Mutex::new(Vec::new()));
    let seen = uris.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let note = |r: &Request, resp: Response| {
                    seen.lock().unwrap().push(r.uri().to_string());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::tungstenite::accept_hdr(s, note) else {
                    return;
                };
                let _ = ws.send(tokio_tungstenite::tungstenite::Message::Binary(
                    vec![0u8; 9].into(),
                ));
                for i in 0..200u32 {
                    let mut m = vec![1u8];
                    m.extend_from_slice(b"OggS\x00\x02");
                    m.extend_from_slice(&i.to_le_bytes().repeat(30));
                    if ws
                        .send(tokio_tungstenite::tungstenite::Message::Binary(m.into()))
                        .is_err()
                    {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(40));
                }
            });
        }
    });
    (port, uris)
}

#[test]
fn a_brain_answering_garbage_is_an_error_and_the_next_url_serves() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut brain = Brain::new(&dir.path().join("brain"), "");
    brain.start();
    let (garbage_port, uris) = garbage_brain();
    let garbage = format!("ws://127.0.0.1:{garbage_port}/api/chat");
    let remote = remote_for(&brain).replace("urls = [", &format!("urls = [\"{garbage}\", "));
    let sat = Satellite::start(&dir.path().join("sat"), &remote);
    sat.obs.publish(&topic("set/conversation"), "ON");
    // The first URL answers garbage: said, and the second brain serves the conversation.
    let e = sat
        .obs
        .wait(&topic("error"), Duration::from_secs(30), |m| {
            m.payload.contains(&garbage)
        })
        .unwrap_or_else(|| panic!("no error for the garbage brain\n{}", sat.daemon.log()));
    assert!(
        e.payload.contains("decoded") || e.payload.contains("no audio back"),
        "{}",
        e.payload
    );
    sat.hears(0);
    // The token and [sampling] went as Kyutai's query parameters.
    let uri = uris.lock().unwrap().first().cloned().unwrap_or_default();
    for q in [
        &format!("token={TOKEN}"),
        "text_temperature=0.8",
        "text_topk=250",
        "audio_temperature=0.8",
        "audio_topk=250",
        "text_seed=",
        "audio_seed=",
    ] {
        assert!(uri.contains(q), "{q} in {uri}");
    }
    // After the fault (a state shorter than the 250 ms state poll may never be published;
    // the `error` topic always is), the state is a healthy conversation.
    let healthy = wait_for(Duration::from_secs(10), || {
        sat.obs
            .on(&topic("state"))
            .into_iter()
            .filter(|m| m.at > e.at)
            .filter_map(|m| serde_json::from_str::<serde_json::Value>(&m.payload).ok())
            .find(|v| v["phase"] == "conversation" && v.get("error").is_none())
    });
    assert!(
        healthy.is_some(),
        "{:?}",
        sat.obs.on(&topic("state")).last()
    );
    sat.stop();
    brain.kill();
}

#[test]
fn a_page_session_on_a_satellite_is_told_to_talk_to_the_brain() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut brain = Brain::new(&dir.path().join("brain"), "");
    brain.start();
    let web_port = free_port();
    let remote = format!(
        "{}[web]\nlisten = \"127.0.0.1:{web_port}\"\nstate_dir = \"{}\"\n",
        remote_for(&brain),
        dir.path().join("sat-state").display()
    );
    let sat = Satellite::start(&dir.path().join("sat"), &remote);
    // The satellite's own /api/chat (loopback: no token): its one link is the room's.
    let wav = dir.path().join("voice.wav");
    write_voice_wav(&wav, 3.0);
    let url = format!("wss://localhost:{web_port}/api/chat");
    let o = moshid(&[
        "client",
        "--url",
        &url,
        "--insecure",
        "--input",
        wav.to_str().unwrap(),
        "--seconds",
        "2",
    ]);
    let (ok, j, err) = client_result(&o);
    assert!(!ok, "{j}");
    let e = j["errors"][0].as_str().unwrap_or_default();
    assert!(
        e.contains("satellite") && e.contains(&brain.url()),
        "{j}\n{err}"
    );
    // The room still talks through the brain.
    sat.obs.publish(&topic("set/conversation"), "ON");
    sat.hears(0);
    sat.stop();
    brain.kill();
}

#[test]
fn two_satellites_share_one_brain() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut brain = Brain::new(&dir.path().join("brain"), "");
    brain.start();
    let a = Satellite::start(&dir.path().join("a"), &remote_for(&brain));
    let b = Satellite::start(&dir.path().join("b"), &remote_for(&brain));
    a.obs.publish(&topic("set/conversation"), "ON");
    b.obs.publish(&topic("set/conversation"), "ON");
    // Both rooms hear the brain at the same time: two conversations of its one model.
    let (from_a, from_b) = (a.speaker_len(), b.speaker_len());
    a.hears(from_a);
    b.hears(from_b);
    let log = brain.daemon.as_ref().unwrap().log();
    assert!(log.matches("conversation started").count() >= 2, "{log}");
    let (from_a, from_b) = (a.speaker_len(), b.speaker_len());
    a.hears(from_a + 48_000);
    b.hears(from_b + 48_000);
    a.stop();
    b.stop();
    brain.kill();
}
