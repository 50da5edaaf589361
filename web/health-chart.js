// switchboard: the health history chart of a server on the dashboard's detail view: one bar per
// health check, its height the check's latency (a failed check is a full red bar), the newest on
// the right, and the last failures listed under it with their errors. SVG built with
// createElementNS, text only as text nodes. Loaded before dashboard.js; exposes
// `window.SwitchboardHealthChart`.
(function () {
  'use strict';

  const { h, svg } = window.SwitchboardDom;
  const { fmtMs, fmtAgo, fmtTime } = window.SwitchboardCommon;

  /**
   * Draws `history` (the server's `health_history`, oldest first) into `els.chart`, with the
   * "n of m checks ok" line in `els.summary` and the last five failures in `els.errors`.
   */
  function renderHealthHistory(els, history) {
    const box = els.chart;
    const n = history.length;
    const ok = history.filter((c) => c.ok).length;
    els.summary.textContent = n ? `${ok} of ${n} checks ok` : '';
    if (!n) {
      box.replaceChildren(h('p', { class: 'muted' }, 'No checks yet.'));
      els.errors.replaceChildren();
      return;
    }
    const W = Math.max(280, Math.round(box.clientWidth || 600));
    const H = 90;
    const slots = Math.max(n, 60);
    const bw = W / slots;
    const maxLat = Math.max(1, ...history.map((c) => c.latency_ms || 0));
    const chart = svg('svg', { viewBox: `0 0 ${W} ${H + 14}`, class: 'history-svg', role: 'img', 'aria-label': `health history: ${ok} of ${n} checks ok` });
    chart.append(svg('line', { x1: 0, y1: H, x2: W, y2: H, class: 'axis' }));
    history.forEach((c, i) => {
      const x = (slots - n + i) * bw;
      const height = c.ok ? Math.max(3, (H - 4) * ((c.latency_ms || 0) / maxLat)) : H - 4;
      const title = svg('title');
      title.textContent = `${fmtTime(c.time)} · ${c.kind || 'check'} · ${c.ok ? 'ok' : 'failed'} · ${fmtMs(c.latency_ms)}${c.error ? ` · ${c.error}` : ''}`;
      chart.append(svg('rect', { x: x + bw * 0.15, y: H - height, width: Math.max(1, bw * 0.7), height, rx: 1, class: c.ok ? 'bar-ok' : 'bar-fail', 'data-ok': String(c.ok) }, title));
    });
    const label = svg('text', { x: 2, y: 10, class: 'chart-label' });
    label.textContent = `max ${fmtMs(maxLat)}`;
    const older = svg('text', { x: 2, y: H + 12, class: 'chart-label' });
    older.textContent = fmtAgo(history[0].time);
    const newer = svg('text', { x: W - 2, y: H + 12, class: 'chart-label end' });
    newer.textContent = 'now';
    chart.append(label, older, newer);
    box.replaceChildren(chart);
    const failures = history.filter((c) => !c.ok).slice(-5).reverse();
    els.errors.replaceChildren(...failures.map((c) => h('li', null, h('span', { class: 'muted' }, `${fmtTime(c.time)} · ${c.kind || 'check'}: `), c.error || 'failed')));
  }
  window.SwitchboardHealthChart = Object.freeze({ renderHealthHistory });
})();
