// Frame-time measurement of the token timeline (issue 13): 4 models × 2 000 tokens at 100
// tokens/s each, streamed for real (mock backend → broker → WebSocket → page), measured inside
// the page with `performance` (rAF frame intervals, long tasks, and the timeline's own
// `timeline-flush` measures). Not a CI test (it runs ~25 s):
//
//   cargo build -p switchboard -p mockllm
//   cd tests/browser && node bench/timeline-frames.mjs [tokens=2000] [delay_ms=10] [models=4]

import { startBroker, startMock, launchBrowser, openPage, selectModels, waitConnected, sendPrompt, waitTurnComplete } from '../harness.mjs';

const tokens = Number(process.argv[2] || 2000);
const delay = Number(process.argv[3] || 10);
const count = Number(process.argv[4] || 4);

const broker = await startBroker();
const mock = await startMock();
const browser = await launchBrowser();
try {
  const models = Array.from({ length: count }, (_, i) => `perf-${String.fromCharCode(97 + i)}-d${delay}-w${tokens}`);
  for (const m of models) await broker.register(m, mock.url);
  const { page } = await openPage(browser, `${broker.url}/`, { viewport: { width: 1440, height: 1000 } });
  await waitConnected(page);
  await selectModels(page, models);
  await page.evaluate(() => {
    const s = { frames: [], long: [], running: true };
    window.__perf = s;
    let last = performance.now();
    const loop = (t) => { s.frames.push(t - last); last = t; if (s.running) requestAnimationFrame(loop); };
    requestAnimationFrame(loop);
    try {
      new PerformanceObserver((list) => { for (const e of list.getEntries()) s.long.push(e.duration); }).observe({ type: 'longtask', buffered: false });
    } catch (_) { /* no longtask support */ }
    performance.clearMeasures('timeline-flush');
  });
  if (process.env.DETACH) await page.evaluate((sel) => { for (const e of document.querySelectorAll(sel)) e.remove(); }, process.env.DETACH);
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Performance.enable');
  const metrics = async () => Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((m) => [m.name, m.value]));
  const m0 = await metrics();
  const t0 = Date.now();
  if (process.env.SYNTHETIC) {
    // the events a real turn produces, at the same pace, from inside the page
    await page.evaluate(({ models, tokens, delay }) => new Promise((done) => {
      const feed = window.__switchboard.feed;
      let id = window.__switchboard.state().last_event_id + 1;
      const rid = `synthetic-${Date.now()}`;
      const start = Date.now();
      feed({ id: id++, type: 'ack', request_id: rid, models, content: 'go', ts: start });
      const sent = Object.fromEntries(models.map((m) => [m, 0]));
      const timer = setInterval(() => {
        const due = Math.floor((Date.now() - start) / delay);
        for (const m of models) {
          while (sent[m] < Math.min(due, tokens)) {
            if (sent[m] === 0) feed({ id: id++, type: 'ttft', request_id: rid, model: m, ms: Date.now() - start, ts: Date.now() });
            feed({ id: id++, type: 'token', request_id: rid, model: m, content: 'lorem ', ts: Date.now() });
            sent[m] += 1;
          }
        }
        if (models.every((m) => sent[m] >= tokens)) {
          clearInterval(timer);
          for (const m of models) feed({ id: id++, type: 'done', request_id: rid, model: m, ttft_ms: 0, total_ms: Date.now() - start, usage: { prompt_tokens: 1, completion_tokens: tokens, total_tokens: tokens + 1, estimated: false }, finish_reason: 'stop', ts: Date.now() });
          feed({ id: id++, type: 'complete', request_id: rid, ts: Date.now() });
          done();
        }
      }, delay);
    }), { models, tokens, delay });
  } else {
    await sendPrompt(page, 'go');
  }
  await waitTurnComplete(page, 120000);
  const wall = Date.now() - t0;
  const m1 = await metrics();
  const busy = (k) => ((m1[k] - m0[k]) * 1000);
  const r = await page.evaluate(() => {
    const s = window.__perf;
    s.running = false;
    const q = (a, p) => { const b = a.slice().sort((x, y) => x - y); return b.length ? b[Math.min(b.length - 1, Math.ceil(p / 100 * b.length) - 1)] : null; };
    const flush = performance.getEntriesByName('timeline-flush').map((e) => e.duration);
    const frames = s.frames.slice(1);
    const v = window.__switchboard.view();
    const turn = v.turns[v.turns.length - 1];
    const ticks = [...document.querySelectorAll('[data-testid=timeline]:last-child .tl-tick')].reduce((n, e) => n + (e.getAttribute('d').match(/M/g) || []).length, 0);
    return {
      frames: frames.length,
      frame_p50: q(frames, 50), frame_p99: q(frames, 99), frame_max: Math.max(...frames),
      over_25ms: frames.filter((f) => f > 25).length,
      over_50ms: frames.filter((f) => f > 50).length,
      long_tasks: s.long.length, long_task_max: s.long.length ? Math.max(...s.long) : 0,
      flushes: flush.length, flush_p50: q(flush, 50), flush_p99: q(flush, 99), flush_max: flush.length ? Math.max(...flush) : 0,
      tokens: Object.values(turn.tl.rows).reduce((n, row) => n + row.ticks.length, 0),
      ticks,
    };
  });
  const f = (x) => (x === null ? '—' : x.toFixed(2));
  console.log(`${process.env.SYNTHETIC ? 'synthetic feed' : 'broker + mock'}${process.env.DETACH ? `, without ${process.env.DETACH}` : ''}: ${count} models × ${tokens} tokens, ${delay} ms apart (${Math.round(1000 / delay)} tok/s each); turn took ${(wall / 1000).toFixed(1)} s`);
  console.log(`tokens recorded ${r.tokens}, ticks drawn ${r.ticks}`);
  console.log(`frames ${r.frames}: interval p50 ${f(r.frame_p50)} ms, p99 ${f(r.frame_p99)} ms, max ${f(r.frame_max)} ms; over 25 ms: ${r.over_25ms} (${(100 * r.over_25ms / r.frames).toFixed(2)} %), over 50 ms: ${r.over_50ms}`);
  console.log(`long tasks (> 50 ms): ${r.long_tasks}, longest ${f(r.long_task_max)} ms`);
  console.log(`main thread busy ${(busy('TaskDuration') / wall * 100).toFixed(1)} % of the turn: script ${(busy('ScriptDuration') / wall * 100).toFixed(1)} %, layout ${(busy('LayoutDuration') / wall * 100).toFixed(1)} %, style ${(busy('RecalcStyleDuration') / wall * 100).toFixed(1)} % (load average ${(await import('node:os')).loadavg()[0].toFixed(1)} on ${(await import('node:os')).cpus().length} CPUs)`);
  console.log(`timeline flushes ${r.flushes}: p50 ${f(r.flush_p50)} ms, p99 ${f(r.flush_p99)} ms, max ${f(r.flush_max)} ms`);
} finally {
  await browser.close();
  await mock.stop();
  await broker.stop();
}
