"""Runs Kyutai's own `moshi.client` (PyPI moshi 0.2.13) headless against a server.

moshi.client needs a sound card (sounddevice/PortAudio) and its package imports torch; this
script loads `moshi/client.py` itself without the package's __init__ (no torch), and gives
it a fake `sounddevice` whose input stream plays a WAV in real time (1920-sample blocks, as
the real one) and whose output stream collects what the client would have played. The
Connection, its sphn Opus writer/reader and its aiohttp WebSocket are Kyutai's code, as is.

A manual check (not in CI: it needs PyPI), e.g. against `moshid demo --web`:

    python3 -m venv /tmp/kyutai && /tmp/kyutai/bin/pip install --no-deps moshi==0.2.13
    /tmp/kyutai/bin/pip install "sphn>=0.2,<0.3" "aiohttp>=3.10.5,<3.12" "numpy>=1.26,<2.3"
    SSL_CERT_FILE=STATE_DIR/web-cert.pem /tmp/kyutai/bin/python \
        tests/kyutai/moshi_client_headless.py wss://localhost:8998 IN.wav 10 OUT.wav

URL is moshi.client's --url; IN.wav is 24 kHz mono S16. moshi.client verifies certificates:
SSL_CERT_FILE points it at moshid's self-signed one. Prints one JSON line (audio_s,
audio_rms_dbfs, first_audio_s, text, the client's log).
"""
import asyncio, importlib.util, json, sys, threading, time, types, wave
import numpy as np

url, wav_in, seconds, wav_out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]

with wave.open(wav_in) as w:
    assert w.getframerate() == 24000 and w.getnchannels() == 1 and w.getsampwidth() == 2
    pcm_in = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768

played = []
t_first_audio = None

class _Stream:
    def __init__(self, samplerate, channels, blocksize, callback):
        self.n, self.ch, self.cb = blocksize, channels, callback
        self.stop = False
    def __enter__(self):
        threading.Thread(target=self._run, daemon=True).start()
        return self
    def __exit__(self, *a):
        self.stop = True

class InputStream(_Stream):
    def _run(self):
        t0, i = time.monotonic(), 0
        while not self.stop:
            block = pcm_in[i * self.n:(i + 1) * self.n]
            block = np.pad(block, (0, self.n - len(block)))
            self.cb(block.reshape(self.n, 1).copy(), self.n, None, None)
            i += 1
            time.sleep(max(0.0, t0 + i * self.n / 24000 - time.monotonic()))

class OutputStream(_Stream):
    def _run(self):
        t0, i = time.monotonic(), 0
        while not self.stop:
            out = np.zeros((self.n, self.ch), dtype=np.float32)
            self.cb(out, self.n, None, None)
            played.append(out[:, 0].copy())
            i += 1
            time.sleep(max(0.0, t0 + i * self.n / 24000 - time.monotonic()))

sys.modules["sounddevice"] = types.SimpleNamespace(InputStream=InputStream, OutputStream=OutputStream)
spec = importlib.util.find_spec("moshi")  # locates the package without importing it
pkg = types.ModuleType("moshi"); pkg.__path__ = list(spec.submodule_search_locations)
sys.modules["moshi"] = pkg
import moshi.client as mc  # noqa: E402
from moshi.client_utils import RawPrinter  # noqa: E402

text, logs = [], []
class Capture(RawPrinter):
    def print_token(self, token, color=None):
        text.append(token)
    def log(self, level, msg):
        logs.append(f"{level}: {msg}")
    def print_lag(self):
        pass
    def print_pending(self):
        pass

orig_decode = mc.Connection._decode
async def decode(self, pcm):
    global t_first_audio
    if t_first_audio is None and pcm.shape[-1] > 0:
        t_first_audio = time.monotonic()
    await orig_decode(self, pcm)
mc.Connection._decode = decode

args = types.SimpleNamespace(url=url, host=None, port=None, https=False)
t0 = time.monotonic()
async def main():
    try:
        await asyncio.wait_for(mc.run(Capture(), args), seconds)
    except asyncio.TimeoutError:
        logs.append("info: stopped after %.1f s" % seconds)
asyncio.run(main())
out = np.concatenate(played) if played else np.zeros(0, np.float32)
# Skip the leading silence the fake output plays before the first reply.
nz = np.flatnonzero(np.abs(out) > 1e-6)
heard = out[nz[0]:] if len(nz) else out[:0]
with wave.open(wav_out, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(24000)
    w.writeframes((np.clip(heard, -1, 1) * 32767).astype("<i2").tobytes())
rms = float(np.sqrt(np.mean(heard ** 2))) if len(heard) else 0.0
print(json.dumps({
    "client": "moshi.client (PyPI moshi 0.2.13), sounddevice faked",
    "audio_s": round(len(heard) / 24000, 2),
    "audio_rms_dbfs": round(20 * np.log10(max(rms, 1e-9)), 1),
    "first_audio_s": None if t_first_audio is None else round(t_first_audio - t0, 3),
    "text": "".join(text).strip(),
    "logs": logs[:12],
}))
