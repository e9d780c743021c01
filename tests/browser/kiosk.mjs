// The kiosk screen against the appliance: `moshid run` (demo model, ALSA `file` PCMs as the
// room's microphone and speaker, the web endpoint on loopback) and headless Chromium at the
// kiosk sizes 800x480, 1024x600 and 1280x800. At each size: no horizontal or vertical
// overflow, Talk, Stop and the transcript on screen; a screenshot kiosk-WxH.png. At the
// smallest, Talk starts the room's conversation (its transcript appears, the indicator
// leaves idle) and Stop ends it. Usage: node kiosk.mjs MOSHID_BINARY OUT_DIR
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';

const [moshid, out] = process.argv.slice(2);
if (!moshid || !out) throw new Error('usage: node kiosk.mjs MOSHID OUT_DIR');
mkdirSync(out, { recursive: true });

const freePort = () => new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
});

// The room: 60 s of a quiet hum as the microphone (S16_LE 24 kHz mono), a speaker file.
const mic = Buffer.alloc(60 * 24000 * 2);
for (let i = 0; i < 60 * 24000; i++) mic.writeInt16LE(Math.round(800 * Math.sin(i * 2 * Math.PI * 220 / 24000)), i * 2);
writeFileSync(`${out}/mic.raw`, mic);
writeFileSync(`${out}/asound.conf`,
  `pcm.mic { type file; slave.pcm "null"; file "/dev/null"; infile "${out}/mic.raw"; format "raw" }\n` +
  `pcm.spk { type file; slave.pcm "null"; file "${out}/spk.raw"; format "raw" }\n`);
const port = await freePort();
writeFileSync(`${out}/config.toml`, `device_id = "kiosk"
cache_dir = "${out}/cache"
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
listen = "127.0.0.1:${port}"
state_dir = "${out}/state"
`);

const daemon = spawn(moshid, ['run', '--config', `${out}/config.toml`], {
  stdio: ['ignore', 'pipe', 'pipe'],
  env: { ...process.env, ALSA_CONFIG_PATH: `/usr/share/alsa/alsa.conf:${out}/asound.conf` },
});
let log = '';
daemon.stdout.on('data', (d) => { log += d; });
daemon.stderr.on('data', (d) => { log += d; });
let browser;
const fail = async (why) => {
  console.error(`kiosk test: FAILED: ${why}\n--- moshid:\n${log}`);
  daemon.kill();
  if (browser) await browser.close();
  process.exit(1);
};
const deadline = Date.now() + 120000;
while (!log.includes('web: serving') || !log.includes('ready:')) {
  if (Date.now() > deadline || daemon.exitCode !== null) await fail('moshid run did not serve');
  await new Promise((r) => setTimeout(r, 100));
}

browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--ignore-certificate-errors',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

/** Overflow and what is on screen, as the page lays it out. */
const layout = (page) => page.evaluate(() => {
  const on = (id) => {
    const r = document.getElementById(id).getBoundingClientRect();
    return r.width > 0 && r.height > 0 && r.left >= 0 && r.top >= 0
      && r.right <= innerWidth && r.bottom <= innerHeight;
  };
  const d = document.documentElement;
  return { scrollWidth: d.scrollWidth, innerWidth, scrollHeight: d.scrollHeight, innerHeight,
    talk: on('talk'), stop: on('stop'), transcript: on('transcript'), indicator: on('indicator') };
});

const result = { sizes: {} };
try {
  const page = await browser.newPage({ ignoreHTTPSErrors: true, viewport: { width: 800, height: 480 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`https://127.0.0.1:${port}/?kiosk=1`);
  await page.waitForFunction(() => window.moshidStats.room && window.moshidStats.indicator === 'idle',
    null, { timeout: 15000 }).catch(() => fail('the kiosk shows no idle room'));
  await page.click('#talk');
  await page.waitForFunction(() => {
    const s = window.moshidStats;
    return (s.indicator === 'listening' || s.indicator === 'speaking')
      && document.getElementById('transcript').textContent.trim().length > 0;
  }, null, { timeout: 30000, polling: 200 }).catch(async () => {
    const s = await page.evaluate(() => JSON.stringify(window.moshidStats));
    await fail(`Talk did not start the room's conversation with a transcript: ${s}`);
  });
  result.transcript = (await page.textContent('#transcript')).trim().slice(0, 200);
  result.indicator_in_conversation = await page.evaluate(() => window.moshidStats.indicator);
  for (const [w, h] of [[800, 480], [1024, 600], [1280, 800]]) {
    await page.setViewportSize({ width: w, height: h });
    await page.waitForTimeout(300);
    const l = await layout(page);
    result.sizes[`${w}x${h}`] = l;
    await page.screenshot({ path: `${out}/kiosk-${w}x${h}.png` });
    if (l.scrollWidth > l.innerWidth || l.scrollHeight > l.innerHeight) await fail(`${w}x${h} overflows: ${JSON.stringify(l)}`);
    if (!l.talk || !l.stop || !l.transcript || !l.indicator) await fail(`${w}x${h}: not all on screen: ${JSON.stringify(l)}`);
  }
  await page.click('#stop');
  await page.waitForFunction(() => window.moshidStats.indicator === 'idle', null, { timeout: 10000 })
    .catch(() => fail('Stop did not end the room\'s conversation'));
  // The supervisor applies the command and the pipeline follows on its next frame.
  await page.waitForFunction(async () => (await (await fetch('/api/state')).json()).phase === 'idle',
    null, { timeout: 10000, polling: 200 }).catch(() => fail('the room is still in conversation after Stop'));
  if (errors.length) await fail(`page errors: ${errors.join('; ')}`);
} finally {
  await browser.close();
  daemon.kill('SIGTERM');
}
writeFileSync(`${out}/kiosk.json`, JSON.stringify(result, null, 1));
console.log(`kiosk test: ok ${JSON.stringify(result)}`);
