// The /sse page: the same compare page on the SSE transport completes a turn, a cancel, and
// resumes after its event stream is dropped.

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
  for (const m of ['sse-chat', 'sse-spaced-w20', 'sse-spaced-w60', 'sse-error500']) await broker.register(m, mock.url);
  browser = await launchBrowser();
  ready = await hasSessions(broker.url);
});

after(async () => {
  await browser?.close();
  await mock?.stop();
  await broker?.stop();
});

test('sse page: a turn completes, a cancel keeps the partial text, a dropped stream resumes', async (t) => {
  if (!ready) { t.skip('the broker does not serve the session routes yet'); return; }
  const { page, problems, context } = await openPage(browser, `${broker.url}/sse`);
  let websockets = 0;
  page.on('websocket', () => { websockets += 1; });
  await waitConnected(page);
  assert.equal(await page.evaluate(() => window.__switchboard.state().transport), 'sse');

  // a turn on two models
  await selectModels(page, ['sse-chat', 'sse-spaced-w20']);
  await sendPrompt(page, 'over sse');
  await waitTurnComplete(page, 20000);
  assert.equal(await answerText(page, 'sse-chat'), mockReply('sse-chat', 'over sse'));
  assert.equal(await answerText(page, 'sse-spaced-w20'), mockReply('sse-spaced-w20', 'over sse', 20));
  assert.match(await panel(page, 'sse-chat').locator('[data-testid=metric-tokens] .metric-value').textContent(), /^\d+ \/ \d+$/);
  await shot(page, 'sse-page', { fullPage: false });

  // cancel mid-stream
  const slow = 'sse-spaced-w60';
  await selectModels(page, [slow]);
  await sendPrompt(page, 'cancel me');
  await until(async () => ((await answerText(page, slow)) || '').length >= 20, { timeout: 10000, message: 'some streamed text' });
  await page.click('[data-testid=stop]');
  await waitPanelState(page, slow, 'cancelled', 3000);
  await waitTurnComplete(page, 5000);
  const partial = await answerText(page, slow);
  const full = mockReply(slow, 'cancel me', 60);
  assert.ok(partial.length > 0 && partial.length < full.length && full.startsWith(partial), 'partial text kept');
  await sleep(500);
  assert.equal(await answerText(page, slow), partial);

  // the event stream dropped mid-turn: reconnect with last_event_id, complete text
  await selectModels(page, ['sse-spaced-w20']);
  await sendPrompt(page, 'drop the stream');
  await until(async () => ((await answerText(page, 'sse-spaced-w20')) || '').length >= 15, { timeout: 10000, message: 'streaming' });
  await page.evaluate(() => window.__switchboard.dropConnection());
  await waitConnected(page, 10000);
  await waitTurnComplete(page, 20000);
  assert.equal(await answerText(page, 'sse-spaced-w20'), mockReply('sse-spaced-w20', 'drop the stream', 20));

  // a model that fails sends `event: error`: a model error, not a transport error, so the
  // event stream stays open (no reconnect) while the other model streams on
  let eventStreams = 0;
  page.on('request', (r) => { if (r.url().includes('/events')) eventStreams += 1; });
  await selectModels(page, ['sse-spaced-w20', 'sse-error500']);
  await sendPrompt(page, 'one fails');
  await waitPanelState(page, 'sse-error500', 'error', 10000);
  await waitTurnComplete(page, 20000);
  assert.equal(await answerText(page, 'sse-spaced-w20'), mockReply('sse-spaced-w20', 'one fails', 20));
  assert.equal(eventStreams, 0, 'no reconnect after a model error');
  assert.equal(await page.evaluate(() => window.__switchboard.state().status), 'open');

  assert.equal(websockets, 0, 'the SSE page never opens a WebSocket');
  assert.deepEqual(problems, []);
  await context.close();
});
