//! The web endpoint inside the appliance: `moshid run` with the demo model, ALSA `file`
//! PCMs as the room's microphone and speaker, a real mosquitto, and `moshid client` over
//! a real TLS WebSocket. A web session takes the conversation from the room (the room's
//! speaker gets silence, the state says `endpoint` = `web` and the client's address) and
//! gives it back when it ends; `set/conversation OFF` ends it; a second client is rejected
//! with `busy = "reject"`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;
use support::*;

/// 24 kHz S16 mono: bytes per second of the room's speaker file.
const BYTES_PER_S: usize = 48_000;

struct Appliance {
    _broker: Broker,
    notify: Notify,
    obs: Observer,
    daemon: Daemon,
    web_port: u16,
    dir: PathBuf,
}

/// Broker + `moshid run` with `[web]` on loopback (busy = reject); READY=1 awaited.
fn appliance(dir: &Path) -> Appliance {
    appliance_on(dir, free_port(), "reject")
}

/// [`appliance`] with the web endpoint on `web_port` and this busy policy.
fn appliance_on(dir: &Path, web_port: u16, busy: &str) -> Appliance {
    let broker = Broker::start(dir);
    let notify = Notify::bind(dir);
    let obs = Observer::connect(broker.port, "obs", &[&topic("#")]);
    let web = format!(
        "[web]\nlisten = \"127.0.0.1:{web_port}\"\nstate_dir = \"{}\"\nbusy = \"{busy}\"\n",
        dir.join("state").display()
    );
    let (cfg, alsa) = write_config(dir, broker.port, &web);
    let daemon = start_daemon(dir, &cfg, &alsa, &notify);
    assert!(
        notify.wait("READY=1", Duration::from_secs(120)),
        "no READY=1\n{}",
        daemon.log()
    );
    Appliance {
        _broker: broker,
        notify,
        obs,
        daemon,
        web_port,
        dir: dir.to_path_buf(),
    }
}

impl Appliance {
    /// `moshid client` talking for `seconds` (a child process: it runs while we watch).
    fn client(&self, seconds: &str, query: &str, name: &str) -> Child {
        let wav = self.dir.join("voice.wav");
        if !wav.exists() {
            write_voice_wav(&wav, 40.0);
        }
        let url = format!("wss://localhost:{}/api/chat{query}", self.web_port);
        let ca = self.dir.join("state/web-cert.pem");
        let out = self.dir.join(format!("{name}.wav"));
        moshid_cmd()
            .args(["client", "--url", &url, "--ca"])
            .arg(&ca)
            .arg("--input")
            .arg(&wav)
            .args(["--seconds", seconds, "--output"])
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moshid client")
    }

    /// States published so far.
    fn states(&self) -> usize {
        self.obs.on(&topic("state")).len()
    }

    /// Waits for a state for which `pred` holds, among those after the first `after`.
    fn state(
        &self,
        after: usize,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(Duration::from_secs(30), || {
            self.obs
                .on(&topic("state"))
                .into_iter()
                .skip(after)
                .filter_map(|m| serde_json::from_str::<serde_json::Value>(&m.payload).ok())
                .find(|v| pred(v))
        })
        .unwrap_or_else(|| panic!("no state with {what}\n{}", self.daemon.log()))
    }

    fn speaker(&self) -> PathBuf {
        self.dir.join("spk.raw")
    }
}

/// The client's exit status, JSON line and stderr.
fn finish(c: Child) -> (bool, serde_json::Value, String) {
    client_result(&c.wait_with_output().unwrap())
}

/// `curl -sk` on the web endpoint; the body.
fn curl(port: u16, method: &str, path: &str) -> String {
    let o = std::process::Command::new("curl")
        .args(["-sk", "-X", method])
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    assert!(o.status.success(), "curl {path}: {o:?}");
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The samples of what `moshid client` heard (a 32-bit float WAV).
fn samples(p: &Path) -> Vec<f32> {
    let mut r = hound::WavReader::open(p).expect("the client wrote what it heard");
    r.samples::<f32>().map(|s| s.unwrap()).collect()
}

/// Bytes in the speaker file now.
fn len(p: &Path) -> usize {
    std::fs::metadata(p).map_or(0, |m| m.len() as usize)
}

/// Peak of the S16 samples of `p` in the byte range [from, to).
fn peak(p: &Path, from: usize, to: usize) -> f32 {
    let b = std::fs::read(p).unwrap_or_default();
    let to = to.min(b.len()) & !1;
    b[(from & !1).min(to)..to]
        .chunks_exact(2)
        .map(|c| (i16::from_le_bytes([c[0], c[1]]) as f32 / 32768.0).abs())
        .fold(0.0, f32::max)
}

/// Waits until the speaker file holds `bytes` more than `from`; the new length.
fn grown(p: &Path, from: usize, bytes: usize) -> usize {
    wait_for(Duration::from_secs(30), || {
        let n = len(p);
        (n >= from + bytes).then_some(n)
    })
    .expect("the room's speaker keeps being written")
}

fn stop(mut d: Daemon) {
    d.terminate(Duration::from_secs(3));
}

#[test]
fn a_web_session_takes_the_conversation_from_the_room_and_gives_it_back() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let a = appliance(dir.path());
    let spk = a.speaker();
    // The room talks: the demo model's (random) voice reaches the speaker.
    a.obs.publish(&topic("set/conversation"), "ON");
    a.state(0, "a room conversation", |v| {
        v["phase"] == "conversation" && v["endpoint"] == "room" && v["steps"].as_u64() > Some(5)
    });
    let at = len(&spk);
    let end = grown(&spk, at, 2 * BYTES_PER_S);
    assert!(peak(&spk, at, end) > 0.01, "the room is silent before");

    let n = a.states();
    let c = a.client("8", "?text_topk=25&text_seed=7", "heard");
    let s = a.state(n, "endpoint web", |v| v["endpoint"] == "web");
    let client = s["client"].as_str().unwrap_or_default().to_string();
    assert!(client.starts_with("127.0.0.1:"), "{s}");
    assert_eq!(s["phase"], "conversation", "{s}");
    // Frames queued for the room before the take-over (the pipeline's output queue, hal's
    // queue and the ALSA buffer: at most ~0.65 s) play out within a second;
    // from then on, while the client still talks, the room's speaker gets silence.
    let from = grown(&spk, len(&spk), BYTES_PER_S);
    let to = grown(&spk, from, 3 * BYTES_PER_S);
    let mut c = c;
    assert!(
        c.try_wait().unwrap().is_none(),
        "the session ended too early"
    );
    assert_eq!(
        peak(&spk, from, to),
        0.0,
        "the room's speaker played during the web session"
    );

    let n = a.states();
    let (ok, j, err) = finish(c);
    assert!(ok, "client failed: {err}\n{j}\n{}", a.daemon.log());
    eprintln!("web session in the appliance: {j}");
    assert!(j["handshake_ms"].as_f64().is_some(), "{j}");
    assert_eq!(j["metadata"]["text_topk"], 25, "{j}");
    assert_eq!(j["metadata"]["lm_model_file"], "lm.safetensors", "{j}");
    assert!(j["audio_s"].as_f64().unwrap() >= 7.0, "{j}");
    assert!(j["audio_rms_dbfs"].as_f64().unwrap() > -40.0, "silent: {j}");
    assert!(!j["text"].as_str().unwrap().is_empty(), "no text: {j}");

    // The room has the conversation again, and its speaker Moshi's voice.
    let s = a.state(n, "endpoint room", |v| v["endpoint"] == "room");
    assert!(s.get("client").is_none(), "{s}");
    assert!(s["web_dropped_input"].as_u64().is_some(), "{s}");
    assert!(s["web_dropped_output"].as_u64().is_some(), "{s}");
    let at = len(&spk);
    let back = wait_for(Duration::from_secs(20), || {
        (peak(&spk, at, len(&spk)) > 0.01).then_some(())
    });
    assert!(back.is_some(), "the room stays silent after the session");
    assert!(a.notify.count("READY=1") >= 1);
    stop(a.daemon);
}

#[test]
fn conversation_off_ends_a_web_session_and_a_second_client_is_busy() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let a = appliance(dir.path());
    // The room's conversation is off (autostart = false): a web session talks anyway.
    a.state(0, "idle", |v| v["phase"] == "idle");
    let n = a.states();
    // It would talk for 30 s: the device ends it long before (slow machines included).
    let c = a.client("30", "", "first");
    a.state(n, "endpoint web", |v| {
        v["endpoint"] == "web" && v["phase"] == "conversation" && v["steps"].as_u64() > Some(10)
    });
    // A second client while one talks: kind-5 "busy" and a close.
    let (ok, j, err) = finish(a.client("2", "", "second"));
    assert!(!ok, "{j}");
    assert!(
        j["errors"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("busy"),
        "{j}\n{err}"
    );
    assert!(j["metadata"].is_null(), "no handshake for the second: {j}");
    // The page's panel goes through the supervisor: its state, and volume 0 silences the
    // web session as it would the room.
    let st: serde_json::Value =
        serde_json::from_str(&curl(a.web_port, "GET", "/api/state")).unwrap();
    assert_eq!(st["endpoint"], "web", "{st}");
    assert!(
        st["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{st}"
    );
    assert!(
        st["voices"].as_array().is_some_and(|v| v.len() == 2),
        "{st}"
    );
    let n = a.states();
    curl(a.web_port, "POST", "/api/control?volume=0");
    let s = a.state(n, "volume 0", |v| v["volume"] == 0);
    let steps = s["steps"].as_u64().unwrap();
    a.state(n, "15 steps at volume 0", |v| {
        v["steps"].as_u64() > Some(steps + 15)
    });
    // The device ends the first session.
    let n = a.states();
    a.obs.publish(&topic("set/conversation"), "OFF");
    let (ok, j, err) = finish(c);
    assert!(!ok, "{j}");
    assert!(
        j["errors"][0]
            .as_str()
            .unwrap_or_default()
            .contains("ended on the device"),
        "{j}\n{err}"
    );
    assert!(j["audio_s"].as_f64().unwrap() > 1.0, "{j}");
    let heard = samples(&dir.path().join("first.wav"));
    let quiet = heard.len().saturating_sub(19_200);
    let peak = |s: &[f32]| s.iter().fold(0.0f32, |a, x| a.max(x.abs()));
    assert!(
        peak(&heard[..quiet]) > 0.01,
        "the web session heard silence"
    );
    assert!(
        peak(&heard[quiet..]) < 0.01,
        "volume 0 did not silence the web session: peak {}",
        peak(&heard[quiet..])
    );
    a.state(n, "room, idle", |v| {
        v["endpoint"] == "room" && v["phase"] == "idle"
    });
    stop(a.daemon);
}

#[test]
fn a_web_endpoint_that_cannot_listen_leaves_the_appliance_running() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    // Someone else has the port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let a = appliance_on(dir.path(), port, "reject");
    let s = a.state(0, "web_error", |v| v["web_error"].is_string());
    let e = s["web_error"].as_str().unwrap();
    assert!(
        e.contains("cannot listen") && e.contains(&port.to_string()),
        "{s}"
    );
    assert!(
        a.notify
            .lines()
            .iter()
            .any(|l| l.starts_with("STATUS=") && l.contains("web endpoint off")),
        "{:?}",
        a.notify.lines()
    );
    // The room works as ever.
    let n = a.states();
    a.obs.publish(&topic("set/conversation"), "ON");
    a.state(n, "a room conversation", |v| {
        v["phase"] == "conversation" && v["steps"].as_u64() > Some(5)
    });
    stop(a.daemon);
}

#[test]
fn a_waiting_client_gets_the_conversation_when_the_first_one_leaves() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let a = appliance_on(dir.path(), free_port(), "wait");
    let n = a.states();
    let first = a.client("3", "", "first");
    let s = a.state(n, "the first client", |v| v["endpoint"] == "web");
    let one = s["client"].as_str().unwrap().to_string();
    // The second waits (no handshake) while the first talks, then talks itself.
    let second = a.client("3", "", "second");
    let (ok, j1, err) = finish(first);
    assert!(ok, "first: {err}\n{j1}");
    let s = a.state(n, "the second client", |v| {
        v["endpoint"] == "web" && v["client"].as_str().is_some_and(|c| c != one)
    });
    assert_eq!(s["phase"], "conversation", "{s}");
    let n = a.states();
    let (ok, j2, err) = finish(second);
    assert!(ok, "second: {err}\n{j2}\n{}", a.daemon.log());
    assert!(
        j2["handshake_ms"].as_f64().unwrap() > j1["handshake_ms"].as_f64().unwrap() + 1000.0,
        "the second got its handshake only once the first had left: {j1} {j2}"
    );
    assert!(j2["audio_s"].as_f64().unwrap() >= 2.5, "{j2}");
    assert!(j2["audio_rms_dbfs"].as_f64().unwrap() > -40.0, "{j2}");
    a.state(n, "room", |v| v["endpoint"] == "room");
    stop(a.daemon);
}
