// Resilience of the compare page: a WebSocket killed mid-turn reconnects and resumes (the answers
// end complete, nothing lost or doubled), and a page reload mid-turn resumes the same session.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import {
  startBroker, startMock, launchBrowser, openPage, shot, until, hasSessions, mockReply,
  selectModels, waitConnected, sendPrompt, panel, answerText, waitTurnComplete,
} from './harness.mjs';

const MODELS = ['a-spaced-w40', 'b-spaced-w40']; // 40 words, 100 ms apart: ~4 s per answer

let broker;
let mock;
let browser;
let ready = false;

before(async () => {
  broker = await startBroker();
  mock = await startMock();
  for (const m of MODELS) await broker.register(m, mock.url);
  browser = await launchBrowser();
  ready = await hasSessions(broker.url);
});

after(async () => {
  await browser?.close();
  await mock?.stop();
  await broker?.stop();
});

async function someText(page) {
  for (const m of MODELS) {
    await until(async () => ((await answerText(page, m)) || '').length >= 15, { timeout: 10000, message: `${m} streaming` });
  }
}

test('resume: killing the WebSocket mid-turn recovers and the answers end complete', async (t) => {
  if (!ready) { t.skip('the broker does not serve the session routes yet'); return; }
  const { page, problems, context } = await openPage(browser, `${broker.url}/`);
  let sockets = 0;
  page.on('websocket', () => { sockets += 1; });
  await waitConnected(page);
  await selectModels(page, MODELS);
  const sid = await page.evaluate(() => window.__switchboard.state().session_id);
  await sendPrompt(page, 'keep going');
  await someText(page);

  const before = await page.evaluate(() => {
    window.__switchboard.dropConnection();
    return window.__switchboard.state();
  });
  await until(async () => (await page.locator('[data-testid=conn-state]').getAttribute('data-state')) !== 'open', { timeout: 2000, message: 'the page notices the drop' });
  await waitConnected(page, 10000);
  await waitTurnComplete(page, 20000);
  for (const m of MODELS) {
    assert.equal(await answerText(page, m), mockReply(m, 'keep going', 40), `${m}: complete, nothing lost or doubled`);
    assert.equal(await panel(page, m).getAttribute('data-state'), 'done');
  }
  const after = await page.evaluate(() => window.__switchboard.state());
  assert.equal(after.session_id, sid, 'same session after the reconnect');
  assert.ok(after.last_event_id > before.last_event_id);
  assert.ok(sockets >= 2, 'a second WebSocket was opened');
  assert.deepEqual(problems, []);
  await context.close();
});

test('resume: a reload mid-turn resumes the same session', async (t) => {
  if (!ready) { t.skip('the broker does not serve the session routes yet'); return; }
  const { page, problems, context } = await openPage(browser, `${broker.url}/`);
  await waitConnected(page);
  await selectModels(page, MODELS);
  await sendPrompt(page, 'reload me');
  await someText(page);
  const sid = await page.evaluate(() => sessionStorage.getItem('switchboard.session_id'));
  assert.ok(sid);

  await page.reload();
  await waitConnected(page, 10000);
  assert.equal(await page.evaluate(() => window.__switchboard.state().session_id), sid, 'same session after the reload');
  assert.equal(await page.locator('[data-testid=session-id]').getAttribute('data-session-id'), sid);
  await waitTurnComplete(page, 20000);
  for (const m of MODELS) {
    assert.equal(await panel(page, m).locator('[data-testid=turn]').count(), 1, `${m}: one turn, not duplicated`);
    assert.equal(await answerText(page, m), mockReply(m, 'reload me', 40), `${m}: complete after the reload`);
    assert.equal(await panel(page, m).locator('[data-testid=turn-prompt]').textContent(), 'reload me');
  }

  // and the conversation goes on in the resumed session
  await sendPrompt(page, 'after reload');
  await waitTurnComplete(page, 20000);
  for (const m of MODELS) assert.equal(await panel(page, m).locator('[data-testid=turn]').count(), 2);
  assert.deepEqual(problems, []);
  await context.close();
});

test('resume: a second tab joining from a position older than the buffer is rebuilt by resync', async (t) => {
  if (!ready) { t.skip('the broker does not serve the session routes yet'); return; }
  const small = await startBroker({ SWITCHBOARD_EVENT_BUFFER: '8' });
  try {
    await small.register(MODELS[0], mock.url);
    const a = await openPage(browser, `${small.url}/`);
    await waitConnected(a.page);
    await selectModels(a.page, [MODELS[0]]);
    await sendPrompt(a.page, 'resync me');
    await until(async () => ((await answerText(a.page, MODELS[0])) || '').length >= 60, { timeout: 10000, message: 'more than a buffer of events' });
    const sid = await a.page.evaluate(() => window.__switchboard.state().session_id);

    // tab B knows only the session id (no events seen): the buffer no longer holds event 1
    const b = await openPage(browser, null);
    await b.context.addInitScript((id) => { if (!sessionStorage.getItem('switchboard.view')) sessionStorage.setItem('switchboard.session_id', id); }, sid);
    await b.page.goto(`${small.url}/`);
    await waitConnected(b.page);
    await until(async () => ((await answerText(b.page, MODELS[0])) || '').length >= 60, { timeout: 5000, message: 'tab B shows the snapshot at once' });
    await waitTurnComplete(b.page, 20000);
    await waitTurnComplete(a.page, 20000);
    const full = mockReply(MODELS[0], 'resync me', 40);
    assert.equal(await answerText(b.page, MODELS[0]), full, 'tab B: rebuilt from the snapshot plus live events');
    assert.equal(await answerText(a.page, MODELS[0]), full, 'tab A: unaffected');
    assert.equal(await panel(b.page, MODELS[0]).getAttribute('data-state'), 'done');
    await shot(b.page, 'compare-resynced-tab', { fullPage: false });
    assert.deepEqual(a.problems, []);
    assert.deepEqual(b.problems, []);
    await a.context.close();
    await b.context.close();
  } finally {
    await small.stop();
  }
});

test('resume: without a working WebSocket the page falls back to SSE', async (t) => {
  if (!ready) { t.skip('the broker does not serve the session routes yet'); return; }
  const { page, problems, context } = await openPage(browser, null);
  // a WebSocket that never opens, as behind a proxy that refuses the upgrade
  await context.addInitScript(() => {
    window.WebSocket = class BlockedWebSocket {
      constructor() {
        this.readyState = 0;
        setTimeout(() => {
          this.readyState = 3;
          if (this.onerror) this.onerror(new Event('error'));
          if (this.onclose) this.onclose({ code: 1006, reason: '' });
        }, 20);
      }
      send() { throw new Error('not open'); }
      close() {}
    };
    window.WebSocket.OPEN = 1;
  });
  await page.goto(`${broker.url}/`);
  await waitConnected(page, 15000);
  assert.equal(await page.evaluate(() => window.__switchboard.state().transport), 'sse');
  assert.match(await page.locator('[data-testid=transport]').textContent(), /SSE/);
  await selectModels(page, [MODELS[0]]);
  await sendPrompt(page, 'fallback');
  await waitTurnComplete(page, 20000);
  assert.equal(await answerText(page, MODELS[0]), mockReply(MODELS[0], 'fallback', 40));
  assert.deepEqual(problems, []);
  await context.close();
});

test('resume: with the server gone the page says so, keeps trying and recovers', async (t) => {
  if (!ready) { t.skip('the broker does not serve the session routes yet'); return; }
  const first = await startBroker();
  const port = new URL(first.url).port;
  let second = null;
  try {
    const { page, problems, context } = await openPage(browser, `${first.url}/`);
    await waitConnected(page);
    await selectModels(page, ['demo-fast']);
    await sendPrompt(page, 'before the outage');
    await waitTurnComplete(page);
    const oldSid = await page.evaluate(() => window.__switchboard.state().session_id);

    await first.stop();
    await page.waitForSelector('[data-testid=conn-state][data-state=reconnecting]', { timeout: 5000 });
    // three failed tries (waits of at most 1 + 2 + 4 s) and it says the connection is lost
    await page.waitForSelector('[data-testid=conn-state][data-state=lost]', { timeout: 20000 });
    assert.ok(await page.locator('[data-testid=retry-now]').isVisible());
    assert.equal((await page.locator('[data-testid=conn-state]').textContent()).trim(), 'connection lost — retry now');
    assert.ok(await page.locator('[data-testid=send]').isDisabled(), 'no sending while disconnected');
    await shot(page, 'compare-connection-lost', { fullPage: false });

    second = await startBroker({ PORT: port });
    await page.click('[data-testid=retry-now]');
    await waitConnected(page, 10000);
    // sessions live in memory: the restarted server does not know the old one
    const newSid = await page.evaluate(() => window.__switchboard.state().session_id);
    assert.notEqual(newSid, oldSid);
    assert.ok(await page.locator('[data-testid=notice]').isVisible());
    await sendPrompt(page, 'after the outage');
    await waitTurnComplete(page);
    assert.equal(await answerText(page, 'demo-fast'), mockReply('demo-fast', 'after the outage'));
    // while the server was down the browser logged the failed attempts; nothing else
    const unexpected = problems.filter((p) => !/WebSocket connection to .* failed|ERR_CONNECTION_REFUSED/.test(p));
    assert.deepEqual(unexpected, []);
    await context.close();
  } finally {
    await second?.stop();
  }
});

test('resume: a turn cut by a broker crash keeps the text and ticks the page saw, marked interrupted', async (t) => {
  if (!ready) { t.skip('the broker does not serve the session routes yet'); return; }
  const first = await startBroker();
  const port = new URL(first.url).port;
  const model = 'cut-spaced-w60';
  let second = null;
  try {
    await first.register(model, mock.url);
    const { page, problems, context } = await openPage(browser, `${first.url}/`);
    await waitConnected(page);
    await selectModels(page, [model]);
    await sendPrompt(page, 'cut me off');
    await until(async () => ((await answerText(page, model)) || '').length >= 20, { timeout: 10000, message: 'streaming' });
    const ticks = () => page.evaluate((m) => {
      const v = window.__switchboard.view();
      const tl = window.__switchboard.timeline(v.turns[v.turns.length - 1].request_id);
      return tl ? tl.json.models[m].tokens : -1;
    }, model);

    // kill -9 (the data dir stays), then the same port and data dir again
    const exited = new Promise((r) => first.proc.once('exit', r));
    first.proc.kill('SIGKILL');
    await exited;
    const seen = await answerText(page, model);
    const seenTicks = await ticks();
    assert.ok(seenTicks > 0, 'ticks were drawn before the crash');
    second = await startBroker({ PORT: port, SWITCHBOARD_DATA_DIR: first.dataDir, SWITCHBOARD_ADMIN_KEY: first.adminKey });
    await waitConnected(page, 20000);
    await until(async () => (await panel(page, model).getAttribute('data-state')) === 'interrupted', { timeout: 15000, message: 'marked interrupted' });
    const after = await answerText(page, model);
    assert.ok(after.startsWith(seen) && after.length >= seen.length, `the text the page showed is kept: ${JSON.stringify(after)} vs ${JSON.stringify(seen)}`);
    assert.match(await panel(page, model).locator('[data-testid=turn-status]').textContent(), /interrupted/);
    assert.equal(await ticks(), seenTicks, 'the ticks the page drew are kept');
    const unexpected = problems.filter((p) => !/WebSocket connection to .* failed|ERR_CONNECTION_REFUSED/.test(p));
    assert.deepEqual(unexpected, []);
    await context.close();
  } finally {
    await second?.stop();
    rmSync(first.dataDir, { recursive: true, force: true });
  }
});
