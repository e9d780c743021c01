#!/usr/bin/env python3
"""The soak and fault run behind scripts/soak.sh (read that first).

`moshid run` with the demo model on ALSA `file` PCMs (a synthetic voice in, the speaker to a
file), a private mosquitto, NOTIFY_SOCKET as a Unix datagram socket read here, WatchdogSec=10.
Meanwhile, at random: MQTT commands (valid, malformed, oversized), the broker killed with
SIGKILL and restarted without persistence, SIGHUP reloads, and (when `moshid run` serves the
web endpoint) `moshid client` sessions. Every second: RSS, threads, open fds. Fails on a growth
trend, a lost retained state after a broker restart, a reload without READY=1, a watchdog gap
over half of WatchdogSec, an `offline` between a connect and `online`, or a daemon that died.
Only the standard library; mosquitto and mosquitto_sub/pub as in scripts/setup.sh.
"""

import math
import os
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

WATCHDOG_S = 10.0
DEVICE = "soak"
BASE = f"moshid/{DEVICE}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_voice(path, seconds, rate=24000):
    """A voice-like S16 signal (a gliding pulse train through two formants, in syllables):
    30 s made once, repeated to `seconds`."""
    phase = f1 = f2 = 0.0
    block = []
    for i in range(30 * rate):
        t = i / rate
        phase += (170 + 50 * math.sin(t * 0.7)) / rate
        pulse = 0.0
        if phase >= 1.0:
            phase -= 1.0
            pulse = 1.0
        f1 = 0.95 * f1 + pulse
        f2 = 0.8 * f2 - 0.5 * pulse
        syl = max(math.sin(t * 4 * math.pi), 0.0) ** 0.5
        speaking = 1.0 if (t % 3.0) < 2.4 else 0.0
        block.append(int(max(-1, min(1, 0.15 * (f1 + f2) * syl * speaking)) * 32767))
    data = struct.pack(f"<{len(block)}h", *block)
    with open(path, "wb") as f:
        for _ in range(int(seconds // 30) + 1):
            f.write(data)


class Broker:
    """mosquitto on a fixed port, no persistence: a restart forgets every retained message."""

    def __init__(self, d, port):
        self.conf = os.path.join(d, "mosquitto.conf")
        self.log = os.path.join(d, "mosquitto.log")
        self.port = port
        self.proc = None
        with open(self.conf, "w") as f:
            f.write(f"persistence false\nlistener {port} 127.0.0.1\nallow_anonymous true\n")

    def start(self):
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", self.conf],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "a"),
        )
        end = time.time() + 10
        while time.time() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("soak: mosquitto did not start")

    def kill(self):
        if self.proc:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None


class Notify:
    """NOTIFY_SOCKET: every datagram line with its arrival time."""

    def __init__(self, d):
        self.path = os.path.join(d, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.lines = []
        self.lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            data = self.sock.recv(65536).decode("utf-8", "replace")
            now = time.time()
            with self.lock:
                self.lines.extend((now, l) for l in data.splitlines())

    def since(self, t0, line):
        with self.lock:
            return [t for t, l in self.lines if t >= t0 and l == line]


class Observer:
    """mosquitto_sub on moshid/soak/#, restarted whenever it exits (broker restarts)."""

    def __init__(self, port):
        self.port = port
        self.msgs = []
        self.lock = threading.Lock()
        self.proc = None
        self.stopped = False
        threading.Thread(target=self._run, daemon=True).start()

    def stop(self):
        self.stopped = True
        if self.proc:
            self.proc.terminate()

    def _run(self):
        while not self.stopped:
            self.proc = p = subprocess.Popen(
                ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.port), "-v", "-t", f"{BASE}/#",
                 "-i", "soak-observer"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, errors="replace",
            )
            for line in p.stdout:
                topic, _, payload = line.rstrip("\n").partition(" ")
                with self.lock:
                    self.msgs.append((time.time(), topic, payload))
            p.wait()
            time.sleep(0.2)

    def on(self, topic, t0):
        with self.lock:
            return [(t, p) for t, tp, p in self.msgs if tp == f"{BASE}/{topic}" and t >= t0]


def retained(port, timeout=2):
    """The retained availability and state as a fresh subscriber sees them."""
    out = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-v", "--retained-only",
         "-W", str(timeout), "-t", f"{BASE}/availability", "-t", f"{BASE}/state"],
        capture_output=True, text=True, errors="replace",
    ).stdout
    got = {}
    for line in out.splitlines():
        topic, _, payload = line.partition(" ")
        got[topic.rsplit("/", 1)[-1]] = payload
    return got


def publish(port, topic, payload):
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", f"{BASE}/{topic}", "-m", payload],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def proc_sample(pid):
    status = open(f"/proc/{pid}/status").read()
    field = lambda k: int(next(l for l in status.splitlines() if l.startswith(k)).split()[1])
    return field("VmRSS:") * 1024, field("Threads:"), len(os.listdir(f"/proc/{pid}/fd"))


COMMANDS = [
    ("set/conversation", lambda: random.choice(["ON", "OFF"])),
    ("set/mute", lambda: random.choice(["ON", "OFF", "on", "off"])),
    ("set/volume", lambda: str(random.randint(0, 100))),
    ("set/voice", lambda: random.choice(["moshiko", "moshika"])),
    ("set/reset", lambda: ""),
    ("set/volume", lambda: random.choice(["NaN", "-3", "1e9", "loud", ""])),
    ("set/nonsense", lambda: "x"),
    ("set/voice", lambda: "v" * 5000),
]


class Soak:
    def __init__(self, minutes, binary):
        self.minutes = minutes
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="moshid-soak-")
        self.port = free_port()
        self.failures = []
        self.samples = []
        self.counts = {"commands": 0, "broker restarts": 0, "SIGHUPs": 0, "web sessions": 0}
        self.web_port = None

    def fail(self, why):
        print(f"soak: FAIL: {why}", flush=True)
        self.failures.append(why)

    def setup(self):
        d = self.dir
        write_voice(os.path.join(d, "mic.raw"), self.minutes * 60 + 180)
        with open(os.path.join(d, "asound.conf"), "w") as f:
            f.write(
                f'pcm.mic {{ type file; slave.pcm "null"; file "/dev/null"; infile "{d}/mic.raw"; format "raw" }}\n'
                f'pcm.spk {{ type file; slave.pcm "null"; file "{d}/spk.raw"; format "raw" }}\n'
            )
        web = '[web]\nenabled = false\n'
        if os.environ.get("SOAK_WEB") != "0":
            self.web_port = free_port()
            web = (f'[web]\nenabled = true\nlisten = "127.0.0.1:{self.web_port}"\ntls = "off"\n'
                   f'state_dir = "{d}/state"\n')
        with open(os.path.join(d, "config.toml"), "w") as f:
            f.write(
                f'device_id = "{DEVICE}"\ncache_dir = "{d}/cache"\nautostart = false\nidle_timeout_s = 0\n'
                '[model]\nsource = "demo"\n'
                '[audio]\ncapture = "mic"\nplayback = "spk"\nrate = 24000\nformat = "S16"\npace = true\n'
                '[aec]\nenabled = true\n'
                f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {self.port}\nkeepalive_s = 5\n'
                + web
            )

    def start(self):
        self.broker = Broker(self.dir, self.port)
        self.broker.start()
        self.notify = Notify(self.dir)
        self.obs = Observer(self.port)
        time.sleep(0.5)
        env = dict(os.environ)
        env.update({
            "NOTIFY_SOCKET": self.notify.path,
            "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6)),
            "ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{self.dir}/asound.conf",
            "MOSHID_LOG": "info",
        })
        self.log = os.path.join(self.dir, "moshid.log")
        self.t0 = time.time()
        self.daemon = subprocess.Popen(
            [self.binary, "run", "--config", os.path.join(self.dir, "config.toml")],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"),
        )
        end = time.time() + 300
        while not self.notify.since(self.t0, "READY=1"):
            if time.time() > end or self.daemon.poll() is not None:
                raise SystemExit(f"soak: moshid did not become ready; see {self.log}")
            time.sleep(0.2)
        print(f"soak: ready after {time.time() - self.t0:.1f} s; {self.minutes} min; files in {self.dir}",
              flush=True)
        publish(self.port, "set/conversation", "ON")

    def restart_broker(self):
        self.broker.kill()
        time.sleep(random.uniform(0.5, 5))
        t = time.time()
        self.broker.start()
        self.counts["broker restarts"] += 1
        # Within 10 s the daemon has reconnected and put back what a restart forgot.
        end = t + 10
        got = {}
        while time.time() < end:
            got = retained(self.port, 1)
            if got.get("availability") == "online" and "state" in got:
                break
        if got.get("availability") != "online" or "state" not in got:
            self.fail(f"retained state lost after broker restart at +{t - self.t0:.0f} s: {got}")
        self.check_no_offline_before_online(t)

    def check_no_offline_before_online(self, t):
        seq = [p for _, p in self.obs.on("availability", t)]
        first_online = seq.index("online") if "online" in seq else len(seq)
        if "offline" in seq[:first_online]:
            self.fail(f"`offline` before `online` after the reconnect at +{t - self.t0:.0f} s: {seq}")

    def reload(self):
        t = time.time()
        self.daemon.send_signal(signal.SIGHUP)
        self.counts["SIGHUPs"] += 1
        end = t + 20
        while not self.notify.since(t, "READY=1"):
            if time.time() > end:
                self.fail(f"no READY=1 within 20 s of the SIGHUP at +{t - self.t0:.0f} s")
                return
            time.sleep(0.1)

    def web_session(self):
        wav = os.path.join(self.dir, "client-in.wav")
        if not os.path.exists(wav):
            import wave
            with wave.open(wav, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(24000)
                w.writeframes(open(os.path.join(self.dir, "mic.raw"), "rb").read(24000 * 2 * 3))
        r = subprocess.run(
            [self.binary, "client", "--url", f"ws://127.0.0.1:{self.web_port}/api/chat", "--input", wav,
             "--output", os.path.join(self.dir, "client-out.wav")],
            stdout=subprocess.DEVNULL, capture_output=False, stderr=subprocess.PIPE, text=True,
            timeout=60,
        )
        self.counts["web sessions"] += 1
        if r.returncode != 0:
            self.fail(f"web session failed at +{time.time() - self.t0:.0f} s: {r.stderr[-300:]}")

    def act(self):
        # SOAK_FAULTS scales how often the broker restarts, reloads and web sessions come.
        r = random.random() / float(os.environ.get("SOAK_FAULTS", "1"))
        if r < 0.004:
            self.restart_broker()
        elif r < 0.009:
            self.reload()
        elif r < 0.015 and self.web_port:
            self.web_session()
        elif r < 0.4:
            topic, payload = random.choice(COMMANDS)
            publish(self.port, topic, payload())
            self.counts["commands"] += 1

    def loop(self):
        end = self.t0 + self.minutes * 60
        while time.time() < end:
            if self.daemon.poll() is not None:
                self.fail(f"moshid exited with {self.daemon.returncode} at +{time.time() - self.t0:.0f} s")
                return
            self.samples.append((time.time() - self.t0,) + proc_sample(self.daemon.pid))
            self.act()
            time.sleep(max(0.0, 1.0 - (time.time() - self.t0) % 1.0))

    def stop(self):
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                rc = self.daemon.wait(5)
                if rc != 0:
                    self.fail(f"moshid exited with {rc} on SIGTERM")
            except subprocess.TimeoutExpired:
                self.fail("moshid did not exit within 5 s of SIGTERM")
                self.daemon.kill()
        self.broker.kill()
        self.obs.stop()

    def judge(self):
        """Growth: the last fifth against the second (the first is warm-up)."""
        n = len(self.samples)
        if n < 50:
            self.fail(f"only {n} samples")
            return {}
        fifth = n // 5
        early, late = self.samples[fifth:2 * fifth], self.samples[-fifth:]
        figs = {}
        for i, (name, slack) in enumerate([("rss", None), ("threads", 2), ("fds", 3)], start=1):
            a = statistics.median(s[i] for s in early)
            b = statistics.median(s[i] for s in late)
            figs[name] = (min(s[i] for s in self.samples), a, b, max(s[i] for s in self.samples))
            limit = a + (max(16 << 20, 0.05 * a) if slack is None else slack)
            if b > limit:
                self.fail(f"{name} grows: median {a:.0f} after warm-up, {b:.0f} at the end")
        wd = [t for t in self.notify.since(self.t0, "WATCHDOG=1")]
        ready = self.notify.since(self.t0, "READY=1")[0]
        wd = [t for t in wd if t >= ready]
        gaps = [b - a for a, b in zip(wd, wd[1:])] or [float("inf")]
        figs["watchdog"] = (len(wd), max(gaps))
        if max(gaps) > WATCHDOG_S / 2:
            self.fail(f"watchdog gap {max(gaps):.1f} s > {WATCHDOG_S / 2} s")
        errors = len(self.obs.on("error", self.t0))
        figs["errors"] = errors
        return figs

    def report(self, figs):
        mb = lambda b: f"{b / 2**20:.1f}"
        print(f"soak: {self.minutes} min, {len(self.samples)} samples; " +
              ", ".join(f"{v} {k}" for k, v in self.counts.items()))
        if "rss" in figs:
            lo, a, b, hi = figs["rss"]
            print(f"soak: RSS MiB min {mb(lo)}, after warm-up {mb(a)}, at the end {mb(b)}, max {mb(hi)}")
            for k in ("threads", "fds"):
                lo, a, b, hi = figs[k]
                print(f"soak: {k} min {lo}, after warm-up {a:.0f}, at the end {b:.0f}, max {hi}")
            n, gap = figs["watchdog"]
            print(f"soak: WATCHDOG=1 x{n}, longest gap {gap:.2f} s (limit {WATCHDOG_S / 2:.1f} s)")
            print(f"soak: {figs['errors']} messages on the error topic (malformed commands are sent)")
        if not self.web_port:
            print("soak: web clients skipped (SOAK_WEB=0)")
        print(f"soak: {'FAILED: ' + '; '.join(self.failures) if self.failures else 'OK'}")


def main():
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 30
    binary = sys.argv[2] if len(sys.argv) > 2 else "target/release/moshid"
    random.seed(int(os.environ.get("SOAK_SEED", "1")))
    s = Soak(minutes, os.path.abspath(binary))
    s.setup()
    s.start()
    try:
        s.check_no_offline_before_online(s.t0)
        s.loop()
    finally:
        s.stop()
    with open(os.path.join(s.dir, "samples.csv"), "w") as f:
        f.write("seconds,rss_bytes,threads,fds\n")
        for row in s.samples:
            f.write(",".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row) + "\n")
    figs = s.judge()
    s.report(figs)
    sys.exit(1 if s.failures else 0)


if __name__ == "__main__":
    main()
