// Issue 24, item 1, in a real browser: a page of another origin, opened in a browser on a
// trusted address (loopback here, as the kiosk's own screen), must not drive the device.
// `moshid demo --web --no-tls` on 127.0.0.1:PORT; a foreign page served by this script on
// 127.0.0.1:OTHER (another port: another origin) tries
// fetch("http://DEVICE/api/control?volume=3", {method: "POST", mode: "no-cors"}) and
// new WebSocket("ws://DEVICE/api/chat"): the volume must not change and the WebSocket must get
// no handshake. The same page with the token (`worker_auth_id`, as Kyutai's web UI served
// elsewhere sends it) must get the handshake. A name re-pointed at the device (DNS rebinding,
// Chromium's --host-resolver-rules) must get 403 for the page and its POST. The device's own
// page still works. Usage: node origin.mjs MOSHID_BINARY OUT_DIR
import { chromium } from 'playwright-core';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { startDemo } from '../support/demo-web.mjs';

const [moshid, out] = process.argv.slice(2);
if (!moshid || !out) throw new Error('usage: node origin.mjs MOSHID OUT_DIR');
mkdirSync(out, { recursive: true });

let browser;
let foreign;
const cleanup = async () => {
  if (browser) await browser.close();
  if (foreign) foreign.close();
};
const { port, daemon, fail } = await startDemo(moshid, out, 'origin', cleanup, ['--no-tls']);
const device = `127.0.0.1:${port}`;
const token = readFileSync(`${out}/state/web-token`, 'utf8').trim();

// The foreign site: one blank page; the attacks run in it through page.evaluate.
foreign = http.createServer((_, res) => {
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end('<!doctype html><title>elsewhere</title><p>another site</p>');
});
await new Promise((r) => foreign.listen(0, '127.0.0.1', r));
const elsewhere = `http://127.0.0.1:${foreign.address().port}/`;

/** The device's /api/state, asked as a trusted non-browser client (no Origin). */
const deviceState = () => new Promise((resolve, reject) => {
  http.get({ host: '127.0.0.1', port, path: '/api/state' }, (res) => {
    let body = '';
    res.on('data', (d) => { body += d; });
    res.on('end', () => resolve(JSON.parse(body)));
  }).on('error', reject);
});

/** In the page: opens `url`, waits 3 s; whether it opened, how it closed, the kinds received. */
const tryWebSocket = (page, url) => page.evaluate((u) => new Promise((resolve) => {
  const r = { opened: false, kinds: [], closed: null };
  const ws = new WebSocket(u);
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => { r.opened = true; };
  ws.onmessage = (m) => { r.kinds.push(new Uint8Array(m.data)[0]); };
  ws.onclose = (e) => { r.closed = e.code; };
  setTimeout(() => { ws.close(); resolve(r); }, 3000);
}), url);

browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--host-resolver-rules=MAP rebound.example 127.0.0.1'],
});
const result = {};
try {
  const before = (await deviceState()).volume;
  if (before === 3) await fail('the volume starts at 3: the test could not tell a change');
  const page = await browser.newPage();
  await page.goto(elsewhere);
  // A cross-site POST that needs no CORS preflight: the browser sends it, Origin and all.
  result.fetch = await page.evaluate((u) => fetch(u, { method: 'POST', mode: 'no-cors' })
    .then((r) => r.type, (e) => String(e)), `http://${device}/api/control?volume=3`);
  result.volume_after_foreign_post = (await deviceState()).volume;
  if (result.volume_after_foreign_post !== before) await fail(`a foreign page changed the volume: ${JSON.stringify(result)}`);
  result.foreign_ws = await tryWebSocket(page, `ws://${device}/api/chat`);
  if (result.foreign_ws.opened || result.foreign_ws.kinds.length) await fail(`a foreign page got a WebSocket session: ${JSON.stringify(result)}`);
  // Kyutai's web UI served elsewhere brings the token: it gets the handshake first.
  result.with_token = await tryWebSocket(page, `ws://${device}/api/chat?worker_auth_id=${encodeURIComponent(token)}`);
  if (!result.with_token.opened || result.with_token.kinds[0] !== 0) await fail(`the token did not let the foreign page in: ${JSON.stringify(result)}`);
  // DNS rebinding: another name for the device's address; its page and its POST are refused.
  const rebound = await page.goto(`http://rebound.example:${port}/`);
  result.rebound_page = rebound.status();
  result.rebound_post = await page.evaluate(() => fetch('/api/control?volume=3', { method: 'POST' })
    .then((r) => r.status, (e) => String(e)));
  if (result.rebound_page !== 403 || result.rebound_post !== 403) await fail(`a rebound name was served: ${JSON.stringify(result)}`);
  if ((await deviceState()).volume !== before) await fail('a rebound page changed the volume');
  // The device's own page still controls it.
  await page.goto(`http://${device}/`);
  result.own_post = await page.evaluate(() => fetch('/api/control?volume=7', { method: 'POST' })
    .then((r) => r.status, (e) => String(e)));
  result.own_volume = (await deviceState()).volume;
  if (result.own_post !== 200 || result.own_volume !== 7) await fail(`the device's own page lost its controls: ${JSON.stringify(result)}`);
} finally {
  await cleanup();
  daemon.kill('SIGTERM');
}
writeFileSync(`${out}/origin.json`, JSON.stringify(result, null, 1));
console.log(`origin test: ok ${JSON.stringify(result)}`);
