// The token-arrival timeline (issue 13, SPEC §7): a 4-model turn over the demo backend, checked
// against the events the page received on its WebSocket (recorded here from the frames, not from
// the page): one tick per `token` event, the TTFT mark at `ttft.ms`, the stall of `demo-stalls`
// shaded and no other row's, `demo-tools`' calls as spans, the same ticks after a reload mid-turn
// and after it, and the JSON / SVG exports. Also the `cleared` event emptying the view.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  startBroker, launchBrowser, openPage, shot, until, hasSessions, SHOTS_DIR,
  selectModels, waitConnected, sendPrompt, waitTurnComplete,
} from './harness.mjs';

let broker;
let browser;
let ready = false;

before(async () => {
  broker = await startBroker();
  browser = await launchBrowser();
  ready = await hasSessions(broker.url);
});

after(async () => {
  await browser?.close();
  await broker?.stop();
});

function needSessions(t) {
  if (!ready) t.skip('the broker does not serve the session routes yet');
  return ready;
}

/** Records every event the page receives over its WebSockets (across reloads), deduplicated by id. */
function recordFrames(page) {
  const byId = new Map();
  const all = [];
  page.on('websocket', (ws) => {
    ws.on('framereceived', (f) => {
      let ev;
      try { ev = JSON.parse(typeof f.payload === 'string' ? f.payload : f.payload.toString()); } catch (_) { return; }
      all.push(ev);
      if (typeof ev.id === 'number') byId.set(ev.id, ev);
    });
  });
  return {
    all,
    /** Turn events of `requestId` in id order. */
    turn(requestId) {
      return [...byId.values()].filter((e) => e.request_id === requestId).sort((a, b) => a.id - b.id);
    },
  };
}

/**
 * Every event of `requestId` as the server holds it: a second socket attaches the page's session
 * from id 0 and collects the turn. A recorder on the page can miss a frame that was in flight while
 * the page unloaded (the page had it and resumed after it), so a reload test checks against this.
 */
async function replayTurn(page, requestId) {
  return page.evaluate((rid) => new Promise((resolve, reject) => {
    const sid = window.__switchboard.state().session_id;
    const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
    const events = [];
    const timer = setTimeout(() => { ws.close(); reject(new Error(`replay of ${rid}: no complete within 5 s (${events.length} events)`)); }, 5000);
    ws.onopen = () => ws.send(JSON.stringify({ type: 'hello', session_id: sid, last_event_id: 0 }));
    ws.onmessage = (m) => {
      const ev = JSON.parse(m.data);
      if (ev.type === 'resync') { clearTimeout(timer); ws.close(); reject(new Error('replay got a resync: the buffer no longer holds the turn')); return; }
      if (ev.request_id !== rid) return;
      events.push(ev);
      if (ev.type === 'complete') { clearTimeout(timer); ws.close(); resolve(events); }
    };
  }), requestId);
}

/** What the timeline must show, computed from the received events only. */
function expected(events, models) {
  const ack = events.find((e) => e.type === 'ack');
  const out = {};
  for (const m of models) {
    const mine = events.filter((e) => e.model === m);
    const ttft = mine.find((e) => e.type === 'ttft');
    out[m] = {
      offsets: mine.filter((e) => e.type === 'token').map((e) => e.ts - ack.ts),
      ttft: ttft ? ttft.ms : null,
      tools: mine.filter((e) => e.type === 'tool_end').map((e) => e.name),
    };
  }
  return out;
}

/** Ticks drawn in a row: the vertical strokes (`M x y v h`) of its tick paths. */
async function rowTicks(page, requestId, model) {
  return page.locator(`[data-testid=timeline][data-request-id="${requestId}"] [data-testid=timeline-row][data-model="${model}"] .tl-tick`)
    .evaluateAll((els) => els.reduce((n, e) => n + (e.getAttribute('d').match(/M/g) || []).length, 0));
}

async function lastRequestId(page) {
  const v = await page.evaluate(() => window.__switchboard.view());
  return v.turns[v.turns.length - 1].request_id;
}

const MODELS = ['demo-fast', 'demo-stalls', 'demo-tools', 'demo-slow-thinker'];

test('timeline: a 4-model turn draws one tick per token event, TTFT, the stall and tool spans', async (t) => {
  if (!needSessions(t)) return;
  const { page, problems, context } = await openPage(browser, null, { viewport: { width: 1440, height: 1000 } });
  await page.emulateMedia({ colorScheme: 'light' });
  const frames = recordFrames(page);
  await page.goto(`${broker.url}/`);
  await waitConnected(page);
  await selectModels(page, MODELS);
  await sendPrompt(page, 'Show me your rhythm');
  await waitTurnComplete(page, 30000);
  const rid = await lastRequestId(page);
  const events = frames.turn(rid);
  const want = expected(events, MODELS);
  assert.ok(want['demo-stalls'].offsets.length >= 100, 'demo-stalls streamed its 120 tokens');

  // the drawing settles within a frame or two of the last event
  await until(async () => {
    for (const m of MODELS) if (await rowTicks(page, rid, m) !== want[m].offsets.length) return false;
    return true;
  }, { timeout: 3000, message: 'every row has one tick per token event' });

  // TTFT marks at ttft.ms on the axis, within 2 px
  const tl = page.locator(`[data-testid=timeline][data-request-id="${rid}"]`);
  const geo = await tl.evaluate((root) => {
    const plot = root.querySelector('[data-testid=timeline-plot]');
    const area = root.querySelector('[data-testid=timeline-area]').getBoundingClientRect();
    const marks = {};
    for (const row of root.querySelectorAll('[data-testid=timeline-row]')) {
      const line = row.querySelector('[data-testid=timeline-ttft]');
      if (line.getAttribute('visibility') === 'visible') {
        const r = line.getBoundingClientRect();
        marks[row.dataset.model] = r.left + r.width / 2;
      }
    }
    return { domain: Number(plot.dataset.domainMs), left: area.left, width: area.width, marks };
  });
  for (const m of MODELS) {
    if (want[m].ttft === null) { assert.equal(geo.marks[m], undefined, `${m} has no TTFT mark`); continue; }
    const x = geo.left + (want[m].ttft / geo.domain) * geo.width;
    assert.ok(Math.abs(geo.marks[m] - x) <= 2, `${m}: TTFT mark at ${geo.marks[m]} px, ttft ${want[m].ttft} ms is at ${x} px`);
  }

  // the stall of demo-stalls is shaded, no other row is
  for (const m of MODELS) {
    const stalls = await tl.locator(`[data-testid=timeline-row][data-model="${m}"] [data-testid=timeline-stall]`).count();
    if (m === 'demo-stalls') assert.equal(stalls, 1, 'demo-stalls shows its one stall');
    else assert.equal(stalls, 0, `${m} has no stall`);
  }
  const longest = await tl.locator('tr[data-model="demo-stalls"] [data-testid=longest-stall]').textContent();
  assert.match(longest, /^1\.\d\d s$/, `the figures name the ~1.5 s stall (${longest})`);
  assert.equal(await tl.locator('tr[data-model="demo-fast"] [data-testid=longest-stall]').textContent(), 'none');

  // demo-tools' calls are spans
  const spans = await tl.locator('[data-testid=timeline-row][data-model="demo-tools"] [data-testid=timeline-tool]')
    .evaluateAll((els) => els.map((e) => [e.dataset.name, Number(e.getAttribute('width'))]));
  assert.deepEqual(spans.map((s) => s[0]), want['demo-tools'].tools);
  assert.ok(spans.length === 2 && spans.every((s) => s[1] >= 0));

  // JSON export = offsets computed from the received events
  const exp = await page.evaluate((r) => window.__switchboard.timeline(r), rid);
  for (const m of MODELS) {
    assert.deepEqual(exp.json.models[m].token_offsets_ms, want[m].offsets, `${m} offsets`);
    assert.equal(exp.json.models[m].ttft_ms, want[m].ttft);
  }
  assert.equal(exp.json.models['demo-stalls'].stalls.length, 1);
  assert.ok(exp.json.models['demo-stalls'].stalls[0].gap_ms >= 1400);
  // the buttons download the same documents
  let download = page.waitForEvent('download');
  await tl.locator('[data-testid=timeline-export-json]').click();
  let saved = await download;
  assert.match(saved.suggestedFilename(), /^timeline-.*\.json$/);
  assert.deepEqual(JSON.parse(readFileSync(await saved.path(), 'utf8')), exp.json);
  download = page.waitForEvent('download');
  await tl.locator('[data-testid=timeline-export-svg]').click();
  saved = await download;
  assert.match(saved.suggestedFilename(), /^timeline-.*\.svg$/);
  assert.equal(readFileSync(await saved.path(), 'utf8'), exp.svg);
  assert.deepEqual(exp.json.models['demo-tools'].tool_spans.map((s) => s.name), want['demo-tools'].tools);

  // SVG export: well-formed, standalone (own styles, no reference to the page), opens on its own
  assert.ok(!/(href|src)=|url\(|\/static\//.test(exp.svg), 'no external reference');
  assert.match(exp.svg, /<style>[^<]*\.tl-tick\{/);
  mkdirSync(SHOTS_DIR, { recursive: true });
  const file = join(SHOTS_DIR, 'timeline-export.svg');
  writeFileSync(file, exp.svg);
  // parsed outside the page (its CSP would report the export's own <style>)
  const standalone = await context.newPage();
  await standalone.goto('about:blank');
  const parsed = await standalone.evaluate((s) => {
    const doc = new DOMParser().parseFromString(s, 'image/svg+xml');
    return { error: !!doc.querySelector('parsererror'), root: doc.documentElement.localName, ns: doc.documentElement.namespaceURI };
  }, exp.svg);
  assert.deepEqual(parsed, { error: false, root: 'svg', ns: 'http://www.w3.org/2000/svg' });
  await standalone.goto(pathToFileURL(file).href);
  const ticks = await standalone.locator('.tl-tick').evaluateAll((els) => els.reduce((n, e) => n + (e.getAttribute('d').match(/M/g) || []).length, 0));
  assert.equal(ticks, MODELS.reduce((n, m) => n + want[m].offsets.length, 0));
  const tickColour = await standalone.locator('.tl-tick').first().evaluate((e) => getComputedStyle(e).stroke);
  assert.equal(tickColour, 'rgb(79, 70, 229)', 'the export styles itself');
  await standalone.screenshot({ path: join(SHOTS_DIR, 'timeline-export-svg.png') });
  await standalone.close();

  // hover and keyboard focus show the exact offset and the token text
  const svg = tl.locator('[data-testid=timeline-svg]');
  await svg.focus();
  const order = await tl.locator('[data-testid=timeline-row]').evaluateAll((els) => els.map((e) => e.dataset.model));
  for (let i = 0; i < order.indexOf('demo-stalls'); i++) await page.keyboard.press('ArrowDown');
  await page.keyboard.press('ArrowRight');
  const tip = tl.locator('[data-testid=timeline-tip]');
  assert.equal(await tip.isVisible(), true);
  const tipText = await tip.textContent();
  const second = events.filter((e) => e.model === 'demo-stalls' && e.type === 'token')[1];
  assert.ok(tipText.includes(`token 2 of ${want['demo-stalls'].offsets.length}`), tipText);
  assert.ok(tipText.includes(`+${(second.ts - events[0].ts).toLocaleString('en-US')} ms`), tipText);
  assert.ok(tipText.includes(second.content.trim()), tipText);
  const box = await tl.locator('[data-testid=timeline-area]').boundingBox();
  await page.mouse.move(box.x + box.width * 0.2, box.y + 5);
  assert.match(await tip.textContent(), new RegExp(`${order[0]} · (token \\d+ of \\d+|no token)`));
  // the text equivalent names the figures
  assert.match(await svg.getAttribute('aria-label'), /demo-stalls: \d+ tokens, TTFT \d+ ms, gap p50 \d+ ms, p99 [\d.]+ (ms|s), 1 stall, longest 1\.\d\d s/);

  await page.mouse.move(0, 0);
  await svg.evaluate((e) => e.blur());
  assert.equal(await tip.isVisible(), false, 'the tip goes with the focus');
  await tl.scrollIntoViewIfNeeded();
  await tl.screenshot({ path: join(SHOTS_DIR, 'timeline-light.png') });
  await page.setViewportSize({ width: 390, height: 844 });
  await until(async () => (await svg.getAttribute('width')) < 400, { timeout: 3000, message: 'the timeline follows the narrow viewport' });
  await tl.scrollIntoViewIfNeeded();
  await tl.screenshot({ path: join(SHOTS_DIR, 'timeline-narrow.png') });
  await shot(page, 'timeline-narrow-page');
  assert.deepEqual(problems, []);
  await context.close();
});

test('timeline: a reload mid-turn and after it redraws the same ticks', async (t) => {
  if (!needSessions(t)) return;
  const { page, problems, context } = await openPage(browser, null);
  const frames = recordFrames(page);
  await page.goto(`${broker.url}/`);
  await waitConnected(page);
  const models = ['demo-fast', 'demo-stalls'];
  await selectModels(page, models);
  await sendPrompt(page, 'Reload me');
  const rid = await until(async () => {
    const v = await page.evaluate(() => window.__switchboard.view());
    const turn = v.turns[v.turns.length - 1];
    return turn && turn.acked ? turn.request_id : null;
  }, { message: 'the turn is acknowledged' });
  await until(async () => await rowTicks(page, rid, 'demo-stalls') >= 20, { timeout: 10000, message: 'demo-stalls streaming' });
  assert.notEqual(await page.getAttribute('body', 'data-busy'), 'false', 'still mid-turn');
  await page.reload();
  await waitConnected(page);
  await waitTurnComplete(page, 30000);
  const seen = frames.turn(rid);
  const events = await replayTurn(page, rid);
  // what the page was sent is what the server holds (the recorder may have missed one in flight)
  for (const ev of seen) assert.deepEqual(events.find((e) => e.id === ev.id), ev);
  const want = expected(events, models);
  await until(async () => {
    for (const m of models) if (await rowTicks(page, rid, m) !== want[m].offsets.length) return false;
    return true;
  }, { timeout: 5000, message: 'one tick per token event after the reload' }).catch(async (e) => {
    const v = await page.evaluate((r) => { const t = window.__switchboard.view().turns.find((x) => x.request_id === r); return t && Object.fromEntries(Object.entries(t.tl.rows).map(([m, row]) => [m, row.ticks.length])); }, rid);
    const drawn = {};
    for (const m of models) drawn[m] = await rowTicks(page, rid, m);
    throw new Error(`${e.message}; events ${JSON.stringify(Object.fromEntries(models.map((m) => [m, want[m].offsets.length])))}, data ${JSON.stringify(v)}, drawn ${JSON.stringify(drawn)}`);
  });
  const before = await page.evaluate((r) => window.__switchboard.timeline(r).json, rid);
  for (const m of models) assert.deepEqual(before.models[m].token_offsets_ms, want[m].offsets, m);
  assert.equal(before.models['demo-stalls'].stalls.length, 1);

  await page.reload();
  await waitConnected(page);
  await until(async () => await rowTicks(page, rid, 'demo-stalls') === want['demo-stalls'].offsets.length, { timeout: 5000, message: 'redrawn after the reload' });
  const afterReload = await page.evaluate((r) => window.__switchboard.timeline(r).json, rid);
  assert.deepEqual(afterReload.models, before.models);
  assert.deepEqual(problems, []);
  await context.close();
});

test('timeline: a `cleared` event empties the view (and a second tab when the server sends it)', async (t) => {
  if (!needSessions(t)) return;
  const { page, problems, context } = await openPage(browser, null);
  const frames = recordFrames(page);
  await page.goto(`${broker.url}/`);
  await waitConnected(page);
  await selectModels(page, ['demo-fast']);
  await sendPrompt(page, 'Forget me');
  await waitTurnComplete(page);
  assert.equal(await page.locator('[data-testid=timeline]').count(), 1);

  // a second tab on the same session
  const sid = await page.evaluate(() => window.__switchboard.state().session_id);
  const other = await context.newPage();
  await other.addInitScript((s) => { if (!sessionStorage.getItem('switchboard.session_id')) sessionStorage.setItem('switchboard.session_id', s); }, sid);
  await other.goto(`${broker.url}/`);
  await waitConnected(other);
  await until(async () => await other.locator('[data-testid=timeline]').count() === 1, { message: 'the second tab shows the turn' });

  await page.click('[data-testid=clear]');
  await until(async () => await page.locator('[data-testid=turn]').count() === 0, { message: 'this tab empties' });
  assert.equal(await page.locator('[data-testid=timeline]').count(), 0);
  const serverSendsCleared = await until(() => frames.all.some((e) => e.type === 'cleared'), { timeout: 2000, message: 'cleared' }).catch(() => false);
  if (serverSendsCleared) {
    await until(async () => await other.locator('[data-testid=turn]').count() === 0, { message: 'the other tab empties' });
    assert.equal(await other.locator('[data-testid=timeline]').count(), 0);
  } else {
    // the server does not emit `cleared` yet: check the page's handling with the event itself
    const last = await other.evaluate(() => window.__switchboard.state().last_event_id);
    await other.evaluate((id) => window.__switchboard.feed({ type: 'cleared', id, ts: Date.now() }), last + 1);
    assert.equal(await other.locator('[data-testid=turn]').count(), 0);
    assert.equal(await other.locator('[data-testid=timeline]').count(), 0);
  }
  assert.deepEqual(problems, []);
  await context.close();
});

test('timeline: a tab that gets a `resync` (events no longer buffered) draws the same timeline', async (t) => {
  if (!needSessions(t)) return;
  // a tiny resume buffer, so a tab attaching from id 0 gets a `resync` instead of a replay
  const small = await startBroker({ SWITCHBOARD_EVENT_BUFFER: '16' });
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  try {
    const page = await context.newPage();
    const frames = recordFrames(page);
    await page.goto(`${small.url}/`);
    await waitConnected(page);
    const models = ['demo-fast', 'demo-tools'];
    await selectModels(page, models);
    await sendPrompt(page, 'Resync me');
    await waitTurnComplete(page, 30000);
    const rid = await lastRequestId(page);
    const want = expected(frames.turn(rid), models);
    const seen = await page.evaluate((r) => window.__switchboard.timeline(r).json, rid);

    const sid = await page.evaluate(() => window.__switchboard.state().session_id);
    const other = await context.newPage();
    const otherFrames = recordFrames(other);
    await other.addInitScript((s) => { if (!sessionStorage.getItem('switchboard.session_id')) sessionStorage.setItem('switchboard.session_id', s); }, sid);
    await other.goto(`${small.url}/`);
    await waitConnected(other);
    await until(() => otherFrames.all.some((e) => e.type === 'resync'), { message: 'the second tab gets a resync' });
    const resync = otherFrames.all.find((e) => e.type === 'resync');
    assert.ok(resync.snapshot['demo-fast'].timeline, 'the snapshot carries the arrival times');
    await until(async () => await rowTicks(other, rid, 'demo-fast') === want['demo-fast'].offsets.length, { message: 'redrawn from the snapshot' });
    const rebuilt = await other.evaluate((r) => window.__switchboard.timeline(r).json, rid);
    for (const m of models) {
      assert.deepEqual(rebuilt.models[m].token_offsets_ms, want[m].offsets, `${m} offsets after resync`);
      assert.deepEqual(rebuilt.models[m].stalls, seen.models[m].stalls);
      assert.equal(rebuilt.models[m].ttft_ms, seen.models[m].ttft_ms);
    }
    assert.deepEqual(rebuilt.models['demo-tools'].tool_spans, seen.models['demo-tools'].tool_spans, 'tool spans from the snapshot');
    assert.equal(await other.locator('[data-testid=timeline-note]').isVisible(), false, 'nothing is missing');
    // the token text is there on hover too
    const tl = other.locator(`[data-testid=timeline][data-request-id="${rid}"] [data-testid=timeline-svg]`);
    await tl.focus();
    const tip = await other.locator('[data-testid=timeline-tip]').textContent();
    assert.match(tip, /token 1 of \d+.*“\[demo-/);
  } finally {
    await context.close();
    await small.stop();
  }
});

test('timeline: axis labels stay readable from a 200 ms turn to a 5 min turn, wide and narrow', async (t) => {
  if (!needSessions(t)) return;
  const { page, problems, context } = await openPage(browser, `${broker.url}/`);
  await waitConnected(page);
  // turns fed to the page as events (their ts span is what matters, not the wall clock)
  const feedTurn = (rid, spanMs) => page.evaluate(({ rid, spanMs }) => {
    const feed = window.__switchboard.feed;
    let id = window.__switchboard.state().last_event_id + 1;
    const t0 = 1_700_000_000_000;
    feed({ id: id++, type: 'ack', request_id: rid, models: ['m1', 'm2'], content: 'x', ts: t0 });
    for (const m of ['m1', 'm2']) {
      feed({ id: id++, type: 'ttft', request_id: rid, model: m, ms: Math.round(spanMs / 10), ts: t0 + spanMs / 10 });
      for (let i = 1; i <= 20; i++) feed({ id: id++, type: 'token', request_id: rid, model: m, content: `w${i} `, ts: t0 + Math.round((spanMs * i) / 21) });
      feed({ id: id++, type: 'done', request_id: rid, model: m, ttft_ms: Math.round(spanMs / 10), total_ms: spanMs, usage: { prompt_tokens: 1, completion_tokens: 20, total_tokens: 21, estimated: false }, finish_reason: 'stop', ts: t0 + spanMs });
    }
    feed({ id: id++, type: 'complete', request_id: rid, ts: t0 + spanMs });
  }, { rid, spanMs });
  const labels = async (rid) => {
    await until(async () => (await page.locator(`[data-testid=timeline][data-request-id="${rid}"] .tl-axis-text`).count()) > 1, { message: `${rid} axis` });
    return page.locator(`[data-testid=timeline][data-request-id="${rid}"] .tl-axis-text`).evaluateAll((els) => els.map((e) => {
      const r = e.getBoundingClientRect();
      return { text: e.textContent, left: r.left, right: r.right };
    }));
  };
  const readable = (ls, what) => {
    assert.ok(ls.length >= 3, `${what}: at least 3 labels (${ls.map((l) => l.text)})`);
    for (let i = 1; i < ls.length; i++) assert.ok(ls[i].left >= ls[i - 1].right + 4, `${what}: labels do not overlap (${ls[i - 1].text} / ${ls[i].text})`);
  };
  await feedTurn('short', 180);
  await feedTurn('long', 300000);
  for (const width of [1440, 390]) {
    await page.setViewportSize({ width, height: 900 });
    await sleepFrames(page);
    const short = await labels('short');
    readable(short, `200 ms at ${width}px`);
    assert.equal(short[short.length - 1].text, '200 ms');
    const long = await labels('long');
    readable(long, `5 min at ${width}px`);
    assert.ok(long.every((l) => /^(0|\d+:\d\d)$/.test(l.text)), `m:ss labels: ${long.map((l) => l.text)}`);
    assert.equal(long[long.length - 1].text, '5:00');
    await page.locator('[data-testid=timeline][data-request-id="long"]').screenshot({ path: join(SHOTS_DIR, `timeline-5min-${width}.png`) });
  }
  assert.deepEqual(problems, []);
  await context.close();
});

/** Waits two animation frames (a resize is drawn on the next frame). */
async function sleepFrames(page) {
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
}

test('timeline: stopped and failed models are marked where they ended', async (t) => {
  if (!needSessions(t)) return;
  const { page, problems, context } = await openPage(browser, `${broker.url}/`);
  await waitConnected(page);
  await page.evaluate(() => {
    const feed = window.__switchboard.feed;
    let id = window.__switchboard.state().last_event_id + 1;
    const t0 = 1_700_000_000_000;
    const rid = 'ends';
    feed({ id: id++, type: 'ack', request_id: rid, models: ['ok', 'stopped', 'failed'], content: 'x', ts: t0 });
    for (const m of ['ok', 'stopped', 'failed']) for (let i = 1; i <= 5; i++) feed({ id: id++, type: 'token', request_id: rid, model: m, content: 'w ', ts: t0 + i * 100 });
    feed({ id: id++, type: 'cancelled', request_id: rid, model: 'stopped', ts: t0 + 700 });
    feed({ id: id++, type: 'error', request_id: rid, model: 'failed', code: 'upstream_error', message: 'backend went away', retryable: true, ts: t0 + 900 });
    feed({ id: id++, type: 'done', request_id: rid, model: 'ok', ttft_ms: 100, total_ms: 1000, usage: { prompt_tokens: 1, completion_tokens: 5, total_tokens: 6, estimated: false }, finish_reason: 'stop', ts: t0 + 1000 });
    feed({ id: id++, type: 'complete', request_id: rid, ts: t0 + 1000 });
  });
  const tl = page.locator('[data-testid=timeline][data-request-id="ends"]');
  await until(async () => (await tl.locator('[data-testid=timeline-end]').count()) === 2, { message: 'two end marks' });
  const marks = await tl.locator('[data-testid=timeline-end]').evaluateAll((els) => els.map((e) => [e.dataset.model, e.dataset.kind, Number(e.dataset.ms)]));
  assert.deepEqual(marks, [['stopped', 'cancelled', 700], ['failed', 'error', 900]]);
  assert.match(await tl.locator('[data-testid=timeline-end][data-kind=error] title').textContent(), /failed: backend went away at 900 ms/);
  const json = await page.evaluate(() => window.__switchboard.timeline('ends').json);
  assert.deepEqual(json.models.stopped.end, { state: 'cancelled', at_ms: 700 });
  assert.deepEqual(json.models.failed.end, { state: 'error', at_ms: 900 });
  assert.deepEqual(json.models.ok.end, { state: 'done', at_ms: 1000 });
  assert.deepEqual(problems, []);
  await context.close();
});

test('timeline: the /sse page draws the same timeline (a tick per streamed token)', async (t) => {
  if (!needSessions(t)) return;
  const { page, problems, context } = await openPage(browser, `${broker.url}/sse`);
  await waitConnected(page);
  assert.equal(await page.getAttribute('body', 'data-transport'), 'sse');
  await selectModels(page, ['demo-fast', 'demo-tools']);
  await sendPrompt(page, 'Over SSE');
  await waitTurnComplete(page, 30000);
  const rid = await lastRequestId(page);
  const view = await page.evaluate(() => window.__switchboard.view());
  const turn = view.turns.find((x) => x.request_id === rid);
  // the mock sends one token per word and reports the count itself
  const words = turn.results['demo-fast'].usage.completion_tokens;
  assert.ok(words > 5);
  await until(async () => await rowTicks(page, rid, 'demo-fast') === words, { timeout: 3000, message: 'a tick per token over SSE' });
  assert.equal(await page.locator(`[data-testid=timeline][data-request-id="${rid}"] [data-testid=timeline-row][data-model="demo-tools"] [data-testid=timeline-tool]`).count(), 2);
  const json = await page.evaluate((r) => window.__switchboard.timeline(r).json, rid);
  assert.equal(json.models['demo-fast'].token_offsets_ms.length, words);
  assert.ok(json.models['demo-fast'].token_offsets_ms.every((o, i, a) => o >= 0 && (i === 0 || o >= a[i - 1])), 'offsets from the send, in order');
  assert.deepEqual(problems, []);
  await context.close();
});

test('timeline: a resync snapshot without arrival times keeps what the page saw and says so', async (t) => {
  if (!needSessions(t)) return;
  const { page, problems, context } = await openPage(browser, `${broker.url}/`);
  await waitConnected(page);
  await page.evaluate(() => {
    const feed = window.__switchboard.feed;
    let id = window.__switchboard.state().last_event_id + 1;
    const t0 = 1_700_000_000_000;
    feed({ id: id++, type: 'ack', request_id: 'old', models: ['m'], content: 'x', ts: t0 });
    for (let i = 1; i <= 3; i++) feed({ id: id++, type: 'token', request_id: 'old', model: 'm', content: 'w ', ts: t0 + i * 50 });
    // an older broker's snapshot: content, state and metrics only
    feed({ type: 'resync', request_id: 'old', snapshot: { m: { content: 'w w w w w ', state: 'done', metrics: { ttft_ms: 50, total_ms: 300 } } } });
  });
  const tl = page.locator('[data-testid=timeline][data-request-id="old"]');
  await until(async () => await tl.locator('[data-testid=timeline-note]').isVisible(), { message: 'the note' });
  assert.match(await tl.locator('[data-testid=timeline-note]').textContent(), /were not kept by the server/);
  assert.equal(await rowTicks(page, 'old', 'm'), 3, 'the ticks the page saw stay');
  const json = await page.evaluate(() => window.__switchboard.timeline('old').json);
  assert.equal(json.models.m.complete, false);
  assert.deepEqual(problems, []);
  await context.close();
});
