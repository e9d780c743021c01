// moshid's page: Kyutai's /api/chat protocol in the browser. Opus through WebCodecs
// (AudioEncoder/AudioDecoder), Ogg pages written and read here, the microphone with the
// browser's echo cancellation and noise suppression. No libraries, no build step.
'use strict';

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const kiosk = query.get('kiosk') === '1';
if (kiosk) document.body.classList.add('kiosk');

// What the browser test reads.
const stats = window.moshidStats = {
  handshake: false, metadata: null, text: '', played: 0, energy: 0, sent: 0, errors: [],
  // The kiosk: the room's state as shown, and the wake-word flashes.
  room: null, indicator: '', flashes: 0,
};

// ---- Ogg ---------------------------------------------------------------------------------
const CRC = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let r = i << 24;
    for (let k = 0; k < 8; k++) r = (r & 0x80000000) ? ((r << 1) ^ 0x04c11db7) : (r << 1);
    t[i] = r >>> 0;
  }
  return t;
})();
function crc32(bytes) {
  let c = 0;
  for (let i = 0; i < bytes.length; i++) c = ((c << 8) ^ CRC[((c >>> 24) ^ bytes[i]) & 255]) >>> 0;
  return c >>> 0;
}

class OggWriter {
  constructor() { this.serial = (Math.random() * 2 ** 32) >>> 0; this.seq = 0; this.granule = 0; }
  page(packet, samples48k, flags) {
    this.granule += samples48k;
    const nseg = Math.floor(packet.length / 255) + 1;
    const p = new Uint8Array(27 + nseg + packet.length);
    const v = new DataView(p.buffer);
    p.set([0x4f, 0x67, 0x67, 0x53, 0, flags]);
    v.setUint32(6, this.granule >>> 0, true);
    v.setUint32(10, Math.floor(this.granule / 2 ** 32), true);
    v.setUint32(14, this.serial, true);
    v.setUint32(18, this.seq++, true);
    p[26] = nseg;
    for (let i = 0; i < nseg - 1; i++) p[27 + i] = 255;
    p[27 + nseg - 1] = packet.length % 255;
    p.set(packet, 27 + nseg);
    v.setUint32(22, crc32(p), true);
    return p;
  }
}

function opusHead(rate) {
  const h = new Uint8Array(19);
  const v = new DataView(h.buffer);
  h.set([...'OpusHead'].map((c) => c.charCodeAt(0)));
  h[8] = 1; h[9] = 1; v.setUint16(10, 312, true); v.setUint32(12, rate, true);
  return h;
}
function opusTags() {
  const vendor = new TextEncoder().encode('moshid page');
  const t = new Uint8Array(16 + vendor.length);
  t.set([...'OpusTags'].map((c) => c.charCodeAt(0)));
  new DataView(t.buffer).setUint32(8, vendor.length, true);
  t.set(vendor, 12);
  return t;
}

// Packets of the pages in one message (servers send whole pages).
function* oggPackets(bytes) {
  let at = 0;
  let partial = [];
  while (at + 27 <= bytes.length) {
    if (bytes[at] !== 0x4f || bytes[at + 1] !== 0x67 || bytes[at + 2] !== 0x67 || bytes[at + 3] !== 0x53) { at++; continue; }
    const nseg = bytes[at + 26];
    let body = at + 27 + nseg;
    for (let i = 0; i < nseg; i++) {
      const len = bytes[at + 27 + i];
      partial.push(bytes.subarray(body, body + len));
      body += len;
      if (len < 255) {
        const size = partial.reduce((a, b) => a + b.length, 0);
        const pkt = new Uint8Array(size);
        let o = 0;
        for (const s of partial) { pkt.set(s, o); o += s.length; }
        partial = [];
        yield pkt;
      }
    }
    at = body;
  }
}

const isHeader = (p) => p.length >= 8 && String.fromCharCode(...p.subarray(0, 8)).startsWith('Opus');

// ---- resampling (linear; only when a rate is not one Opus or the context takes) ----------
function resample(x, from, to) {
  if (from === to) return x;
  const n = Math.floor(x.length * to / from);
  const y = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const t = i * from / to;
    const k = Math.floor(t);
    const f = t - k;
    y[i] = (x[k] || 0) * (1 - f) + (x[k + 1] !== undefined ? x[k + 1] : (x[k] || 0)) * f;
  }
  return y;
}

// ---- the session -------------------------------------------------------------------------
let session = null;

function setConn(text, cls) { const c = $('conn'); c.textContent = text; c.className = 'badge ' + (cls || ''); }
function say(text) { $('message').textContent = text; }

function chatUrl() {
  const u = new URL('/api/chat', location.href);
  u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  // Kyutai's web client sends these; moshid applies the sampling ones to the session.
  for (const k of ['text_temperature', 'text_topk', 'audio_temperature', 'audio_topk', 'text_seed', 'audio_seed']) {
    if (query.has(k)) u.searchParams.set(k, query.get(k));
  }
  if (query.has('token')) u.searchParams.set('token', query.get('token'));
  // A persona (PersonaPlex): the one chosen, else NVIDIA's prompts given in the page's URL.
  const persona = $('persona').value;
  if (persona) u.searchParams.set('persona', persona);
  else for (const k of ['voice_prompt', 'text_prompt']) {
    if (query.has(k)) u.searchParams.set(k, query.get(k));
  }
  return u.toString();
}

// The configured personas (/api/personas), offered for the next session; hidden without any.
async function loadPersonas() {
  try {
    const r = await fetch('/api/personas');
    if (!r.ok) return;
    const { personas } = await r.json();
    const sel = $('persona');
    for (const p of personas) sel.add(new Option(p, p));
    if (query.has('persona')) sel.value = query.get('persona');
    for (const id of ['persona-label', 'persona-row']) $(id).hidden = personas.length === 0;
  } catch (_) { /* a daemon without personas: no select */ }
}

async function start() {
  if (!('AudioEncoder' in window) || !('AudioDecoder' in window)) {
    say('This browser has no WebCodecs audio (needed for Opus): use a current Chromium or Firefox.');
    return;
  }
  if (!window.isSecureContext) {
    say('The microphone needs https (or http on localhost).');
    return;
  }
  $('talk').disabled = true; $('stop').disabled = false;
  $('transcript').textContent = '';
  const ctx = new AudioContext();
  await ctx.audioWorklet.addModule('/worklet.js');
  const player = new AudioWorkletNode(ctx, 'moshid-player', { outputChannelCount: [1] });
  player.connect(ctx.destination);
  player.port.onmessage = (e) => {
    stats.played = e.data.played; stats.energy = e.data.energy;
    $('level').style.width = Math.min(100, e.data.rms * 400) + '%';
  };
  const ws = new WebSocket(chatUrl());
  ws.binaryType = 'arraybuffer';
  session = { ctx, player, ws, mic: null, encoder: null, decoder: null };
  setConn('waiting for a slot...', 'wait');
  ws.onmessage = (e) => onMessage(new Uint8Array(e.data));
  ws.onclose = () => stop('connection closed');
  ws.onerror = () => say('WebSocket error');
}

function onMessage(m) {
  const kind = m[0];
  const payload = m.subarray(1);
  if (kind === 0) {
    stats.handshake = true;
    setConn('talking', 'live');
    startMic().catch((e) => { say('microphone: ' + e); stop(); });
  } else if (kind === 1) {
    decode(payload);
  } else if (kind === 2 || kind === 7) {
    const t = new TextDecoder().decode(kind === 7 ? payload.subarray(1) : payload);
    stats.text += t;
    $('transcript').textContent += t;
    $('transcript').scrollTop = 1e9;
  } else if (kind === 4) {
    try {
      stats.metadata = JSON.parse(new TextDecoder().decode(payload));
      $('server').textContent = stats.metadata.instance_name + ' - ' + stats.metadata.lm_model_file;
    } catch (_) { /* not JSON: ignore */ }
  } else if (kind === 5) {
    const t = new TextDecoder().decode(payload);
    stats.errors.push(t);
    setConn('error', 'error');
    say(t);
  }
}

function decode(payload) {
  const s = session;
  if (!s) return;
  if (!s.decoder) {
    s.decoder = new AudioDecoder({
      output: (d) => {
        const x = new Float32Array(d.numberOfFrames);
        d.copyTo(x, { planeIndex: 0, format: 'f32-planar' });
        s.player.port.postMessage(resample(x, d.sampleRate, s.ctx.sampleRate));
        d.close();
      },
      error: (e) => say('decoder: ' + e),
    });
    s.decoder.configure({ codec: 'opus', sampleRate: 48000, numberOfChannels: 1 });
    s.ts = 0;
  }
  for (const p of oggPackets(payload)) {
    if (isHeader(p) || p.length === 0) continue;
    s.decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: s.ts, data: p }));
    s.ts += 20000;
  }
}

const OPUS_RATES = [8000, 12000, 16000, 24000, 48000];

async function startMic() {
  const s = session;
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
  });
  s.mic = stream;
  const rate = OPUS_RATES.includes(s.ctx.sampleRate) ? s.ctx.sampleRate : 48000;
  const ogg = new OggWriter();
  let first = true;
  s.encoder = new AudioEncoder({
    output: (chunk) => {
      const pkt = new Uint8Array(chunk.byteLength);
      chunk.copyTo(pkt);
      const pages = [];
      if (first) {
        pages.push(ogg.page(opusHead(rate), 0, 2), ogg.page(opusTags(), 0, 0));
        first = false;
      }
      pages.push(ogg.page(pkt, Math.round((chunk.duration || 20000) * 48 / 1000), 0));
      const size = pages.reduce((a, p) => a + p.length, 1);
      const msg = new Uint8Array(size);
      msg[0] = 1;
      let o = 1;
      for (const p of pages) { msg.set(p, o); o += p.length; }
      if (s.ws.readyState === WebSocket.OPEN) { s.ws.send(msg); stats.sent++; }
    },
    error: (e) => say('encoder: ' + e),
  });
  s.encoder.configure({ codec: 'opus', sampleRate: rate, numberOfChannels: 1, bitrate: 32000,
    opus: { frameDuration: 20000 } });
  const src = s.ctx.createMediaStreamSource(stream);
  const tap = new AudioWorkletNode(s.ctx, 'moshid-capture');
  src.connect(tap);
  let ts = 0;
  tap.port.onmessage = (e) => {
    if (!s.encoder || s.encoder.state !== 'configured') return;
    const x = resample(e.data, s.ctx.sampleRate, rate);
    const d = new AudioData({ format: 'f32-planar', sampleRate: rate, numberOfFrames: x.length,
      numberOfChannels: 1, timestamp: ts, data: x });
    ts += Math.round(x.length * 1e6 / rate);
    s.encoder.encode(d);
    d.close();
  };
  s.tap = tap;
}

function stop(why) {
  const s = session;
  session = null;
  if (!s) return;
  try { if (s.ws.readyState <= 1) s.ws.close(); } catch (_) { /* closing anyway */ }
  if (s.mic) s.mic.getTracks().forEach((t) => t.stop());
  for (const c of [s.encoder, s.decoder]) { try { if (c && c.state !== 'closed') c.close(); } catch (_) { /* done */ } }
  s.ctx.close();
  $('talk').disabled = false; $('stop').disabled = true;
  if (!$('conn').classList.contains('error')) setConn('not connected');
  if (why) say(why);
}

// ---- the device panel ---------------------------------------------------------------------
async function control(q) {
  const r = await fetch('/api/control?' + q, { method: 'POST' });
  if (!r.ok) say(await r.text()); else show(await r.json());
}

function show(st) {
  $('phase').textContent = st.phase || '?';
  // Who talks with the model now: the room and each web session (the demo: its clients).
  const who = st.endpoints || (st.clients || []).map((c) => 'web ' + c);
  $('endpoint').textContent = who.length ? who.length + ' (' + who.join(', ') + ')' : 'none';
  $('mute').textContent = st.muted ? 'Unmute' : 'Mute';
  $('mute').dataset.muted = st.muted ? '1' : '0';
  if (document.activeElement !== $('volume')) $('volume').value = st.volume;
  const lat = st.latency_ms !== undefined ? st.latency_ms : st.step_ms;
  $('latency').textContent = lat !== undefined ? Math.round(lat) + ' ms' : '?';
  $('dropped').textContent = [st.dropped_frames, st.web_dropped_input, st.web_dropped_output]
    .filter((v) => v !== undefined).join(' / ');
  const voices = st.voices || [st.voice];
  const sel = $('voice');
  if (sel.options.length !== voices.length) {
    sel.innerHTML = '';
    for (const v of voices) sel.add(new Option(v, v));
  }
  sel.value = st.voice;
  if (kiosk) {
    room.phase = st.phase;
    room.input = st.input_dbfs;
    room.wakeWord = st.wake_word || null;
    indicate();
  }
}

async function poll() {
  try {
    const r = await fetch('/api/state');
    if (r.ok) show(await r.json());
  } catch (_) { /* the device is restarting: try again */ }
  setTimeout(poll, kiosk ? 500 : 1000);
}

// ---- the kiosk: the room's conversation (/api/room) -----------------------------------------
const room = { since: 0, conversation: null, wakes: null, phase: 'loading', input: -120,
  output: -120, wakeWord: null, here: true };
// Above this output level Moshi is speaking (dBFS; silence is -120, speech around -30).
const SPEAKING_DBFS = -50;

async function roomPoll() {
  try {
    const r = await fetch('/api/room?since=' + room.since);
    if (r.ok) showRoom(await r.json());
    else if (r.status === 404) noRoom();
  } catch (_) { /* the device is restarting: try again */ }
  if (room.here) setTimeout(roomPoll, 250);
}

// The offline demo has no room: the kiosk's Talk and Stop run a browser session as elsewhere.
function noRoom() {
  room.here = false;
  document.body.classList.add('no-room');
  $('talk').disabled = !!session; $('stop').disabled = !session;
  say('No room on this server: Talk starts a browser session.');
}

function showRoom(v) {
  const t = $('transcript');
  if (v.conversation !== room.conversation) { t.textContent = ''; room.conversation = v.conversation; }
  if (v.text) {
    t.textContent = (t.textContent + v.text).slice(-4000);
    t.scrollTop = 1e9;
  }
  room.since = v.next;
  if (room.wakes !== null && v.wakes > room.wakes) flash();
  room.wakes = v.wakes;
  room.output = v.output_dbfs;
  stats.room = v;
  indicate();
}

function wakeName(w) { return w.split('_').map((x) => x.charAt(0).toUpperCase() + x.slice(1)).join(' '); }

// Who speaks, from the phase and the levels; Talk and Stop follow the phase.
function indicate() {
  if (!room.here) return;
  const live = room.phase === 'conversation';
  let text = room.wakeWord ? 'Say \u201c' + wakeName(room.wakeWord) + '\u201d or press Talk' : 'Press Talk to start';
  let cls = 'idle';
  if (room.phase === 'loading' || room.phase === 'error') text = room.phase === 'error' ? 'Error: see the device' : 'Starting...';
  else if (live && room.output > SPEAKING_DBFS) { text = 'Moshi is speaking'; cls = 'speaking'; }
  else if (live) { text = 'Listening'; cls = 'listening'; }
  const el = $('indicator');
  el.textContent = text;
  el.className = 'indicator ' + cls;
  stats.indicator = cls;
  $('talk').disabled = live; $('stop').disabled = !live;
  const level = cls === 'speaking' ? room.output : room.input;
  $('level').style.width = Math.max(0, Math.min(100, (level + 60) * 100 / 60)) + '%';
}

function flash() {
  const f = $('flash');
  f.classList.add('on');
  stats.flashes++;
  setTimeout(() => f.classList.remove('on'), 1200);
}

async function roomControl(on) {
  try {
    const r = await fetch('/api/room?conversation=' + (on ? 1 : 0), { method: 'POST' });
    if (!r.ok) { say(await r.text()); return; }
    say('');
    room.phase = on ? 'conversation' : 'idle';
    indicate();
  } catch (e) { say('the device did not answer: ' + e); }
}

$('talk').onclick = () => {
  if (kiosk && room.here) { roomControl(true); return; }
  start().catch((e) => { say(String(e)); stop(); });
};
$('stop').onclick = () => { if (kiosk && room.here) roomControl(false); else stop(); };
$('mute').onclick = () => control('mute=' + ($('mute').dataset.muted === '1' ? '0' : '1'));
$('volume').onchange = () => control('volume=' + $('volume').value);
$('voice').onchange = () => control('voice=' + encodeURIComponent($('voice').value));
poll();
loadPersonas();
if (kiosk) roomPoll();
