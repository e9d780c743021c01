// The page's persona select (issue 23) in a real browser: `moshid demo --web --no-tls` serving a
// small random PersonaPlex-shaped model (written here with `moshid quantize --random-seed` and
// `moshid codec random-weights`) with two `[personas]`. The page must offer them (filled from
// /api/personas; hidden when there are none), and Talk with one chosen must start a session
// with that persona (the daemon's log names it) and get the handshake.
// Usage: node persona.mjs MOSHID_BINARY MIC.wav OUT_DIR
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDemo } from '../support/demo-web.mjs';

const [moshid, wav, out] = process.argv.slice(2);
if (!moshid || !wav || !out) throw new Error('usage: node persona.mjs MOSHID MIC.wav OUT_DIR');
mkdirSync(`${out}/model/voices`, { recursive: true });
const fixtures = resolve(dirname(fileURLToPath(import.meta.url)), '../../models/tests/fixtures');

// The model: the persona fixtures' LM shape (dep_q 16), a small Mimi, a piece table, one preset.
const m = `${out}/model`;
const lmConfig = `${fixtures}/persona/config.json`;
execFileSync(moshid, ['quantize', '--random-seed', '23', '--lm-config', lmConfig, '--type', 'q8_0',
  '--out', `${m}/pp.gguf`]);
writeFileSync(`${m}/mimi.json`, JSON.stringify({
  sample_rate: 24000, channels: 1, frame_rate: 12.5,
  seanet: { channels: 1, dimension: 128, n_filters: 8, n_residual_layers: 1, ratios: [8, 6, 5, 4],
    kernel_size: 7, residual_kernel_size: 3, last_kernel_size: 3, dilation_base: 2, compress: 2 },
  transformer: { d_model: 128, num_heads: 4, num_layers: 2, dim_feedforward: 256, context: 250,
    max_period: 10000.0 },
  quantizer: { dimension: 64, n_q: 8, bins: 2048 },
}));
execFileSync(moshid, ['codec', 'random-weights', '--mimi-config', `${m}/mimi.json`, '--seed', '7',
  `${m}/mimi.safetensors`]);
const textCard = JSON.parse(readFileSync(lmConfig, 'utf8')).text_card;
const pieces = ['<epad>', '<unk>', '<s>', '<pad>'];
for (let i = 4; i < textCard; i++) pieces.push(`\u2581w${i}`);
writeFileSync(`${m}/pieces.txt`, pieces.join('\n'));
copyFileSync(`${fixtures}/persona/voice.pt`, `${m}/voices/alice.pt`);
writeFileSync(`${out}/persona.toml`, `[model]
source = "local"
device = "cpu"
context = 64
[model.local]
lm = "${m}/pp.gguf"
mimi = "${m}/mimi.safetensors"
tokenizer = "${m}/pieces.txt"
mimi_config = "${m}/mimi.json"
[personas.desk]
voice_prompt = "alice"
role = "hello kitchen lights"
[personas.guide]
role = "welcome to the museum of old radios"
`);

let browser;
const cleanup = async () => { if (browser) await browser.close(); };
const { port, daemon, fail, log } = await startDemo(moshid, out, 'persona', cleanup,
  ['--no-tls', '--config', `${out}/persona.toml`]);
browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
    `--use-file-for-fake-audio-capture=${wav}`, '--autoplay-policy=no-user-gesture-required'],
});
let result;
try {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${port}/`);
  try {
    await page.waitForSelector('#persona-row:not([hidden])', { timeout: 10000 });
  } catch (_) {
    await fail('the page does not offer the personas');
  }
  const offered = await page.$$eval('#persona option', (o) => o.map((x) => x.value));
  if (JSON.stringify(offered) !== JSON.stringify(['', 'desk', 'guide'])) await fail(`offered: ${offered}`);
  await page.selectOption('#persona', 'guide');
  await page.click('#talk');
  try {
    await page.waitForFunction(() => window.moshidStats.handshake, null, { timeout: 30000 });
  } catch (_) {
    await fail(`no handshake: ${await page.evaluate(() => JSON.stringify(window.moshidStats))}`);
  }
  await page.screenshot({ path: `${out}/persona.png` });
  if (!log().includes('; persona guide)')) await fail('the session did not start as guide');
  result = { offered, chosen: 'guide', handshake: true };
} finally {
  await cleanup();
  daemon.kill('SIGTERM');
}
writeFileSync(`${out}/persona.json`, JSON.stringify(result, null, 1));
console.log(`persona test: ok ${JSON.stringify(result)}`);
