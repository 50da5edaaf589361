// Test harness for the browser tests: starts the real broker binary and mock backends on
// ephemeral loopback ports, launches Debian's chromium through playwright-core (no browser
// download), and collects console errors and screenshots.
//
// Binaries: SWITCHBOARD_BIN / MOCKLLM_BIN, else SWITCHBOARD_BIN_DIR/{switchboard,mockllm}, else
// CARGO_TARGET_DIR/debug, else ../../target/debug relative to this folder (what CI builds).
// Browser: CHROMIUM_PATH, else /usr/bin/chromium.

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
export const WORKSPACE = resolve(HERE, '..', '..');
export const SHOTS_DIR = join(WORKSPACE, 'target', 'ui-shots');

function binDir() {
  if (process.env.SWITCHBOARD_BIN_DIR) return resolve(process.env.SWITCHBOARD_BIN_DIR);
  if (process.env.CARGO_TARGET_DIR) return resolve(process.env.CARGO_TARGET_DIR, 'debug');
  return join(WORKSPACE, 'target', 'debug');
}

export function binary(name) {
  const env = process.env[`${name.toUpperCase()}_BIN`];
  const path = env ? resolve(env) : join(binDir(), name);
  if (!existsSync(path)) {
    throw new Error(`${name} binary not found at ${path}; build it (cargo build -p switchboard -p mockllm) or set ${name.toUpperCase()}_BIN`);
  }
  return path;
}

/** Spawns a binary and resolves when it prints `... listening on http://HOST:PORT`. */
function spawnListening(path, args, env, label) {
  return new Promise((resolvePromise, reject) => {
    const proc = spawn(path, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`${label} did not start within 20 s\nstdout: ${out}\nstderr: ${err.slice(-4000)}`));
    }, 20000);
    proc.stdout.on('data', (d) => {
      out += d.toString();
      const m = out.match(/listening on (http:\/\/[^\s]+)/);
      if (m) {
        clearTimeout(timer);
        resolvePromise({ proc, url: m[1].replace(/\/$/, ''), logs: () => err });
      }
    });
    proc.stderr.on('data', (d) => {
      err += d.toString();
      if (err.length > 200000) err = err.slice(-100000);
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${label} exited with ${code} before listening\nstdout: ${out}\nstderr: ${err.slice(-4000)}`));
    });
  });
}

function stopper(proc) {
  return () => new Promise((resolvePromise) => {
    if (proc.exitCode !== null || proc.signalCode !== null) { resolvePromise(); return; }
    proc.once('exit', () => resolvePromise());
    proc.kill('SIGKILL');
  });
}

/** A mock OpenAI-compatible backend (fixtures/mockllm); the model name picks its behaviour. */
export async function startMock(extraArgs = []) {
  const { proc, url } = await spawnListening(binary('mockllm'), ['--port', '0', ...extraArgs], { RUST_LOG: 'warn' }, 'mockllm');
  return { proc, url, stop: stopper(proc) };
}

/** The broker on an ephemeral port with its own data dir and admin key. */
export async function startBroker(env = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'switchboard-ui-'));
  const adminKey = `test-admin-${randomBytes(8).toString('hex')}`;
  const { proc, url, logs } = await spawnListening(binary('switchboard'), [], {
    PORT: '0',
    SWITCHBOARD_HOST: '127.0.0.1',
    SWITCHBOARD_DATA_DIR: dataDir,
    SWITCHBOARD_ADMIN_KEY: adminKey,
    SWITCHBOARD_HEALTH_INTERVAL_S: '1',
    SWITCHBOARD_RATE_LIMIT_PER_MIN: '0',
    SWITCHBOARD_MAX_CONNECTIONS_PER_IP: '50',
    RUST_LOG: 'warn',
    ...env,
  }, 'switchboard');
  const stop = stopper(proc);
  return {
    proc, url, adminKey, dataDir, logs,
    async stop() { await stop(); rmSync(dataDir, { recursive: true, force: true }); },
    /** Calls the admin API; resolves with {status, body}. */
    async admin(method, path, body) {
      const r = await fetch(url + path, {
        method,
        headers: { 'X-API-Key': adminKey, ...(body ? { 'Content-Type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
      const text = await r.text();
      let json = null;
      try { json = text ? JSON.parse(text) : null; } catch (_) { json = text; }
      return { status: r.status, body: json };
    },
    /** Registers `model` on the mock at `endpoint`; throws unless 201. */
    async register(model, endpoint) {
      const r = await this.admin('POST', '/admin/register', { model_name: model, endpoint_url: endpoint });
      if (r.status !== 201) throw new Error(`register ${model}: ${r.status} ${JSON.stringify(r.body)}`);
      return r.body;
    },
  };
}

/** True when the broker serves the session routes of SPEC §4/§5. */
export async function hasSessions(brokerUrl) {
  const r = await fetch(`${brokerUrl}/api/sessions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
  if (r.ok) {
    const j = await r.json().catch(() => null);
    if (j && j.session_id) await fetch(`${brokerUrl}/api/sessions/${j.session_id}`, { method: 'DELETE' }).catch(() => {});
  }
  return r.status !== 404 && r.status !== 405;
}

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];

/**
 * Debian's chromium, headless. playwright's launch() gives it a fresh temporary
 * --user-data-dir of its own (removed on close); each test uses a new context on top.
 */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
  });
}

/**
 * A new page in a fresh context, recording console errors, page errors (uncaught exceptions)
 * and dialogs (alert/confirm) so a test can assert there were none.
 */
export async function openPage(browser, url, { viewport = { width: 1440, height: 900 } } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  const dialogs = [];
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const where = m.location().url || '';
    // Chromium asks for /favicon.ico on its own; the broker serves none (not an error of the page).
    if (/Failed to load resource/.test(m.text()) && /\/favicon\.ico$/.test(where)) return;
    problems.push(`console: ${m.text()} ${where}`.trim());
  });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss().catch(() => {}); });
  if (url) await page.goto(url);
  return { context, page, problems, dialogs };
}

/** Saves a PNG screenshot to target/ui-shots/NAME.png (relative to the workspace). */
export async function shot(page, name, options = {}) {
  mkdirSync(SHOTS_DIR, { recursive: true });
  const path = join(SHOTS_DIR, `${name}.png`);
  if (options.fullPage !== false) await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path, fullPage: true, ...options });
  return path;
}

/** Polls `fn` until it returns a truthy value or `timeout` ms pass. */
export async function until(fn, { timeout = 10000, interval = 50, message = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${message} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The exact text the mock streams for `model` answering `prompt` (mirror of scenario.rs). */
export function mockReply(model, prompt, words) {
  let text = model.toLowerCase().includes('xss')
    ? '<script>alert(1)</script> <img src=x onerror=alert(2)> done'
    : `[${model}] You said: ${prompt}. The quick brown fox jumps over the lazy dog.`;
  if (words) {
    const lorem = ['lorem', 'ipsum', 'dolor', 'sit', 'amet', 'consectetur', 'adipiscing', 'elit', 'sed', 'do', 'eiusmod',
      'tempor', 'incididunt', 'ut', 'labore', 'et', 'dolore', 'magna', 'aliqua'];
    let count = text.split(/\s+/).filter(Boolean).length;
    let i = 0;
    while (count < words) { text += ` ${lorem[i % lorem.length]}`; i += 1; count += 1; }
  }
  return text;
}

// ---- compare page helpers -------------------------------------------------------------------

/** Selects exactly `models` in the picker of the compare page. */
export async function selectModels(page, models) {
  await page.waitForSelector('[data-testid=model-option]');
  for (const m of models) await page.waitForSelector(`[data-testid=model-option][data-model="${m}"]`);
  // uncheck first (the picker caps at 8), then check the wanted ones; the picker re-renders on
  // every change, so elements are looked up by model each time
  const all = await page.locator('[data-testid=model-option]').evaluateAll((els) => els.map((e) => e.dataset.model));
  for (const model of all) {
    const cb = page.locator(`[data-testid=model-option][data-model="${model}"] input`);
    if (!models.includes(model) && await cb.isChecked()) await cb.uncheck();
  }
  for (const m of models) {
    const cb = page.locator(`[data-testid=model-option][data-model="${m}"] input`);
    if (!await cb.isChecked()) await cb.check();
  }
}

export async function waitConnected(page, timeout = 15000) {
  await page.waitForSelector('[data-testid=conn-state][data-state=open]', { timeout });
}

/** Sends `prompt` with the Enter key, as a person would. */
export async function sendPrompt(page, prompt) {
  await page.waitForSelector('[data-testid=send]:not([disabled])', { timeout: 15000 });
  await page.fill('[data-testid=prompt]', prompt);
  await page.press('[data-testid=prompt]', 'Enter');
}

export function panel(page, model) {
  return page.locator(`[data-testid=panel][data-model="${model}"]`);
}

/** Text of the latest answer of `model`. */
export async function answerText(page, model) {
  return page.locator(`[data-testid=panel][data-model="${model}"] [data-testid=turn-text]`).last().textContent();
}

export async function waitPanelState(page, model, states, timeout = 20000) {
  const list = Array.isArray(states) ? states : [states];
  await until(async () => list.includes(await panel(page, model).getAttribute('data-state')), { timeout, message: `${model} panel in ${list.join('|')}` });
}

export async function waitTurnComplete(page, timeout = 30000) {
  await page.waitForSelector('body[data-busy=false]', { timeout });
}
