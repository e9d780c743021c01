//! End-to-end: `moshid run` with the demo model, a real mosquitto broker, a datagram
//! socket as NOTIFY_SOCKET, and file-backed microphone and speaker.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// What most tests start from, torn down in this order: the broker and the notify socket, the
/// scratch directory, then the lock that keeps the daemon tests one at a time.
struct Rig {
    broker: Broker,
    notify: Notify,
    dir: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Rig {
    fn new() -> Rig {
        let serial = serial();
        let dir = tempfile::tempdir().unwrap();
        Rig {
            broker: Broker::start(dir.path()),
            notify: Notify::bind(dir.path()),
            dir,
            _serial: serial,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn start(dir: &Path, broker: &Broker, notify: &Notify) -> Daemon {
    let (cfg, alsa) = write_config(dir, broker.port, "");
    start_daemon(dir, &cfg, &alsa, notify)
}

#[test]
fn appliance_over_mqtt_and_systemd() {
    let rig = Rig::new();
    let (dir, broker, notify) = (rig.path(), &rig.broker, &rig.notify);
    let obs = Observer::connect(broker.port, "obs", &[&topic("#"), "homeassistant/#"]);
    let mut d = start(dir, broker, notify);

    // READY=1 once the model is loaded and audio open, with a readable STATUS.
    assert!(
        notify.wait("READY=1", Duration::from_secs(120)),
        "no READY=1; notify: {:?}\nlog:\n{}",
        notify.lines(),
        d.log()
    );
    assert!(notify.lines().iter().any(|l| l.starts_with("STATUS=")));
    // The default `device = "auto"` resolves to the CPU in this build, and STATUS says why.
    assert!(
        notify
            .lines()
            .iter()
            .any(|l| l.starts_with("STATUS=ready")
                && l.contains("cpu (auto: this build has no CUDA)")),
        "no auto device in STATUS: {:?}",
        notify.lines()
    );

    // Availability (retained) and discovery for every entity.
    let online = obs
        .wait(&topic("availability"), Duration::from_secs(10), |m| {
            m.payload == "online"
        })
        .expect("availability online");
    assert!(
        online.retain
            || obs
                .on(&topic("availability"))
                .iter()
                .any(|m| m.payload == "online")
    );
    for entity in [
        "homeassistant/switch/e2e/conversation/config",
        "homeassistant/switch/e2e/mute/config",
        "homeassistant/number/e2e/volume/config",
        "homeassistant/select/e2e/voice/config",
        "homeassistant/sensor/e2e/latency/config",
        "homeassistant/sensor/e2e/state/config",
    ] {
        let m = obs
            .wait(entity, Duration::from_secs(5), |_| true)
            .unwrap_or_else(|| panic!("no discovery on {entity}"));
        let v: serde_json::Value = serde_json::from_str(&m.payload).unwrap();
        assert_eq!(v["availability_topic"], topic("availability"));
    }
    obs.wait_json(&topic("state"), Duration::from_secs(10), |v| {
        v["phase"] == "idle"
    })
    .expect("state idle before the conversation");

    // Conversation ON: state, transcript, and the model's audio reaches the speaker.
    obs.publish(&topic("set/conversation"), "ON");
    obs.wait_json(&topic("state"), Duration::from_secs(5), |v| {
        v["phase"] == "conversation"
    })
    .expect("state conversation");
    let words = obs
        .wait(&topic("transcript"), Duration::from_secs(10), |_| true)
        .expect("transcript messages");
    let w: serde_json::Value = serde_json::from_str(&words.payload).unwrap();
    assert!(w["text"].is_string() && w["time"].is_number(), "{w}");
    obs.wait_json(&topic("state"), Duration::from_secs(10), |v| {
        v["steps"].as_u64() > Some(10) && v["latency_ms"].as_f64() > Some(0.0)
    })
    .expect("steps and latency in the state");

    // The inference loop drives the watchdog while it makes progress.
    assert!(
        notify.wait("WATCHDOG=1", Duration::from_secs(5)),
        "no WATCHDOG=1"
    );

    // Mute: the model hears digital silence; unmute: it hears the mic again.
    obs.clear();
    obs.publish(&topic("set/mute"), "ON");
    obs.wait_json(&topic("state"), Duration::from_secs(5), |v| {
        v["muted"] == true && v["input_dbfs"].as_f64() == Some(-120.0)
    })
    .expect("muted state with silent model input");
    obs.publish(&topic("set/mute"), "OFF");
    obs.wait_json(&topic("state"), Duration::from_secs(5), |v| {
        v["muted"] == false && v["input_dbfs"].as_f64() > Some(-40.0)
    })
    .expect("unmuted state with the mic's level");

    // Malformed commands: an error naming the topic, nothing changes, daemon carries on.
    obs.clear();
    obs.publish(&topic("set/volume"), "loud");
    obs.publish(&topic("set/voice"), "nobody");
    obs.publish(&topic("set/explode"), "now");
    let errs = wait_for(Duration::from_secs(5), || {
        let e = obs.on(&topic("error"));
        (e.len() >= 3).then_some(e)
    })
    .expect("three error messages");
    for (e, t) in errs.iter().zip(["set/volume", "set/voice", "set/explode"]) {
        let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(v["topic"], topic(t));
        assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()));
    }
    obs.publish(&topic("set/volume"), "42");
    obs.wait_json(&topic("state"), Duration::from_secs(5), |v| {
        v["volume"] == 42 && v["phase"] == "conversation"
    })
    .expect("valid command after the bad ones");

    // Voice switch: the model is reloaded (the demo builds the other voice's weights)
    // and the conversation goes on with it.
    obs.clear();
    obs.publish(&topic("set/voice"), "moshika");
    obs.wait_json(&topic("state"), Duration::from_secs(30), |v| {
        v["voice"] == "moshika" && v["phase"] == "conversation"
    })
    .expect("voice switched and conversation resumed");

    // Home Assistant restarts: discovery is sent again.
    obs.clear();
    obs.client
        .publish(
            "homeassistant/status",
            rumqttc::QoS::AtLeastOnce,
            false,
            "online",
        )
        .unwrap();
    obs.wait(
        "homeassistant/select/e2e/voice/config",
        Duration::from_secs(5),
        |_| true,
    )
    .expect("discovery re-sent on homeassistant/status online");

    // SIGHUP: RELOADING=1 (with MONOTONIC_USEC), then READY=1 again.
    let ready_before = notify.count("READY=1");
    d.signal(libc::SIGHUP);
    assert!(
        notify.wait("RELOADING=1", Duration::from_secs(5)),
        "no RELOADING=1"
    );
    assert!(notify
        .lines()
        .iter()
        .any(|l| l.starts_with("MONOTONIC_USEC=")));
    assert!(
        notify.wait_more("READY=1", ready_before, Duration::from_secs(10)),
        "no READY=1 after reload"
    );

    // SIGTERM: STOPPING=1, `offline`, exit 0 within 2 s.
    obs.clear();
    let t0 = Instant::now();
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(2));
    let took = t0.elapsed();
    assert!(
        status.is_some(),
        "did not exit within 2 s\nlog:\n{}",
        d.log()
    );
    assert!(
        status.unwrap().success(),
        "exit status {status:?}\nlog:\n{}",
        d.log()
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(notify.wait("STOPPING=1", Duration::from_secs(1)));
    obs.wait(&topic("availability"), Duration::from_secs(3), |m| {
        m.payload == "offline"
    })
    .expect("availability offline after SIGTERM");

    // The speaker got the model's (non-silent) audio.
    let (n, peak) = raw_peak(&dir.join("spk.raw"));
    assert!(n > 24_000, "only {n} samples played\nlog:\n{}", d.log());
    assert!(peak > 0.01, "speaker output is silent (peak {peak})");
}

#[test]
fn reconnects_after_broker_restart() {
    let mut rig = Rig::new();
    let dir = rig.path().to_path_buf();
    let (broker, notify) = (&mut rig.broker, &rig.notify);
    let mut d = start(&dir, broker, notify);
    assert!(
        notify.wait("READY=1", Duration::from_secs(120)),
        "no READY=1\nlog:\n{}",
        d.log()
    );
    let obs = Observer::connect(broker.port, "obs1", &[&topic("#")]);
    obs.wait(&topic("availability"), Duration::from_secs(10), |m| {
        m.payload == "online"
    })
    .expect("online before the restart");
    obs.publish(&topic("set/mute"), "ON");
    obs.wait_json(&topic("state"), Duration::from_secs(5), |v| {
        v["muted"] == true
    })
    .expect("muted before the restart");
    drop(obs);

    // The broker dies and comes back empty (no persistence): no retained messages.
    broker.kill();
    std::thread::sleep(Duration::from_millis(1500));
    broker.restart();
    let t0 = Instant::now();

    // A fresh subscriber must get the retained availability and state back within 10 s,
    // and commands must work again (the daemon re-subscribed).
    let obs = Observer::connect(broker.port, "obs2", &[&topic("#")]);
    let state = wait_for(Duration::from_secs(10), || {
        let fresh = Observer::connect(
            broker.port,
            "probe",
            &[&topic("state"), &topic("availability")],
        );
        std::thread::sleep(Duration::from_millis(300));
        let retained: Vec<_> = fresh.all().into_iter().filter(|m| m.retain).collect();
        let online = retained
            .iter()
            .any(|m| m.topic == topic("availability") && m.payload == "online");
        let state = retained.into_iter().find(|m| m.topic == topic("state"));
        match (online, state) {
            (true, Some(s)) => Some(s),
            _ => None,
        }
    })
    .unwrap_or_else(|| panic!("retained state not back within 10 s\nlog:\n{}", d.log()));
    assert!(t0.elapsed() < Duration::from_secs(11));
    let v: serde_json::Value = serde_json::from_str(&state.payload).unwrap();
    assert_eq!(v["muted"], true, "state kept across the reconnect");
    obs.publish(&topic("set/mute"), "OFF");
    obs.wait_json(&topic("state"), Duration::from_secs(5), |v| {
        v["muted"] == false
    })
    .expect("commands work after the reconnect");

    d.terminate(Duration::from_secs(2));
}

/// The default model repository's three files, `bytes(200_000, seed + i)` each: downloadable,
/// but not a model.
fn model_files(seed: u64) -> Vec<(String, Vec<u8>)> {
    [
        "model.q8.gguf",
        "tokenizer-e351c8d8-checkpoint125.safetensors",
        "tokenizer_spm_32k_3.model",
    ]
    .iter()
    .enumerate()
    .map(|(i, n)| (n.to_string(), bytes(200_000, i as u64 + seed)))
    .collect()
}

/// A config that downloads the default model into `dir/cache`, with the web endpoint off
/// and MQTT to the broker on `port`.
fn hub_config(dir: &Path, port: u16) -> PathBuf {
    let cfg = dir.join("hub.toml");
    std::fs::write(
        &cfg,
        format!(
            "device_id = \"{ID}\"\ncache_dir = \"{}\"\n[web]\nenabled = false\n[mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\n",
            dir.join("cache").display(),
        ),
    )
    .unwrap();
    cfg
}

/// `moshid run` on `cfg` with NOTIFY_SOCKET, HF_ENDPOINT at `hub` and `env`.
fn spawn_from_hub(
    dir: &Path,
    cfg: &Path,
    notify: &Notify,
    hub: &FakeHub,
    env: &[(&str, &str)],
) -> Daemon {
    let mut all = vec![
        ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
        ("HF_ENDPOINT", hub.url.as_str()),
    ];
    all.extend_from_slice(env);
    Daemon::spawn(&["run", "--config", cfg.to_str().unwrap()], &all, dir)
}

#[test]
fn daemon_reports_download_progress_and_survives_a_bad_model() {
    let rig = Rig::new();
    let (dir, broker, notify) = (rig.path(), &rig.broker, &rig.notify);
    // ~0.6 MB at 300 kB/s: a couple of seconds of downloading to watch.
    let hub = FakeHub::start(model_files(1), HubMode::Good, 300_000);
    let cfg = hub_config(dir, broker.port);
    let obs = Observer::connect(broker.port, "obs", &[&topic("#")]);
    let mut d = spawn_from_hub(dir, &cfg, notify, &hub, &[]);
    // While downloading: STATUS= says so, and the MQTT state carries the progress.
    assert!(
        wait_for(Duration::from_secs(10), || notify
            .lines()
            .iter()
            .any(|l| l.starts_with("STATUS=downloading model.q8.gguf"))
            .then_some(()))
        .is_some(),
        "no download STATUS: {:?}\n{}",
        notify.lines(),
        d.log()
    );
    obs.wait_json(&topic("state"), Duration::from_secs(10), |v| {
        v["phase"] == "loading" && v["download_percent"].as_f64().is_some()
    })
    .expect("download progress in the MQTT state");
    // The files are not a model: phase error with the reason, no READY, still serving.
    let err = obs
        .wait_json(&topic("state"), Duration::from_secs(15), |v| {
            v["phase"] == "error"
        })
        .expect("error state after the bad model");
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains("Mimi") || e.contains("LM")),
        "{err}"
    );
    assert_eq!(notify.count("READY=1"), 0);
    obs.publish(&topic("set/volume"), "10");
    obs.wait_json(&topic("state"), Duration::from_secs(5), |v| {
        v["volume"] == 10
    })
    .expect("commands still served while in error");
    d.terminate(Duration::from_secs(2));
}

#[test]
fn a_stalled_download_is_retried_in_the_background_while_the_watchdog_runs() {
    let rig = Rig::new();
    let (dir, broker, notify) = (rig.path(), &rig.broker, &rig.notify);
    let hub = FakeHub::serve(
        model_files(11),
        vec![Body::StallAfter(40_000)],
        206,
        usize::MAX,
    );
    let cfg = hub_config(dir, broker.port);
    let obs = Observer::connect(broker.port, "obs", &[&topic("#")]);
    let d = spawn_from_hub(
        dir,
        &cfg,
        notify,
        &hub,
        &[
            ("WATCHDOG_USEC", "2000000"),
            ("MOSHID_DOWNLOAD_TIMEOUT_S", "0.5"),
            ("MOSHID_DOWNLOAD_ATTEMPTS", "2"),
        ],
    );
    // Two stalled attempts: one error naming file and server, a retry scheduled.
    let want = format!(
        "cannot download model.q8.gguf from {}: the server stalled",
        hub.host()
    );
    let err = obs
        .wait_json(&topic("state"), Duration::from_secs(15), |v| {
            v["phase"] == "error" && v["error"].as_str().is_some_and(|e| e.contains(&want))
        })
        .unwrap_or_else(|| panic!("no stalled error in the state\n{}", d.log()));
    assert!(
        !err["error"].as_str().unwrap().contains("HF_TOKEN"),
        "{err}"
    );
    // The state and STATUS are sent one after the other: wait for the STATUS line too
    // (under qemu it can arrive after the observer has the state).
    let status_seen = wait_for(Duration::from_secs(5), || {
        notify
            .lines()
            .iter()
            .any(|l| l.starts_with("STATUS=error (retrying in 5s): ") && l.contains(&want))
            .then_some(())
    });
    assert!(status_seen.is_some(), "{:?}", notify.lines());
    // Waiting for its retry is not a hang: WATCHDOG=1 goes on past WatchdogSec (2 s).
    let pings = notify.count("WATCHDOG=1");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        notify.count("WATCHDOG=1") >= pings + 3,
        "watchdog stopped while waiting"
    );
    // The hub recovers: the background retry resumes the .part (2 x 40 kB) and completes.
    hub.replan(vec![Body::Full]);
    assert!(
        wait_for(Duration::from_secs(15), || hub
            .ranges()
            .contains(&"bytes=80000-".to_string())
            .then_some(()))
        .is_some(),
        "no resumed request: {:?}\n{}",
        hub.ranges(),
        d.log()
    );
    let blob = dir
        .join("cache/hub/models--kyutai--moshiko-candle-q8/blobs")
        .join(sha256_hex(&hub.files[0].1));
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::read(&blob)
            .ok()
            .filter(|b| *b == hub.files[0].1))
        .is_some(),
        "the resumed file is not the served one"
    );
}

/// A TCP proxy to the broker at `upstream` that holds the broker's first bytes (the CONNACK)
/// back for `delay` on every connection, as a loaded broker or a slow link would; returns
/// its port and the number of connections it accepted.
fn slow_handshake_proxy(upstream: u16, delay: Duration) -> (u16, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            count.fetch_add(1, AtomicOrdering::SeqCst);
            let Ok(up) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (mut c_in, mut up_out) = (c.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut c_in, &mut up_out));
            let (mut up_in, mut c_out) = (up, c);
            std::thread::spawn(move || {
                let mut first = [0u8; 64];
                let n = std::io::Read::read(&mut up_in, &mut first).unwrap_or(0);
                std::thread::sleep(delay);
                let _ = std::io::Write::write_all(&mut c_out, &first[..n]);
                std::io::copy(&mut up_in, &mut c_out)
            });
        }
    });
    (port, accepted)
}

#[test]
fn a_slow_mqtt_handshake_connects_once_without_a_stray_offline() {
    // The MQTT loop used to drop rumqttc's connect future whenever its 250 ms tick won the
    // select: a handshake slower than that was cut after CONNECT, the next attempt took the
    // session over, and the broker published the daemon's own last will (`offline`) right
    // before its `online`; a handshake always slower than the tick never completed.
    let rig = Rig::new();
    let (dir, broker, notify) = (rig.path(), &rig.broker, &rig.notify);
    let (proxy, accepted) = slow_handshake_proxy(broker.port, Duration::from_millis(700));
    let obs = Observer::connect(broker.port, "obs", &[&topic("availability")]);
    let (cfg, alsa) = write_config(dir, proxy, "");
    let d = start_daemon(dir, &cfg, &alsa, notify);
    obs.wait(&topic("availability"), Duration::from_secs(15), |m| {
        m.payload == "online"
    })
    .unwrap_or_else(|| panic!("never online through a slow handshake\n{}", d.log()));
    std::thread::sleep(Duration::from_secs(2));
    let seen: Vec<String> = obs
        .on(&topic("availability"))
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(seen, ["online"], "{}", d.log());
    assert_eq!(accepted.load(AtomicOrdering::SeqCst), 1, "one connection");
    drop(d);
}

/// A daemon config for broker-connection tests (demo model, file audio not needed:
/// the MQTT side works before and regardless of the model).
fn mqtt_only_config(dir: &Path, port: u16, mqtt_extra: &str) -> PathBuf {
    let (_, _) = write_config(dir, port, "");
    let cfg = format!(
        "device_id = \"{ID}\"\ncache_dir = \"{}\"\nautostart = false\n[model]\nsource = \"demo\"\n\
         [audio]\ncapture = \"mic\"\nplayback = \"spk\"\nformat = \"S16\"\npace = true\n\
         [web]\nenabled = false\n[mqtt]\nenabled = true\nport = {port}\n{mqtt_extra}",
        model_cache().display()
    );
    let path = dir.join("mqtt.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn spawn_with(dir: &Path, cfg: &Path) -> Daemon {
    let alsa = format!("/usr/share/alsa/alsa.conf:{}/asound.conf", dir.display());
    Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        &[("ALSA_CONFIG_PATH", &alsa)],
        dir,
    )
}

#[test]
fn tls_with_client_certificate() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    let broker = Broker::start_with(
        d,
        &format!(
            "allow_anonymous true\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nrequire_certificate true\n",
            d.display()
        ),
    );
    let cfg = mqtt_only_config(
        d,
        broker.port,
        &format!(
            "host = \"127.0.0.1\"\n[mqtt.tls]\nca_file = \"{0}/ca.pem\"\nclient_cert = \"{0}/client.pem\"\nclient_key = \"{0}/client.key\"\n",
            d.display()
        ),
    );
    let mut daemon = spawn_with(d, &cfg);
    assert!(
        daemon.wait_log("MQTT connected", Duration::from_secs(10)),
        "no TLS connection\n{}",
        daemon.log()
    );
    daemon.terminate(Duration::from_secs(2));

    // Without the client certificate the broker refuses the handshake.
    let cfg = mqtt_only_config(
        d,
        broker.port,
        &format!(
            "host = \"127.0.0.1\"\n[mqtt.tls]\nca_file = \"{}/ca.pem\"\n",
            d.display()
        ),
    );
    let mut daemon = spawn_with(d, &cfg);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!daemon.log().contains("MQTT connected"), "{}", daemon.log());
    daemon.terminate(Duration::from_secs(2));
}

#[test]
fn username_password_and_last_will() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Readable by mosquitto's own user when it starts as root and drops privileges.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    sh(
        "mosquitto_passwd",
        &["-b", "-c", "passwd", "moshid", "s3cret"],
        d,
    );
    sh("mosquitto_passwd", &["-b", "passwd", "obs", "obs"], d);
    std::fs::set_permissions(d.join("passwd"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let broker = Broker::start_with(
        d,
        &format!(
            "allow_anonymous false\npassword_file {}/passwd\n",
            d.display()
        ),
    );
    std::fs::write(d.join("mqtt-password"), "s3cret\n").unwrap();

    // Wrong password: refused, and the log says what to fix.
    let cfg = mqtt_only_config(
        d,
        broker.port,
        "host = \"127.0.0.1\"\nusername = \"moshid\"\npassword = \"nope\"\n",
    );
    let mut daemon = spawn_with(d, &cfg);
    assert!(
        daemon.wait_log("refused the credentials", Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    daemon.terminate(Duration::from_secs(2));

    // Right password from a file: online; killed without a goodbye, the broker
    // publishes the last will `offline`.
    let cfg = mqtt_only_config(
        d,
        broker.port,
        &format!(
            "host = \"127.0.0.1\"\nusername = \"moshid\"\npassword_file = \"{}/mqtt-password\"\n",
            d.display()
        ),
    );
    let mut o = rumqttc::MqttOptions::new("obs", "127.0.0.1", broker.port);
    o.set_credentials("obs", "obs");
    let (client, mut conn) = rumqttc::Client::new(o, 16);
    client
        .subscribe(topic("availability"), rumqttc::QoS::AtLeastOnce)
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = ev {
                s2.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&p.payload).into_owned());
            }
        }
    });
    let mut daemon = spawn_with(d, &cfg);
    let has = |want: &str| {
        wait_for(Duration::from_secs(10), || {
            seen.lock().unwrap().iter().any(|m| m == want).then_some(())
        })
        .is_some()
    };
    assert!(
        has("online"),
        "not online with password_file\n{}",
        daemon.log()
    );
    seen.lock().unwrap().clear();
    daemon.child.kill().unwrap();
    let _ = daemon.child.wait();
    assert!(has("offline"), "no last will after SIGKILL");
    drop(client);
}

#[test]
fn an_oversized_retained_command_is_ignored_without_a_reconnect_loop() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(d);
    // 300 KB retained on set/voice, before the daemon connects: it comes on every connect.
    let mut o = rumqttc::MqttOptions::new("big", "127.0.0.1", broker.port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = rumqttc::Client::new(o, 8);
    let big = vec![b'x'; 300 * 1024];
    client
        .publish(topic("set/voice"), rumqttc::QoS::AtLeastOnce, true, big)
        .unwrap();
    // Until the broker has it (PUBACK).
    for ev in conn.iter() {
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = ev.unwrap() {
            break;
        }
    }
    let obs = Observer::connect(
        broker.port,
        "obs",
        &[&topic("availability"), &topic("error")],
    );
    let cfg = mqtt_only_config(d, broker.port, "host = \"127.0.0.1\"\n");
    let mut daemon = spawn_with(d, &cfg);
    let seen = daemon.wait_log("payload of 307200 bytes ignored", Duration::from_secs(10));
    assert!(seen, "{}", daemon.log());
    std::thread::sleep(Duration::from_secs(3));
    let log = daemon.log();
    assert_eq!(log.matches("MQTT connected").count(), 1, "{log}");
    // Still online: no disconnect (and last will) after the oversized message.
    let avail = obs.on(&topic("availability"));
    assert_eq!(
        avail.last().map(|m| m.payload.as_str()),
        Some("online"),
        "{avail:?}\n{log}"
    );
    daemon.terminate(Duration::from_secs(3));
}

#[test]
fn a_retained_command_over_16_mb_costs_one_error_not_the_connection() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // mosquitto's default message_size_limit is the protocol's maximum: it takes 17 MB.
    let broker = Broker::start(d);
    let mut o = rumqttc::MqttOptions::new("huge", "127.0.0.1", broker.port);
    o.set_max_packet_size(32 << 20, 32 << 20);
    let (client, mut conn) = rumqttc::Client::new(o, 8);
    let huge = vec![b'7'; 17 << 20];
    client
        .publish(topic("set/volume"), rumqttc::QoS::AtLeastOnce, true, huge)
        .unwrap();
    for ev in conn.iter() {
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = ev.unwrap() {
            break;
        }
    }
    let obs = Observer::connect(broker.port, "obs2", &[&topic("error"), &topic("state")]);
    let cfg = mqtt_only_config(d, broker.port, "host = \"127.0.0.1\"\n");
    let mut daemon = spawn_with(d, &cfg);
    let bytes = (17 << 20).to_string();
    let seen = daemon.wait_log(
        &format!("payload of {bytes} bytes ignored"),
        Duration::from_secs(20),
    );
    assert!(seen, "{}", daemon.log());
    // A command published after it still acts: the connection is the same one.
    obs.publish(&topic("set/volume"), "55");
    let acted = obs.wait_json(&topic("state"), Duration::from_secs(10), |v| {
        v["volume"] == 55
    });
    std::thread::sleep(Duration::from_secs(2));
    let log = daemon.log();
    assert_eq!(log.matches("MQTT connected").count(), 1, "{log}");
    assert!(acted.is_some(), "{log}");
    let errors = obs.on(&topic("error"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].payload.contains(&bytes), "{errors:?}");
    daemon.terminate(Duration::from_secs(3));
}

#[test]
fn ready_follows_a_microphone_that_appears_after_the_start() {
    let rig = Rig::new();
    let (dir, broker, notify) = (rig.path(), &rig.broker, &rig.notify);
    let (cfg, alsa) = write_config(dir, broker.port, "");
    // The microphone's file is missing at the start: opening it fails, the model loads.
    let mic = dir.join("mic.raw");
    let kept = dir.join("mic.later");
    std::fs::rename(&mic, &kept).unwrap();
    let d = start_daemon(dir, &cfg, &alsa, notify);
    let failed = d.wait_log("cannot open audio", Duration::from_secs(120));
    assert!(failed, "{}", d.log());
    assert_eq!(notify.count("READY=1"), 0, "{}", d.log());
    // It appears: the retry opens it and the service serves, so systemd must hear READY=1.
    std::fs::rename(&kept, &mic).unwrap();
    assert!(
        notify.wait("READY=1", Duration::from_secs(90)),
        "no READY=1 once the microphone works; notify: {:?}\n{}",
        notify.lines(),
        d.log()
    );
}
