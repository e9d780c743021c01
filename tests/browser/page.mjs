// A real browser against moshid's page: Debian's Chromium, headless, with a fake microphone
// fed from a WAV. Starts `moshid demo --web` (https, self-signed), clicks Talk, and asserts
// the handshake, transcript text on the page and non-silent audio played; saves a
// screenshot. Usage: node page.mjs MOSHID_BINARY MIC.wav OUT_DIR
import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import { startDemo } from '../support/demo-web.mjs';

const [moshid, wav, out] = process.argv.slice(2);
if (!moshid || !wav || !out) throw new Error('usage: node page.mjs MOSHID MIC.wav OUT_DIR');
mkdirSync(out, { recursive: true });

const { port, daemon, fail } = await startDemo(moshid, out, 'browser');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${wav}`, '--ignore-certificate-errors',
    '--autoplay-policy=no-user-gesture-required'],
});
let result;
try {
  const page = await browser.newPage({ ignoreHTTPSErrors: true });
  const console_ = [];
  page.on('console', (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => console_.push(`pageerror: ${e}`));
  await page.goto(`https://127.0.0.1:${port}/`);
  await page.click('#talk');
  try {
    await page.waitForFunction(() => {
      const s = window.moshidStats;
      return s.handshake && s.text.trim().length > 0 && s.played > 24000 && s.energy > 1;
    }, null, { timeout: 30000, polling: 200 });
  } catch (e) {
    const s = await page.evaluate(() => JSON.stringify(window.moshidStats));
    await page.screenshot({ path: `${out}/page.png` });
    await fail(`no conversation in 30 s: ${s}\n--- console:\n${console_.join('\n')}`);
  }
  await page.waitForTimeout(1500);
  const shown = await page.textContent('#transcript');
  const s = await page.evaluate(() => window.moshidStats);
  await page.screenshot({ path: `${out}/page.png` });
  await page.goto(`https://127.0.0.1:${port}/?kiosk=1`);
  await page.waitForTimeout(500);
  await page.screenshot({ path: `${out}/kiosk.png` });
  result = { handshake: s.handshake, transcript: shown.trim(), played_samples: s.played,
    played_energy: s.energy, sent_messages: s.sent, errors: s.errors,
    instance: s.metadata && s.metadata.instance_name };
  if (!shown.trim()) await fail('no transcript text on the page');
} finally {
  await browser.close();
  daemon.kill('SIGTERM');
}
writeFileSync(`${out}/result.json`, JSON.stringify(result, null, 1));
console.log(`browser test: ok ${JSON.stringify(result)}`);
