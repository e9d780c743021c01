// Shared by the page tests (tests/browser: Chromium, tests/firefox: Firefox ESR): `moshid demo
// --web` (https, self-signed) on a free loopback port, its output collected for the failure
// message.
import { spawn } from 'node:child_process';
import net from 'node:net';

/** A free TCP port on 127.0.0.1. */
const freePort = () => new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
});

/**
 * Starts `moshid demo --web` with its state and cache under `out` (and `extra` arguments:
 * `--no-tls`, `--config FILE`...) and waits (2 min at most) until it serves. Returns its port, the child and `fail(why)`: prints `NAME test: FAILED`,
 * why and moshid's output, kills moshid, awaits `cleanup` and exits 1.
 */
export async function startDemo(moshid, out, name, cleanup = async () => {}, extra = []) {
  const port = await freePort();
  const daemon = spawn(moshid, ['demo', '--web', '--listen', `127.0.0.1:${port}`,
    '--state-dir', `${out}/state`, '--cache-dir', `${out}/cache`, ...extra],
  { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  daemon.stdout.on('data', (d) => { log += d; });
  daemon.stderr.on('data', (d) => { log += d; });
  const fail = async (why) => {
    console.error(`${name} test: FAILED: ${why}\n--- moshid:\n${log}`);
    daemon.kill();
    await cleanup();
    process.exit(1);
  };
  const deadline = Date.now() + 120000;
  while (!log.includes('web: serving')) {
    if (Date.now() > deadline || daemon.exitCode !== null) await fail('moshid demo --web did not start');
    await new Promise((r) => setTimeout(r, 100));
  }
  return { port, daemon, fail, log: () => log };
}
