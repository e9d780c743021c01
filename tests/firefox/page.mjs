// A real Firefox against moshid's page: Debian's Firefox ESR, headless, driven over WebDriver
// BiDi by puppeteer-core. Firefox has no WAV fake microphone: its fake stream
// (media.navigator.streams.fake) is a tone. Starts `moshid demo --web` (https, self-signed),
// clicks Talk, and asserts the handshake, microphone audio encoded and sent, the server's audio
// decoded and played (non-silent), transcript text on the page and no page errors; saves a
// screenshots. Usage: node page.mjs MOSHID_BINARY OUT_DIR
import puppeteer from 'puppeteer-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import { startDemo } from '../support/demo-web.mjs';

const [moshid, out] = process.argv.slice(2);
if (!moshid || !out) throw new Error('usage: node page.mjs MOSHID OUT_DIR');
mkdirSync(out, { recursive: true });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let browser = null;
const { port, daemon, fail } = await startDemo(moshid, out, 'firefox', async () => {
  if (browser) await browser.close().catch(() => {});
});

browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath: process.env.FIREFOX || '/usr/bin/firefox-esr',
  headless: true,
  acceptInsecureCerts: true,
  userDataDir: `${out}/profile`,
  extraPrefsFirefox: {
    'media.navigator.streams.fake': true,
    'media.navigator.permission.disabled': true,
    'media.autoplay.default': 0,
    'media.autoplay.blocking_policy': 0,
  },
});
let result;
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 720 }); // playwright's default, as the Chromium test
  const console_ = [];
  const pageErrors = [];
  page.on('console', (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => { pageErrors.push(String(e)); console_.push(`pageerror: ${e}`); });
  await page.goto(`https://127.0.0.1:${port}/`);
  const version = await browser.version();
  await page.click('#talk');
  try {
    await page.waitForFunction(() => {
      const s = window.moshidStats;
      return s.handshake && s.sent > 25 && s.text.trim().length > 0 && s.played > 24000 && s.energy > 1;
    }, { timeout: 30000, polling: 200 });
  } catch (e) {
    const s = await page.evaluate(() => JSON.stringify(window.moshidStats));
    const msg = await page.$eval('#message', (n) => n.textContent);
    await page.screenshot({ path: `${out}/page.png` });
    await fail(`no conversation in 30 s: ${s} message=${JSON.stringify(msg)}\n--- console:\n${console_.join('\n')}`);
  }
  await sleep(1500);
  const shown = await page.$eval('#transcript', (n) => n.textContent);
  const conn = await page.$eval('#conn', (n) => n.textContent);
  const message = await page.$eval('#message', (n) => n.textContent);
  const s = await page.evaluate(() => window.moshidStats);
  await page.screenshot({ path: `${out}/page.png` });
  await page.goto(`https://127.0.0.1:${port}/?kiosk=1`);
  await sleep(500);
  await page.screenshot({ path: `${out}/kiosk.png` });
  result = { browser: version, handshake: s.handshake, conn, message, transcript: shown.trim(),
    played_samples: s.played, played_energy: s.energy, sent_messages: s.sent, errors: s.errors,
    page_errors: pageErrors, instance: s.metadata && s.metadata.instance_name };
  if (!shown.trim()) await fail('no transcript text on the page');
  if (conn !== 'talking') await fail(`connection badge says ${JSON.stringify(conn)}`);
  if (pageErrors.length || s.errors.length || message) {
    await fail(`errors: ${JSON.stringify({ pageErrors, server: s.errors, message })}\n--- console:\n${console_.join('\n')}`);
  }
} finally {
  await browser.close();
  daemon.kill('SIGTERM');
}
writeFileSync(`${out}/result.json`, JSON.stringify(result, null, 1));
console.log(`firefox test: ok ${JSON.stringify(result)}`);
