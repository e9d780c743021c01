//! Real components for the end-to-end tests: a mosquitto broker on a free port, a Unix
//! datagram socket standing in for systemd's NOTIFY_SOCKET, an MQTT observer, and the
//! `moshid` binary as a child process.

#![allow(dead_code)]

mod hub;
mod persona;
mod stuck;
#[allow(unused_imports)]
pub use hub::*;
#[allow(unused_imports)]
pub use persona::persona_model;
#[allow(unused_imports)]
pub use stuck::{ogg_opus_voice, ws_with_tiny_buffers};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The moshid binary under test.
pub const MOSHID: &str = env!("CARGO_BIN_EXE_moshid");

/// The binary the runner starts: [`MOSHID`], or `MOSHID_UNDER_TEST` when set (to measure
/// another build, e.g. main's, with the same test).
pub fn moshid_bin() -> String {
    std::env::var("MOSHID_UNDER_TEST").unwrap_or_else(|_| MOSHID.to_string())
}

/// The one binary runner: `moshid ARGS` with no stdin, waited for.
pub fn moshid(args: &[&str]) -> std::process::Output {
    moshid_cmd().args(args).output().expect("run moshid")
}

/// `infer --lm LM --lm-config CFG --input-codes CODES` and `extra`: the arguments of an
/// LM-only `moshid infer` run.
pub fn infer_args<'a>(
    lm: &'a str,
    cfg: &'a str,
    codes: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut v = vec![
        "infer",
        "--lm",
        lm,
        "--lm-config",
        cfg,
        "--input-codes",
        codes,
    ];
    v.extend_from_slice(extra);
    v
}

/// `moshid` as a command to add arguments and environment to (no stdin).
pub fn moshid_cmd() -> Command {
    let mut c = Command::new(moshid_bin());
    c.stdin(Stdio::null());
    c
}

/// The one fixtures locator: `rel` under the repository root (`models/tests/fixtures/mimi`,
/// `systemd/moshid.toml.example`, ...).
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// `rel` under the committed model fixtures (`models/tests/fixtures`).
pub fn fixtures(rel: &str) -> PathBuf {
    repo_file("models/tests/fixtures").join(rel)
}

/// The daemon's test identity in MQTT topics.
pub const ID: &str = "e2e";

/// `moshid/e2e/<t>`.
pub fn topic(t: &str) -> String {
    format!("moshid/{ID}/{t}")
}

/// Writes the appliance's config (demo model, ALSA `file` PCMs as mic and speaker, the
/// test broker, `extra` appended) and the ALSA configuration defining those PCMs; returns
/// the config file and the ALSA_CONFIG_PATH to run it with.
pub fn write_config(dir: &Path, port: u16, extra: &str) -> (PathBuf, String) {
    // Longer than any test runs: past its end the file plugin returns stale data.
    write_voice_raw(&dir.join("mic.raw"), 60.0);
    let d = dir.display();
    let asound = format!(
        "pcm.mic {{ type file; slave.pcm \"null\"; file \"/dev/null\"; infile \"{d}/mic.raw\"; format \"raw\" }}\n\
         pcm.spk {{ type file; slave.pcm \"null\"; file \"{d}/spk.raw\"; format \"raw\" }}\n"
    );
    std::fs::write(dir.join("asound.conf"), asound).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, appliance_toml(port, extra)).unwrap();
    let alsa = format!("/usr/share/alsa/alsa.conf:{d}/asound.conf");
    (path, alsa)
}

/// The appliance's TOML (see [`write_config`]); `extra` goes at the end (inside `[mqtt]`
/// unless it opens a table). The web endpoint is off unless `extra` has a `[web]` table.
pub fn appliance_toml(port: u16, extra: &str) -> String {
    let web = if extra.contains("[web]") {
        ""
    } else {
        "[web]\nenabled = false\n"
    };
    format!(
        r#"device_id = "{ID}"
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
[aec]
enabled = true
{web}[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
keepalive_s = 5
{extra}"#,
        cache = model_cache().display(),
    )
}

/// `moshid run` on `cfg` with NOTIFY_SOCKET, a watchdog and the test's ALSA PCMs.
pub fn start_daemon(dir: &Path, cfg: &Path, alsa: &str, notify: &Notify) -> Daemon {
    Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
            ("ALSA_CONFIG_PATH", alsa),
        ],
        dir,
    )
}

/// Daemon tests run one at a time: each runs real-time inference on a small CPU.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the serial lock even if a previous test panicked while holding it.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `f` every 20 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().unwrap().port()
}

/// A mosquitto process with its own config in a temp dir.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Listener settings after the `listener` line.
    settings: String,
}

impl Broker {
    pub fn start(dir: &Path) -> Broker {
        Self::start_with(dir, "allow_anonymous true\n")
    }

    /// A broker whose listener has these settings (TLS files, password_file, ...).
    pub fn start_with(dir: &Path, settings: &str) -> Broker {
        let mut b = Broker {
            port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
            settings: settings.to_string(),
        };
        b.restart();
        b
    }

    /// Starts (again) on the same port, without persistence: retained messages are gone.
    pub fn restart(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "persistence false\nlistener {} 127.0.0.1\n{}",
                self.port, self.settings
            ),
        )
        .unwrap();
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is installed (scripts/setup.sh installs it)");
        let log = std::fs::File::create(self.dir.join("mosquitto.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let port = self.port;
        wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .expect("mosquitto listens within 10 s");
    }

    /// SIGKILL: the broker vanishes without saying goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One received MQTT message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
    pub at: Instant,
}

/// An MQTT client that records everything on its subscriptions.
pub struct Observer {
    pub client: Client,
    msgs: Arc<Mutex<Vec<Msg>>>,
}

impl Observer {
    pub fn connect(port: u16, id: &str, topics: &[&str]) -> Observer {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut conn) = Client::new(o, 64);
        for t in topics {
            client.subscribe(*t, QoS::AtLeastOnce).unwrap();
        }
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let m = msgs.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => m.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: String::from_utf8_lossy(&p.payload).into_owned(),
                        retain: p.retain,
                        at: Instant::now(),
                    }),
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Observer { client, msgs }
    }

    pub fn all(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.msgs.lock().unwrap().clear();
    }

    /// Messages on `topic` so far.
    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.all()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    /// Waits for a message on `topic` matching `pred`.
    pub fn wait(&self, topic: &str, timeout: Duration, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        wait_for(timeout, || self.on(topic).into_iter().find(|m| pred(m)))
    }

    /// Waits for a JSON state on `topic` for which `pred` holds.
    pub fn wait_json(
        &self,
        topic: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        self.wait_json_after(topic, 0, timeout, pred)
    }

    /// [`Observer::wait_json`] among the messages after the first `after` on `topic`.
    pub fn wait_json_after(
        &self,
        topic: &str,
        after: usize,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        wait_for(timeout, || {
            self.on(topic)
                .into_iter()
                .skip(after)
                .filter_map(|m| serde_json::from_str::<serde_json::Value>(&m.payload).ok())
                .find(|v| pred(v))
        })
    }

    pub fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .unwrap();
    }
}

/// A bound datagram socket collecting sd_notify messages.
pub struct Notify {
    pub path: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Notify {
    pub fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind NOTIFY_SOCKET");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let mut l = l.lock().unwrap();
                for line in text.lines() {
                    l.push(line.to_string());
                }
            }
        });
        Notify { path, lines }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }

    pub fn wait(&self, line: &str, timeout: Duration) -> bool {
        wait_for(timeout, || {
            self.lines().iter().any(|l| l == line).then_some(())
        })
        .is_some()
    }

    /// Waits until `line` has been seen more than `n` times.
    pub fn wait_more(&self, line: &str, n: usize, timeout: Duration) -> bool {
        wait_for(timeout, || (self.count(line) > n).then_some(())).is_some()
    }
}

/// Writes a 24 kHz mono 16-bit WAV of [`voice`].
pub fn write_voice_wav(path: &Path, seconds: f32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 24_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for x in voice(seconds) {
        w.write_sample(x).unwrap();
    }
    w.finalize().unwrap();
}

/// Writes raw S16_LE 24 kHz mono (an ALSA `file` PCM's infile) of [`voice`].
pub fn write_voice_raw(path: &Path, seconds: f32) {
    let bytes: Vec<u8> = voice(seconds)
        .into_iter()
        .flat_map(i16::to_le_bytes)
        .collect();
    std::fs::write(path, bytes).unwrap();
}

/// Peak of raw S16_LE samples (an ALSA `file` PCM's output) and their count.
pub fn raw_peak(path: &Path) -> (usize, f32) {
    let b = std::fs::read(path).unwrap_or_default();
    let peak = b
        .chunks_exact(2)
        .map(|c| (i16::from_le_bytes([c[0], c[1]]) as f32 / 32768.0).abs())
        .fold(0.0f32, f32::max);
    (b.len() / 2, peak)
}

/// A voice-like signal (pulse train through a resonator, syllable envelope), loud enough
/// to be far from silence.
pub fn voice(seconds: f32) -> Vec<i16> {
    let mut out = Vec::new();
    let mut phase = 0.0f32;
    let mut res = 0.0f32;
    for i in 0..(seconds * 24_000.0) as usize {
        let t = i as f32 / 24_000.0;
        phase += (150.0 + 40.0 * (t * 1.3).sin()) / 24_000.0;
        let pulse = if phase >= 1.0 {
            phase -= 1.0;
            1.0
        } else {
            0.0
        };
        res = 0.97 * res + pulse;
        let env = 0.5 + 0.5 * (t * 9.0).sin().abs();
        let x = (0.12 * res * env).clamp(-0.9, 0.9);
        out.push((x * 32767.0) as i16);
    }
    out
}

/// Peak absolute sample of a WAV file (any format hound reads).
pub fn wav_peak(path: &Path) -> (usize, f32) {
    let mut r = hound::WavReader::open(path).expect("speaker WAV exists");
    let spec = r.spec();
    let v: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().map(|s| s.unwrap()).collect(),
        hound::SampleFormat::Int => r
            .samples::<i32>()
            .map(|s| s.unwrap() as f32 / (1u32 << (spec.bits_per_sample - 1)) as f32)
            .collect(),
    };
    let peak = v.iter().fold(0.0f32, |a, &b| a.max(b.abs()));
    (v.len(), peak)
}

/// What a `moshid client` run gave: exit ok, its last stdout line as JSON (Null when that
/// is not JSON), its stderr.
pub fn client_result(o: &std::process::Output) -> (bool, serde_json::Value, String) {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let json = out
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (
        o.status.success(),
        json,
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// The daemon as a child process; killed on drop if still running.
pub struct Daemon {
    pub child: Child,
    pub stderr: PathBuf,
}

impl Daemon {
    pub fn spawn(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Daemon {
        let stderr = dir.join("moshid.stderr");
        let mut cmd = moshid_cmd();
        cmd.args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .env("MOSHID_LOG", "debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon {
            child: cmd.spawn().expect("start moshid"),
            stderr,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Resets the peak RSS (`VmHWM`) to the current RSS (Linux `clear_refs` 5); false where
    /// that is not allowed (some containers).
    pub fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").is_ok()
            && self.mem("VmHWM") <= self.mem("VmRSS") + (4 << 20)
    }

    /// A `/proc/PID/status` figure in bytes, e.g. `VmHWM` (peak RSS) or `VmRSS`.
    pub fn mem(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig})");
    }

    /// Waits for exit up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_for(timeout, || self.child.try_wait().ok().flatten())
    }

    /// Waits until the log contains `needle`, up to `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_for(timeout, || self.log().contains(needle).then_some(())).is_some()
    }

    /// SIGTERM, then asserts a successful exit within `timeout` (the log on failure).
    pub fn terminate(&mut self, timeout: Duration) {
        self.signal(libc::SIGTERM);
        let st = self.wait_exit(timeout);
        assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A directory shared by all tests for the cached demo model (built once).
pub fn model_cache() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("moshid-e2e-cache");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs a command, panicking with its stderr when it fails.
pub fn sh(cmd: &str, args: &[&str], dir: &Path) {
    let o = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (scripts/setup.sh installs it)"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate (openssl CLI).
/// Readable by all: mosquitto started as root drops to its own user before loading them.
pub fn make_certs(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=moshid test CA",
    ]);
    a.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    sh("openssl", &a, dir);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let mut r = vec!["req"];
        r.extend(ec);
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let extf = format!("{name}.ext");
        let subj = format!("/CN=moshid-{name}");
        r.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        sh("openssl", &r, dir);
        sh(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extf,
            ],
            dir,
        );
    }
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}
