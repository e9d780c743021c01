// Audio worklets of moshid's page: the microphone tap and the player.

// Posts the microphone's samples (mono, the context's rate) in blocks of 10 ms or so.
class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.buf = new Float32Array(Math.round(sampleRate / 100));
    this.n = 0;
  }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      for (let i = 0; i < ch.length; i++) {
        this.buf[this.n++] = ch[i];
        if (this.n === this.buf.length) {
          this.port.postMessage(this.buf.slice(0));
          this.n = 0;
        }
      }
    }
    return true;
  }
}

// Plays what it is sent; drops the oldest audio when more than maxSeconds wait (the lag
// control Kyutai's player has), and reports the level and count of what it played.
class Player extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];
    this.queued = 0;
    this.offset = 0;
    this.max = Math.round(sampleRate * 0.5);
    this.played = 0;
    this.energy = 0;
    this.dropped = 0;
    this.port.onmessage = (e) => {
      if (e.data === 'reset') { this.queue = []; this.queued = 0; this.offset = 0; return; }
      this.queue.push(e.data);
      this.queued += e.data.length;
      while (this.queued - this.offset > this.max && this.queue.length > 1) {
        const old = this.queue.shift();
        this.queued -= old.length;
        this.dropped += old.length - this.offset;
        this.offset = 0;
      }
    };
  }
  process(_inputs, outputs) {
    const out = outputs[0][0];
    let e = 0;
    for (let i = 0; i < out.length; i++) {
      let v = 0;
      if (this.queue.length) {
        const head = this.queue[0];
        v = head[this.offset++];
        if (this.offset >= head.length) {
          this.queue.shift();
          this.queued -= head.length;
          this.offset = 0;
        }
        this.played++;
      }
      out[i] = v;
      e += v * v;
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.energy += e;
    if ((currentFrame / out.length) % 25 === 0) {
      this.port.postMessage({ played: this.played, energy: this.energy, dropped: this.dropped,
        rms: Math.sqrt(e / out.length) });
    }
    return true;
  }
}

registerProcessor('moshid-capture', Capture);
registerProcessor('moshid-player', Player);
