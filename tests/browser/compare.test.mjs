// The compare page over WebSocket: models listed, a prompt fanned out to three models with their
// metrics and tool timeline, model output shown as literal text (no HTML), Stop / Clear /
// multi-turn.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startBroker, startMock, launchBrowser, openPage, shot, until, sleep, hasSessions, mockReply,
  selectModels, waitConnected, sendPrompt, panel, answerText, waitPanelState, waitTurnComplete,
} from './harness.mjs';

let broker;
let mock;
let browser;
let ready = false;

before(async () => {
  broker = await startBroker();
  mock = await startMock();
  for (const m of ['mock-xss', 'mock-spaced-w60', 'mock-chat']) await broker.register(m, mock.url);
  browser = await launchBrowser();
  ready = await hasSessions(broker.url);
});

after(async () => {
  await browser?.close();
  await mock?.stop();
  await broker?.stop();
});

function needSessions(t) {
  if (!ready) t.skip('the broker does not serve the session routes (/ws, /api/sessions) yet');
  return ready;
}

test('compare: lists the models and streams one prompt to three models at once', async (t) => {
  if (!needSessions(t)) return;
  const { page, problems, context } = await openPage(browser, `${broker.url}/`);
  await waitConnected(page);
  for (const m of ['demo-fast', 'demo-slow-thinker', 'demo-tools', 'demo-flaky', 'mock-chat']) {
    await page.waitForSelector(`[data-testid=model-option][data-model="${m}"]`);
  }
  const models = ['demo-fast', 'demo-slow-thinker', 'demo-tools'];
  await selectModels(page, models);
  assert.equal(await page.locator('[data-testid=panel]').count(), 3);

  const prompt = 'Compare yourselves';
  const t0 = Date.now();
  await sendPrompt(page, prompt);
  // every panel leaves "ready" at once: the turn went to all three together
  for (const m of models) await waitPanelState(page, m, ['sending', 'waiting', 'streaming', 'done'], 2000);
  // the fast model has finished while the slow thinker has not produced its first token yet
  await waitPanelState(page, 'demo-fast', 'done', 10000);
  assert.notEqual(await panel(page, 'demo-slow-thinker').getAttribute('data-state'), 'done');
  await shot(page, 'compare-mid-turn', { fullPage: false });
  await waitTurnComplete(page);
  const wall = Date.now() - t0;

  const view = await page.evaluate(() => window.__switchboard.view());
  const turn = view.turns[view.turns.length - 1];
  const totals = models.map((m) => turn.results[m].total_ms);
  const sum = totals.reduce((a, b) => a + b, 0);
  assert.ok(wall < sum, `the models ran concurrently (wall ${wall} ms < sum of totals ${sum} ms)`);

  for (const m of ['demo-fast', 'demo-slow-thinker']) {
    assert.equal(await answerText(page, m), mockReply(m, prompt));
    assert.equal(await panel(page, m).getAttribute('data-state'), 'done');
    const p = panel(page, m);
    assert.match(await p.locator('[data-testid=metric-ttft] .metric-value').textContent(), /^\d+ ms$|^\d+\.\d+ s$/);
    assert.match(await p.locator('[data-testid=metric-total] .metric-value').textContent(), /^\d+ ms$|^\d+\.\d+ s$/);
    assert.match(await p.locator('[data-testid=metric-tokens] .metric-value').textContent(), /^\d+ \/ \d+$/);
    assert.match(await p.locator('[data-testid=metric-tps] .metric-value').textContent(), /^\d+(\.\d)?$/);
    assert.match(await p.locator('[data-testid=metric-backend]').textContent(), /backend [0-9a-f]{8}/);
  }
  assert.ok(turn.results['demo-slow-thinker'].ttft_ms >= 1000, 'the slow thinker is slow to start');

  // the tool model's timeline shows its two calls with their arguments
  const tools = panel(page, 'demo-tools').locator('[data-testid=tool-item]');
  assert.equal(await tools.count(), 2);
  assert.deepEqual(await tools.evaluateAll((els) => els.map((e) => [e.dataset.name, e.dataset.state])), [['get_weather', 'done'], ['get_time', 'done']]);
  assert.match(await tools.first().textContent(), /Paris/);
  assert.match(await panel(page, 'demo-tools').locator('[data-testid=turn-status]').textContent(), /tool calls/);

  await shot(page, 'compare-desktop', { fullPage: false });
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, 'compare-phone', { fullPage: false });
  assert.deepEqual(problems, []);
  await context.close();
});

test('compare: HTML and script in a reply are shown as text, never run', async (t) => {
  if (!needSessions(t)) return;
  const { page, problems, dialogs, context } = await openPage(browser, `${broker.url}/`);
  await waitConnected(page);
  await selectModels(page, ['mock-xss']);
  await sendPrompt(page, 'say something dangerous');
  await waitTurnComplete(page);
  const text = await answerText(page, 'mock-xss');
  assert.equal(text, '<script>alert(1)</script> <img src=x onerror=alert(2)> done');
  const created = await page.evaluate(() => document.querySelectorAll('[data-testid=panels] script, [data-testid=panels] img, [data-testid=panels] *[onerror]').length);
  assert.equal(created, 0, 'no element was created from the reply');
  assert.deepEqual(await page.locator('script').evaluateAll((els) => els.map((e) => e.getAttribute('src'))),
    ['/static/dom.js', '/static/common.js', '/static/timeline-data.js', '/static/timeline.js', '/static/panels.js',
      '/static/connection.js', '/static/compare.js'], 'only the page\'s own scripts are on the page');
  await sleep(300);
  assert.deepEqual(dialogs, [], 'no alert ran');
  assert.deepEqual(problems, []);
  await context.close();
});

test('compare: Stop keeps the partial text, Clear resets, a second turn continues the conversation', async (t) => {
  if (!needSessions(t)) return;
  const { page, problems, context } = await openPage(browser, `${broker.url}/`);
  await waitConnected(page);

  // Stop mid-stream (60 words, 100 ms apart)
  const slow = 'mock-spaced-w60';
  await selectModels(page, [slow]);
  await sendPrompt(page, 'stop me');
  await until(async () => ((await answerText(page, slow)) || '').length >= 20, { timeout: 10000, message: 'some streamed text' });
  const t0 = Date.now();
  await page.click('[data-testid=stop]');
  await waitPanelState(page, slow, 'cancelled', 3000);
  const stopMs = Date.now() - t0;
  await waitTurnComplete(page, 5000);
  const partial = await answerText(page, slow);
  const full = mockReply(slow, 'stop me', 60);
  assert.ok(partial.length > 0 && partial.length < full.length, `partial text kept (${partial.length} of ${full.length} chars)`);
  assert.ok(full.startsWith(partial), 'the partial text is a prefix of the reply');
  await sleep(600);
  assert.equal(await answerText(page, slow), partial, 'nothing arrives after the stop');
  assert.match(await panel(page, slow).locator('[data-testid=turn-status]').textContent(), /stopped/);
  t.diagnostic(`stop took ${stopMs} ms in the UI`);

  // a turn on the chat model, then Clear: panels and history reset
  const chat = 'mock-chat';
  await selectModels(page, [chat]);
  await sendPrompt(page, 'alpha');
  await waitTurnComplete(page);
  assert.equal(await answerText(page, chat), mockReply(chat, 'alpha'));
  const sid = await page.evaluate(() => window.__switchboard.state().session_id);
  await page.click('[data-testid=clear]');
  await until(async () => (await page.locator('[data-testid=turn]').count()) === 0, { message: 'turns cleared' });
  assert.equal(await page.locator('[data-testid=panel]').count(), 1, 'the selected model keeps an empty panel');
  assert.equal(await panel(page, chat).getAttribute('data-state'), 'ready');

  // two turns: the second request carries the first exchange (and not the cleared one)
  await sendPrompt(page, 'first question');
  await waitTurnComplete(page);
  await sendPrompt(page, 'second question');
  await waitTurnComplete(page);
  const turns = panel(page, chat).locator('[data-testid=turn]');
  assert.equal(await turns.count(), 2);
  assert.equal(await turns.nth(0).locator('[data-testid=turn-text]').textContent(), mockReply(chat, 'first question'));
  assert.equal(await turns.nth(1).locator('[data-testid=turn-text]').textContent(), mockReply(chat, 'second question'));
  assert.equal(await page.evaluate(() => window.__switchboard.state().session_id), sid, 'same session');

  const stats = await (await fetch(`${mock.url}/mock/stats`)).json();
  const last = stats.last_requests.filter((b) => b.model === chat).pop();
  const messages = last.messages.map((m) => [m.role, m.content]);
  assert.deepEqual(messages.filter(([role]) => role !== 'system'), [
    ['user', 'first question'],
    ['assistant', mockReply(chat, 'first question')],
    ['user', 'second question'],
  ]);
  await shot(page, 'compare-multiturn', { fullPage: false });
  assert.deepEqual(problems, []);
  await context.close();
});
