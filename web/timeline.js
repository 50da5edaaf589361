// The token-arrival timeline of the compare page (SPEC §7, issue 13): under each turn, one row per
// model on one time axis that starts at the send (the `ack` event's `ts`), a tick per `token`
// event at its `ts`, the TTFT mark (at the `ttft` event's `ms`), tool calls as spans
// (`tool_start` → `tool_end`), stalls shaded, and where a model was cancelled or failed.
//
// Two halves:
// - Data (timeline-data.js: `record`, `fromSnapshot`, `analyse`, `exportJson`): plain JSON kept
//   in the turn (`turn.tl`), built only from session events, so the page saves it with the rest of
//   its view and a reload, a replay or a `resync` redraws exactly the same thing.
// - Drawing (this file, `Timelines`): one SVG per turn. Ticks are appended, never redrawn: each drawing
//   (at most ~30 a second, on an animation frame) adds one <path> of strokes per row (`data-n`
//   ticks each), and a row's paths are merged into one every MERGE_PATHS drawings, so the page
//   paints a handful of elements, not thousands. The marks sit in a group drawn in milliseconds
//   and scaled to pixels by one `transform` (strokes keep their width with `vector-effect`), so a
//   growing time axis changes one attribute instead of moving every tick. Statistics and stall
//   shading are recomputed at most every 250 ms while streaming.
//
// No inline styles (the page runs under `default-src 'self'`): colours come from classes in
// style.css; the SVG export carries its own <style> so the file stands alone.
(function () {
  'use strict';

  const { h, svg: el, SVG_NS } = window.SwitchboardDom;
  const { newRow, tlOf, record, fromSnapshot, analyse, baseOf, exportJson, fmtOffset, fmtDur, fmtClock } = window.SwitchboardTimelineData;
  const ROW_H = 30;
  const PAD_T = 6;
  const AXIS_H = 24;
  const PAD_R = 14;
  const STATS_EVERY_MS = 250;
  /** Tick paths a row keeps before they are merged into one (fewer elements to paint). */
  const MERGE_PATHS = 32;
  /** Least time between two drawings while events stream. */
  const FLUSH_EVERY_MS = 30;
  /** Axis lengths, chosen so the last label is a round number from 200 ms to hours. */
  const NICE_DOMAINS = [200, 300, 400, 500, 600, 750, 800, 1000, 1200, 1500, 2000, 2500, 3000, 4000, 5000,
    6000, 7500, 8000, 10000, 12000, 15000, 20000, 25000, 30000, 40000, 45000, 50000, 60000, 75000, 90000,
    120000, 150000, 180000, 240000, 300000, 450000, 600000];
  const AXIS_STEPS = [10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 15000, 20000,
    30000, 60000, 75000, 120000, 150000, 300000, 600000];

  // ---------------------------------------------------------------------------------------------
  // Axis

  /** An axis label: ms under 1 s, seconds under 2 min, m:ss beyond. */
  function axisLabel(v, domain, step) {
    if (v === 0) return '0';
    if (domain >= 120000) return fmtClock(v);
    if (domain <= 1000) return `${v} ms`;
    const digits = step % 1000 === 0 ? 0 : step % 100 === 0 ? 1 : 2;
    return `${(v / 1000).toFixed(digits)} s`;
  }

  function niceDomain(ms) {
    for (const d of NICE_DOMAINS) if (ms <= d) return d;
    return Math.ceil(ms / 300000) * 300000;
  }

  /** The smallest step that leaves ~64 px per label, preferring one that ends on the axis end. */
  function axisStep(domain, width) {
    const maxLabels = Math.max(2, Math.floor(width / 64));
    const fits = AXIS_STEPS.filter((s) => domain / s <= maxLabels);
    return fits.find((s) => domain % s === 0) || fits[0] || Math.ceil(domain / maxLabels / 60000) * 60000;
  }

  // ---------------------------------------------------------------------------------------------
  // Drawing

  /** Styles the SVG export carries, so the file looks the same opened on its own. */
  const EXPORT_CSS = [
    'svg{font:12px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;background:#fff}',
    '.tl-bg{fill:#f6f7f9}.tl-bg.odd{fill:#fff}',
    '.tl-label{fill:#1b2230;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;font-weight:600}',
    '.tl-grid{stroke:#dde1e7;stroke-width:1}.tl-axis-line{stroke:#98a2b3;stroke-width:1}',
    '.tl-axis-text{fill:#667085;font-size:11px}',
    '.tl-tick{fill:none;stroke:#4f46e5;stroke-width:1.2;vector-effect:non-scaling-stroke}',
    '.tl-ttft{stroke:#0f766e;stroke-width:2;vector-effect:non-scaling-stroke}',
    '.tl-stall{fill:#b45309;fill-opacity:.22}',
    '.tl-tool{fill:#0f766e;fill-opacity:.35}',
    '.tl-end{stroke-width:2}.tl-end.cancelled{stroke:#b45309}.tl-end.error{stroke:#c62828}',
    '.tl-end-text{font-size:10px;font-weight:700}.tl-end-text.cancelled{fill:#b45309}.tl-end-text.error{fill:#c62828}',
    '.tl-cursor{display:none}',
  ].join('');

  /** Everything drawn for one turn. */
  class TurnTimeline {
    constructor(turn, owner) {
      this.turn = turn;
      this.owner = owner;
      this.models = [];
      this.rows = new Map(); // model -> drawn row
      this.width = 0;
      this.plotW = 0;
      this.labelW = 150;
      this.domain = 0;
      this.lastStats = 0;
      this.statsTimer = null;
      this.focus = { row: 0, tick: -1 };

      const rid = turn.request_id;
      this.svgBtn = h('button', { type: 'button', class: 'ghost small', 'data-testid': 'timeline-export-svg', title: 'Download this timeline as a standalone SVG drawing' }, 'SVG');
      this.jsonBtn = h('button', { type: 'button', class: 'ghost small', 'data-testid': 'timeline-export-json', title: 'Download the arrival offsets, TTFT, stalls and tool spans as JSON' }, 'JSON');
      this.svgBtn.addEventListener('click', () => download(`timeline-${String(rid).slice(0, 8)}.svg`, 'image/svg+xml', this.exportSvg()));
      this.jsonBtn.addEventListener('click', () => download(`timeline-${String(rid).slice(0, 8)}.json`, 'application/json', JSON.stringify(this.exportJson(), null, 2)));
      this.title = h('span', { class: 'tl-prompt' });
      this.note = h('p', { class: 'tl-note muted', 'data-testid': 'timeline-note', hidden: true });

      this.svg = el('svg', { class: 'tl-svg', xmlns: SVG_NS, role: 'img', tabindex: 0, 'data-testid': 'timeline-svg' });
      this.svgTitle = el('title');
      this.bg = el('g', { class: 'tl-bgs' });
      this.labels = el('g', { class: 'tl-labels' });
      this.plot = el('g', { class: 'tl-plot', 'data-testid': 'timeline-plot' });
      this.grid = el('g', { class: 'tl-grid-lines' });
      this.scaled = el('g', { class: 'tl-scaled' });
      this.marks = el('g', { class: 'tl-marks' });
      this.cursor = el('line', { class: 'tl-cursor', y1: 0, y2: 0, x1: 0, x2: 0 });
      this.area = el('rect', { class: 'tl-area', 'data-testid': 'timeline-area', x: 0, y: 0, width: 1, height: 1 });
      this.axis = el('g', { class: 'tl-axis', 'data-testid': 'timeline-axis' });
      this.plot.append(this.area, this.grid, this.scaled, this.marks, this.cursor);
      this.svg.append(this.svgTitle, this.bg, this.labels, this.plot, this.axis);
      this.tip = h('div', { class: 'tl-tip', 'data-testid': 'timeline-tip', role: 'status', hidden: true });
      this.wrap = h('div', { class: 'tl-wrap' }, this.svg, this.tip);

      this.statsBody = h('tbody');
      this.table = h('table', { class: 'tl-stats', 'data-testid': 'timeline-stats' },
        h('caption', { class: 'visually-hidden' }, 'Token arrival figures per model'),
        h('thead', null, h('tr', null, ...['model', 'tokens', 'TTFT', 'total', 'tok/s', 'gap p50', 'gap p99', 'longest stall', 'end']
          .map((c, i) => h('th', { scope: 'col', class: i > 0 && i < 8 ? 'num' : null }, c)))),
        this.statsBody);

      this.root = h('section', { class: 'timeline', 'data-testid': 'timeline', 'data-request-id': rid },
        h('header', { class: 'tl-head' },
          h('h3', { class: 'tl-title' }, 'Token arrivals'), this.title,
          h('span', { class: 'tl-legend muted', 'aria-hidden': 'true' },
            h('i', { class: 'lg lg-tick' }), 'token ', h('i', { class: 'lg lg-ttft' }), 'TTFT ',
            h('i', { class: 'lg lg-tool' }), 'tool call ', h('i', { class: 'lg lg-stall' }), 'stall'),
          h('span', { class: 'tl-actions' }, this.svgBtn, this.jsonBtn)),
        this.wrap, this.note, h('div', { class: 'tl-table-wrap' }, this.table));

      this.svg.addEventListener('mousemove', (e) => this.onPointer(e));
      this.svg.addEventListener('mouseleave', () => { if (document.activeElement !== this.svg) this.hideTip(); });
      this.svg.addEventListener('focus', () => this.onFocus());
      this.svg.addEventListener('blur', () => this.hideTip());
      this.svg.addEventListener('keydown', (e) => this.onKey(e));
    }

    get tl() { return tlOf(this.turn); }

    setTurn(turn) { this.turn = turn; }

    /** Builds rows for the turn's models (structure only; ticks come from `flush`). */
    layout(force) {
      const models = (this.turn.models || []).slice();
      for (const m of Object.keys(this.tl.rows)) if (!models.includes(m)) models.push(m);
      const width = Math.max(280, Math.floor(this.wrap.clientWidth || this.owner.host.clientWidth || 600));
      const same = !force && width === this.width && models.length === this.models.length && models.every((m, i) => m === this.models[i]);
      if (same) return;
      this.models = models;
      this.width = width;
      this.labelW = width < 520 ? 92 : 150;
      this.plotW = Math.max(60, width - this.labelW - PAD_R);
      const height = PAD_T + models.length * ROW_H + AXIS_H;
      this.svg.setAttribute('width', String(width));
      this.svg.setAttribute('height', String(height));
      this.svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
      this.plot.setAttribute('transform', `translate(${this.labelW} ${PAD_T})`);
      this.axis.setAttribute('transform', `translate(${this.labelW} ${PAD_T + models.length * ROW_H})`);
      this.area.setAttribute('width', String(this.plotW));
      this.area.setAttribute('height', String(models.length * ROW_H));
      this.bg.replaceChildren();
      this.labels.replaceChildren();
      this.scaled.replaceChildren();
      this.rows.clear();
      models.forEach((m, i) => {
        const y = i * ROW_H;
        this.bg.append(el('rect', { class: `tl-bg${i % 2 ? ' odd' : ''}`, x: 0, y: PAD_T + y, width, height: ROW_H }));
        const label = el('text', { class: 'tl-label', x: 8, y: PAD_T + y + ROW_H / 2 + 4 }, fitLabel(m, this.labelW - 14));
        label.append(el('title', null, m));
        this.labels.append(label);
        const g = el('g', { class: 'tl-row', 'data-testid': 'timeline-row', 'data-model': m, role: 'listitem' });
        const stalls = el('g', { class: 'tl-stalls' });
        const tools = el('g', { class: 'tl-tools' });
        const ticks = el('g', { class: 'tl-ticks' });
        const ttft = el('line', { class: 'tl-ttft', 'data-testid': 'timeline-ttft', x1: 0, x2: 0, y1: y + 2, y2: y + ROW_H - 2, visibility: 'hidden' });
        g.append(stalls, tools, ticks, ttft);
        this.scaled.append(g);
        this.rows.set(m, { model: m, y, g, stalls, tools, ticks, ttft, drawn: 0, drawnFirst: null, toolsKey: '', endKey: '' });
      });
      this.domain = 0; // force a rescale
      this.flush(true);
    }

    /** Appends what arrived since the last frame; rescales when the axis must grow. */
    flush(full) {
      const tl = this.tl;
      const t0 = baseOf(tl);
      let needed = 0;
      for (const m of this.models) {
        const data = tl.rows[m] || newRow();
        const row = this.rows.get(m);
        if (!row) continue;
        // a rebuilt row (resync) or a changed base: redraw this row's ticks
        if (data.ticks.length < row.drawn || row.drawnFirst !== (data.ticks.length ? data.ticks[0] : null) || row.t0 !== t0) {
          row.ticks.replaceChildren();
          row.drawn = 0;
        }
        row.t0 = t0;
        if (data.ticks.length > row.drawn) {
          // the ticks that arrived since the last frame, as one path of vertical strokes
          const y1 = row.y + 6;
          const v = ROW_H - 12;
          let d = '';
          for (let i = row.drawn; i < data.ticks.length; i++) d += `M${data.ticks[i] - t0} ${y1}v${v}`;
          row.ticks.append(el('path', { class: 'tl-tick', d, 'data-n': data.ticks.length - row.drawn }));
          if (row.ticks.childElementCount > MERGE_PATHS) mergePaths(row.ticks);
          row.drawn = data.ticks.length;
          row.drawnFirst = data.ticks[0];
          row.g.setAttribute('data-ticks', String(row.drawn));
        }
        if (data.ticks.length) needed = Math.max(needed, data.ticks[data.ticks.length - 1] - t0);
        if (data.ttft !== null) {
          needed = Math.max(needed, data.ttft);
          row.ttft.setAttribute('x1', String(data.ttft));
          row.ttft.setAttribute('x2', String(data.ttft));
          row.ttft.setAttribute('data-ms', String(data.ttft));
          row.ttft.setAttribute('visibility', 'visible');
        } else {
          row.ttft.setAttribute('visibility', 'hidden');
        }
        const toolsKey = JSON.stringify(data.tools) + (data.end ? data.end.ts : '');
        if (toolsKey !== row.toolsKey) {
          row.toolsKey = toolsKey;
          row.tools.replaceChildren(...data.tools.filter((t) => t.start !== null).map((t, i) => {
            const end = t.end !== null ? t.end : (data.end && data.end.ts !== null ? data.end.ts : Math.max(t.start, lastTs(data)));
            const r = el('rect', { class: 'tl-tool', 'data-testid': 'timeline-tool', 'data-name': t.name, x: t.start - t0,
              y: row.y + ROW_H - 10 - (i % 3) * 7, width: Math.max(0, end - t.start), height: 5 });
            r.append(el('title', null, `${t.name}: ${fmtOffset(t.start - t0)} → ${t.end === null ? 'running' : fmtOffset(t.end - t0)}`));
            return r;
          }));
        }
        for (const t of data.tools) {
          if (t.start !== null) needed = Math.max(needed, t.start - t0);
          if (t.end !== null) needed = Math.max(needed, t.end - t0);
        }
        if (data.end && data.end.ts !== null) needed = Math.max(needed, data.end.ts - t0);
      }
      const running = this.owner.isRunning(this.turn);
      if (running) needed = Math.max(needed, this.owner.liveOffset(t0));
      // headroom while streaming, so the axis does not rescale at every token; none once ended
      const domain = niceDomain(Math.max(running ? needed * 1.1 : needed, 1));
      if (domain !== this.domain || full) this.rescale(domain);
      const now = performance.now();
      if (full || now - this.lastStats >= STATS_EVERY_MS) this.updateStats();
      else if (!this.statsTimer) {
        this.statsTimer = setTimeout(() => { this.statsTimer = null; this.updateStats(); }, STATS_EVERY_MS);
      }
    }

    rescale(domain) {
      this.domain = domain;
      const k = this.plotW / domain;
      this.k = k;
      this.scaled.setAttribute('transform', `scale(${k} 1)`);
      this.plot.setAttribute('data-domain-ms', String(domain));
      this.plot.setAttribute('data-plot-width', String(this.plotW));
      const step = axisStep(domain, this.plotW);
      const rowsH = this.models.length * ROW_H;
      const grid = [];
      const axis = [el('line', { class: 'tl-axis-line', x1: 0, x2: this.plotW, y1: 0, y2: 0 })];
      for (let v = 0; v <= domain + 1e-6; v += step) {
        const x = Math.round(v * k) + 0.5;
        grid.push(el('line', { class: 'tl-grid', x1: x, x2: x, y1: 0, y2: rowsH }));
        axis.push(el('line', { class: 'tl-axis-line', x1: x, x2: x, y1: 0, y2: 4 }));
        const anchor = v === 0 ? 'start' : (x > this.plotW - 20 ? 'end' : 'middle');
        axis.push(el('text', { class: 'tl-axis-text', x, y: 16, 'text-anchor': anchor }, axisLabel(v, domain, step)));
      }
      this.grid.replaceChildren(...grid);
      this.axis.replaceChildren(...axis);
      this.drawEnds(true);
      this.cursor.setAttribute('y2', String(rowsH));
    }

    /** Cancelled / error marks: drawn in pixels (they carry text), redrawn on rescale. */
    drawEnds(force) {
      const tl = this.tl;
      const t0 = baseOf(tl);
      const key = JSON.stringify(this.models.map((m) => tl.rows[m] && tl.rows[m].end)) + this.domain;
      if (!force && key === this.endKey) return;
      this.endKey = key;
      const out = [];
      this.models.forEach((m, i) => {
        const r = tl.rows[m];
        if (!r || !r.end || (r.end.kind !== 'cancelled' && r.end.kind !== 'error')) return;
        const at = r.end.ts !== null ? r.end.ts - t0 : lastTs(r) - t0;
        const x = Math.max(1, Math.min(this.plotW - 1, at * this.k));
        const y = i * ROW_H;
        const g = el('g', { class: `tl-end-mark ${r.end.kind}`, 'data-testid': 'timeline-end', 'data-model': m, 'data-kind': r.end.kind, 'data-ms': at });
        g.append(el('line', { class: `tl-end ${r.end.kind}`, x1: x, x2: x, y1: y + 3, y2: y + ROW_H - 3 }));
        const label = r.end.kind === 'error' ? '✕ error' : '■ stopped';
        const right = x > this.plotW - 70;
        g.append(el('text', { class: `tl-end-text ${r.end.kind}`, x: right ? x - 4 : x + 4, y: y + 12, 'text-anchor': right ? 'end' : 'start' }, label));
        g.append(el('title', null, `${m} ${r.end.kind === 'error' ? `failed${r.end.message ? `: ${r.end.message}` : ''}` : 'was stopped'} at ${fmtOffset(at)}`));
        out.push(g);
      });
      this.marks.replaceChildren(...out);
    }

    /** Stall shading, the figures table and the text equivalent. */
    updateStats() {
      this.lastStats = performance.now();
      const tl = this.tl;
      const t0 = baseOf(tl);
      this.title.textContent = this.turn.prompt ? `“${truncate(this.turn.prompt, 80)}”` : '';
      const rowsText = [];
      const trs = [];
      let partial = null;
      for (const m of this.models) {
        const row = this.rows.get(m);
        const data = tl.rows[m] || newRow();
        const a = analyse(tl, m);
        if (row) {
          const key = a.stalls.map((s) => `${s.start_ms}-${s.end_ms}`).join(',');
          if (key !== row.stallKey) {
            row.stallKey = key;
            row.stalls.replaceChildren(...a.stalls.map((s) => {
              const rect = el('rect', { class: 'tl-stall', 'data-testid': 'timeline-stall', x: s.start_ms, y: row.y + 1, width: s.gap_ms, height: ROW_H - 2 });
              rect.append(el('title', null, `stall: ${fmtDur(s.gap_ms)} without a token (${fmtOffset(s.start_ms)} → ${fmtOffset(s.end_ms)})`));
              return rect;
            }));
          }
          row.g.setAttribute('data-ticks', String(data.ticks.length));
          row.g.setAttribute('data-stalls', String(a.stalls.length));
        }
        const metrics = this.owner.metricsOf(this.turn, m) || {};
        const endText = data.end ? ({ done: 'done', cancelled: 'stopped', error: 'error' }[data.end.kind] || data.end.kind) + (data.end.ts !== null ? ` at ${fmtDur(data.end.ts - t0)}` : '') : (this.owner.isRunning(this.turn) ? 'streaming' : '—');
        const tps = metrics.tps === null || metrics.tps === undefined ? '—' : metrics.tps.toFixed(1);
        const text = `${m}: ${data.ticks.length} tokens, TTFT ${fmtDur(data.ttft)}, gap p50 ${fmtDur(a.p50)}, p99 ${fmtDur(a.p99)}, ` +
          `${a.stalls.length ? `${a.stalls.length} stall${a.stalls.length > 1 ? 's' : ''}, longest ${fmtDur(a.longest)}` : 'no stall'}` +
          `${data.tools.length ? `, ${data.tools.length} tool call${data.tools.length > 1 ? 's' : ''}` : ''}, ${endText}`;
        rowsText.push(text);
        if (row) row.g.setAttribute('aria-label', text);
        if (data.partial === 'times') partial = 'Arrival times from before the resync were not kept by the server; the rows show only what this page received.';
        else if (data.partial === 'text' && !partial) partial = 'Rebuilt from the server after a resync: the hover shows offsets but not the token text.';
        trs.push(h('tr', { 'data-model': m },
          h('th', { scope: 'row', class: 'tl-model' }, m),
          h('td', { class: 'num' }, String(data.ticks.length)),
          h('td', { class: 'num' }, fmtDur(metrics.ttft_ms !== undefined && metrics.ttft_ms !== null ? metrics.ttft_ms : data.ttft)),
          h('td', { class: 'num' }, fmtDur(metrics.total_ms)),
          h('td', { class: 'num' }, tps),
          h('td', { class: 'num', 'data-testid': 'gap-p50' }, fmtDur(a.p50)),
          h('td', { class: 'num', 'data-testid': 'gap-p99' }, fmtDur(a.p99)),
          h('td', { class: 'num', 'data-testid': 'longest-stall' }, a.longest === null ? 'none' : fmtDur(a.longest)),
          h('td', null, endText)));
      }
      this.statsBody.replaceChildren(...trs);
      this.svg.setAttribute('aria-label', `Token arrival timeline, axis 0 to ${fmtDur(this.domain)}. ${rowsText.join('. ')}. Arrow keys step through the tokens.`);
      this.svgTitle.textContent = `Token arrivals${this.turn.prompt ? ` for “${truncate(this.turn.prompt, 60)}”` : ''}`;
      this.note.hidden = !partial;
      this.note.textContent = partial || '';
      this.drawEnds(false);
    }

    // ---- hover and keyboard ----

    pointAt(model, tickIdx, timeMs) {
      const tl = this.tl;
      const t0 = baseOf(tl);
      const data = tl.rows[model] || newRow();
      const rowIdx = this.models.indexOf(model);
      const lines = [];
      let x = timeMs;
      if (tickIdx >= 0 && tickIdx < data.ticks.length) {
        const off = data.ticks[tickIdx] - t0;
        x = off;
        const text = this.owner.textOf(this.turn, model);
        const from = tickIdx ? data.ends[tickIdx - 1] : 0;
        const piece = data.partial || typeof text !== 'string' ? null : text.slice(from, data.ends[tickIdx]);
        const gap = tickIdx ? off - (data.ticks[tickIdx - 1] - t0) : null;
        lines.push(`${model} · token ${tickIdx + 1} of ${data.ticks.length}`);
        lines.push(`at +${fmtOffset(off)}${gap !== null ? ` (gap ${fmtOffset(gap)})` : ''}`);
        if (piece !== null) lines.push(`“${piece.replace(/\s/g, (c) => (c === '\n' ? '⏎' : '·'))}”`);
      } else {
        lines.push(`${model} · no token yet${timeMs !== null ? ` (+${fmtOffset(timeMs)})` : ''}`);
      }
      const at = x;
      if (data.ttft !== null && Math.abs(data.ttft - at) * (this.k || 1) < 6) lines.push(`TTFT ${fmtOffset(data.ttft)}`);
      for (const t of data.tools) {
        if (t.start === null) continue;
        const end = t.end === null ? Infinity : t.end;
        if (timeMs !== null && timeMs >= t.start - t0 && timeMs <= end - t0) {
          lines.push(`tool ${t.name}: +${fmtOffset(t.start - t0)} → ${t.end === null ? 'running' : `+${fmtOffset(t.end - t0)} (${fmtOffset(t.end - t.start)})`}`);
        }
      }
      for (const s of analyse(tl, model).stalls) {
        if (timeMs !== null && timeMs >= s.start_ms && timeMs <= s.end_ms) lines.push(`stall ${fmtDur(s.gap_ms)}`);
      }
      this.showTip(lines, x * (this.k || 1), rowIdx);
    }

    onPointer(e) {
      if (!this.models.length || !this.k) return;
      const rect = this.area.getBoundingClientRect();
      const px = e.clientX - rect.left;
      const py = e.clientY - rect.top;
      if (px < -4 || py < 0 || py > rect.height || px > rect.width + 4) { this.hideTip(); return; }
      const rowIdx = Math.max(0, Math.min(this.models.length - 1, Math.floor(py / ROW_H)));
      const model = this.models[rowIdx];
      const t = px / this.k;
      const idx = nearestTick(this.tl.rows[model] || newRow(), t + baseOf(this.tl));
      this.focus = { row: rowIdx, tick: idx };
      this.pointAt(model, idx, t);
    }

    onFocus() {
      if (!this.models.length) return;
      if (this.focus.row >= this.models.length) this.focus = { row: 0, tick: -1 };
      const data = this.tl.rows[this.models[this.focus.row]] || newRow();
      if (this.focus.tick < 0 && data.ticks.length) this.focus.tick = 0;
      this.showFocus();
    }

    showFocus() {
      const model = this.models[this.focus.row];
      const data = this.tl.rows[model] || newRow();
      const t0 = baseOf(this.tl);
      const idx = Math.min(this.focus.tick, data.ticks.length - 1);
      this.pointAt(model, idx, idx >= 0 ? data.ticks[idx] - t0 : 0);
    }

    onKey(e) {
      if (!this.models.length) return;
      const data = () => this.tl.rows[this.models[this.focus.row]] || newRow();
      const t0 = baseOf(this.tl);
      let handled = true;
      switch (e.key) {
        case 'ArrowRight': this.focus.tick = Math.min(data().ticks.length - 1, this.focus.tick + (e.shiftKey ? 10 : 1)); break;
        case 'ArrowLeft': this.focus.tick = Math.max(0, this.focus.tick - (e.shiftKey ? 10 : 1)); break;
        case 'Home': this.focus.tick = 0; break;
        case 'End': this.focus.tick = data().ticks.length - 1; break;
        case 'ArrowDown':
        case 'ArrowUp': {
          const cur = data();
          const time = this.focus.tick >= 0 && cur.ticks[this.focus.tick] !== undefined ? cur.ticks[this.focus.tick] : t0;
          this.focus.row = Math.max(0, Math.min(this.models.length - 1, this.focus.row + (e.key === 'ArrowDown' ? 1 : -1)));
          this.focus.tick = nearestTick(data(), time);
          break;
        }
        case 'Escape': this.hideTip(); return;
        default: handled = false;
      }
      if (handled) { e.preventDefault(); this.showFocus(); }
    }

    showTip(lines, xPx, rowIdx) {
      this.tip.replaceChildren(...lines.map((l, i) => h(i === 0 ? 'strong' : 'span', null, l)));
      this.tip.hidden = false;
      const left = this.labelW + xPx;
      const top = PAD_T + (rowIdx + 1) * ROW_H + 4;
      // placed through CSSOM (allowed under the CSP, unlike a style attribute)
      const tipW = this.tip.offsetWidth || 200;
      this.tip.style.left = `${Math.max(0, Math.min(this.width - tipW, left - tipW / 2))}px`;
      this.tip.style.top = `${top}px`;
      const cx = String(Math.round(xPx) + 0.5);
      this.cursor.setAttribute('x1', cx);
      this.cursor.setAttribute('x2', cx);
      this.cursor.setAttribute('y1', String(rowIdx * ROW_H));
      this.cursor.setAttribute('y2', String((rowIdx + 1) * ROW_H));
      this.cursor.classList.add('on');
    }

    hideTip() {
      this.tip.hidden = true;
      this.cursor.classList.remove('on');
    }

    exportJson() {
      return exportJson(this.turn, this.models);
    }

    /** A standalone SVG document: the drawing with its own styles, no references to the page. */
    exportSvg() {
      this.updateStats();
      const clone = this.svg.cloneNode(true);
      clone.removeAttribute('tabindex');
      clone.removeAttribute('data-testid');
      clone.setAttribute('xmlns', SVG_NS);
      clone.setAttribute('version', '1.1');
      for (const c of clone.querySelectorAll('.tl-cursor, .tl-area')) c.remove();
      const style = document.createElementNS(SVG_NS, 'style');
      style.textContent = EXPORT_CSS;
      const desc = document.createElementNS(SVG_NS, 'desc');
      desc.textContent = this.svg.getAttribute('aria-label') || '';
      clone.insertBefore(desc, clone.firstChild);
      clone.insertBefore(style, clone.firstChild);
      return `<?xml version="1.0" encoding="UTF-8"?>\n${new XMLSerializer().serializeToString(clone)}\n`;
    }
  }

  /** Folds a row's tick paths into one. */
  function mergePaths(g) {
    let d = '';
    let n = 0;
    for (const p of g.children) { d += p.getAttribute('d'); n += Number(p.getAttribute('data-n')) || 0; }
    g.replaceChildren(el('path', { class: 'tl-tick', d, 'data-n': n }));
  }

  function lastTs(r) {
    return r.ticks.length ? r.ticks[r.ticks.length - 1] : 0;
  }

  /** Index of the tick nearest to the absolute time `ts` (binary search), -1 when none. */
  function nearestTick(r, ts) {
    const a = r.ticks;
    if (!a.length) return -1;
    let lo = 0;
    let hi = a.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (a[mid] < ts) lo = mid + 1; else hi = mid;
    }
    if (lo > 0 && Math.abs(a[lo - 1] - ts) <= Math.abs(a[lo] - ts)) return lo - 1;
    return lo;
  }

  function truncate(s, n) {
    const t = String(s).replace(/\s+/g, ' ').trim();
    return t.length > n ? `${t.slice(0, n - 1)}…` : t;
  }

  function fitLabel(name, px) {
    const max = Math.max(4, Math.floor(px / 7.4));
    return name.length > max ? `${name.slice(0, max - 1)}…` : name;
  }

  function download(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = document.createElement('a');
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  /**
   * The timelines of every turn in `host`. compare.js calls `record` for each event, `sync` when
   * the turn list changes, and `touch` when a turn's data changed (drawn on the next frame).
   * opts: metricsOf(turn, model) → {ttft_ms, total_ms, tps}; textOf(turn, model) → answer text;
   * isRunning(turn) → bool.
   */
  class Timelines {
    constructor(host, opts) {
      this.host = host;
      this.opts = opts;
      this.views = new Map(); // request_id -> TurnTimeline
      this.dirty = new Set();
      this.frame = 0;
      this.skew = null; // min(local receive time - event ts): maps "now" onto the server clock
      this.lastFlush = 0;
      this.tickTimer = setInterval(() => this.tickRunning(), 500);
      if (typeof ResizeObserver === 'function') {
        let lastW = 0;
        this.resize = new ResizeObserver(() => {
          const w = host.clientWidth;
          if (w === lastW) return;
          lastW = w;
          for (const v of this.views.values()) v.layout(false);
        });
        this.resize.observe(host);
      }
    }

    metricsOf(turn, model) { return this.opts.metricsOf ? this.opts.metricsOf(turn, model) : null; }
    textOf(turn, model) { return this.opts.textOf ? this.opts.textOf(turn, model) : null; }
    isRunning(turn) { return this.opts.isRunning ? this.opts.isRunning(turn) : false; }

    liveOffset(t0) {
      if (this.skew === null) return 0;
      return Date.now() - this.skew - t0;
    }

    /** Folds an event into `turn` and schedules the drawing. */
    record(turn, ev) {
      if (typeof ev.ts === 'number' && ev.type !== 'heartbeat') {
        const s = Date.now() - ev.ts;
        if (this.skew === null || s < this.skew) this.skew = s;
      }
      if (record(turn, ev)) this.touch(turn);
    }

    fromSnapshot(turn, model, snap) {
      fromSnapshot(turn, model, snap);
      this.touch(turn);
    }

    /** Creates, orders and removes turn timelines to match `turns`. */
    sync(turns) {
      const keep = new Set();
      let prev = null;
      for (const turn of turns) {
        if (!turn.models || !turn.models.length) continue;
        keep.add(turn.request_id);
        let v = this.views.get(turn.request_id);
        if (!v) {
          v = new TurnTimeline(turn, this);
          this.views.set(turn.request_id, v);
        }
        v.setTurn(turn);
        const want = prev ? prev.nextSibling : this.host.firstChild;
        if (want !== v.root) this.host.insertBefore(v.root, want);
        prev = v.root;
        v.layout(false);
        this.touch(turn);
      }
      for (const [rid, v] of this.views) {
        if (!keep.has(rid)) { v.root.remove(); this.views.delete(rid); }
      }
      this.host.hidden = this.views.size === 0;
    }

    touch(turn) {
      const v = this.views.get(turn.request_id);
      if (!v) return;
      if (v.turn !== turn) v.setTurn(turn);
      this.dirty.add(v);
      if (!this.frame) this.frame = requestAnimationFrame((t) => this.flush(t));
    }

    flush(now) {
      // ~30 drawings a second at most: ticks 10 ms apart are not seen any sooner at 60
      if (now - this.lastFlush < FLUSH_EVERY_MS) { this.frame = requestAnimationFrame((t) => this.flush(t)); return; }
      this.lastFlush = now;
      this.frame = 0;
      const mark = typeof performance.mark === 'function';
      if (mark) performance.mark('timeline-flush-start');
      for (const v of this.dirty) {
        if (!v.root.isConnected) continue;
        v.layout(false);
        v.flush(false);
      }
      this.dirty.clear();
      if (mark) performance.measure('timeline-flush', 'timeline-flush-start');
    }

    /** Keeps a running turn's axis moving while no event arrives (a stall in progress). */
    tickRunning() {
      for (const v of this.views.values()) if (this.isRunning(v.turn)) this.touch(v.turn);
    }

    /** Drops every timeline (the conversation was cleared). */
    clear() {
      for (const v of this.views.values()) v.root.remove();
      this.views.clear();
      this.host.hidden = true;
    }

    view(requestId) { return this.views.get(requestId) || null; }
  }

  window.SwitchboardTimeline = Object.freeze({ Timelines });
}());
