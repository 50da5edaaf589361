// The compare page: one prompt fanned out to several models over a thread session (SPEC §4, §5).
// One page (index.html) served at `/` (WebSocket) and `/sse` (EventSource); the path picks the
// transport (see `pageTransport`). The WebSocket page falls back to SSE when a WebSocket cannot be
// opened while plain HTTP to the same server works.
//
// Rules this file keeps: model output is only ever inserted with textContent / text nodes (never
// innerHTML); nothing inline (the page runs under `default-src 'self'`), so bars are SVG attributes.
//
// Reload resume: the session id, the last event id and a snapshot of the view are kept together
// in sessionStorage; a reload restores the view and attaches with that last event id, so the
// server replays exactly what the snapshot has not seen (or sends `resync`).
//
// Debug/test hook: `window.__switchboard.dropConnection()` closes the live connection abruptly
// (as a network drop would); the page then reconnects with backoff and resumes the session.
// `window.__switchboard.state()` reports the transport, connection status, session and last id;
// `window.__switchboard.view()` returns a copy of the conversation as the page holds it.
(function () {
  'use strict';

  const MAX_MODELS = 8;
  const KEY_SESSION = 'switchboard.session_id';
  const KEY_LAST = 'switchboard.last_event_id';
  const KEY_VIEW = 'switchboard.view';
  const KEY_MODELS = 'switchboard.models';
  const BACKOFF_BASE_MS = 1000;
  const BACKOFF_CAP_MS = 30000;
  const LOST_AFTER_TRIES = 3;
  const PING_EVERY_MS = 20000;
  const SILENCE_LIMIT_MS = 45000;
  const VIEW_SAVE_LIMIT = 2000000; // characters of JSON kept in sessionStorage
  const SSE_EVENT_TYPES = ['session', 'ack', 'start', 'ttft', 'token', 'tool_start', 'tool_end', 'done',
    'error', 'cancelled', 'complete', 'cleared', 'resync', 'heartbeat', 'pong'];
  /** Events the token timeline is built from (timeline.js). */
  const TIMELINE_EVENTS = new Set(['ack', 'ttft', 'token', 'tool_start', 'tool_end', 'done', 'error', 'cancelled']);
  const TERMINAL = new Set(['done', 'error', 'cancelled', 'unknown']);

  const $ = (id) => document.getElementById(id);
  const ui = {
    conn: $('conn'), connText: $('conn-text'), retry: $('retry-now'),
    models: $('models'), refreshModels: $('refresh-models'),
    notice: $('notice'), noticeText: $('notice-text'), noticeClose: $('notice-close'),
    panels: $('panels'), empty: $('empty-state'), timelines: $('timelines'),
    form: $('composer'), prompt: $('prompt'), send: $('send'), stop: $('stop'), clear: $('clear'),
    temperature: $('temperature'), maxTokens: $('max-tokens'),
    sessionId: $('session-id'), transport: $('transport-label'),
  };

  // ---------------------------------------------------------------------------------------------
  // Small helpers

  const { h, svg } = window.SwitchboardDom;

  /** Puts a number and its unit into a metric value (the unit smaller), e.g. "57" + " ms". */
  function setMs(el, ms, fallback) {
    if (ms === null || ms === undefined || !isFinite(ms)) { el.textContent = fallback || '—'; return; }
    const [num, unit] = fmtMs(ms).split(' ');
    el.replaceChildren(num, h('span', { class: 'unit' }, ` ${unit}`));
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return '—';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 10000) return `${(ms / 1000).toFixed(2)} s`;
    return `${(ms / 1000).toFixed(1)} s`;
  }

  function newRequestId() {
    if (window.crypto && typeof window.crypto.randomUUID === 'function') return window.crypto.randomUUID();
    return `r-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
  }

  function store(key, value) {
    try {
      if (value === null || value === undefined) sessionStorage.removeItem(key);
      else sessionStorage.setItem(key, value);
    } catch (_) { /* storage full or disabled: reload-resume degrades, the page still works */ }
  }
  function load(key) {
    try { return sessionStorage.getItem(key); } catch (_) { return null; }
  }

  // ---------------------------------------------------------------------------------------------
  // View state: plain JSON so it can be saved for a reload.
  //
  // view.turns[i] = { request_id, prompt, models, acked, complete, local_start, started_ts,
  //                   results: { model: Result } }
  // Result = { state: sending|waiting|streaming|done|error|cancelled|unknown, text, tokens,
  //            backend, ttft_ms, total_ms, usage, finish_reason, error, tools: [...] }
  // turn.tl = the token timeline's data (timeline.js): arrival times from the events' `ts`.

  let view = { session_id: null, last_event_id: 0, turns: [] };

  function restoreView() {
    const sid = load(KEY_SESSION);
    if (!sid) return;
    let saved = null;
    try { saved = JSON.parse(load(KEY_VIEW) || 'null'); } catch (_) { saved = null; }
    if (saved && saved.session_id === sid && Array.isArray(saved.turns)) {
      view = { session_id: sid, last_event_id: Number(saved.last_event_id) || 0, turns: saved.turns };
    } else {
      // Session known but no matching snapshot: ask for everything the server still buffers.
      view = { session_id: sid, last_event_id: 0, turns: [] };
    }
  }

  let saveTimer = null;
  function markDirty() {
    if (saveTimer === null) saveTimer = setTimeout(saveView, 400);
  }
  function saveView() {
    if (saveTimer !== null) { clearTimeout(saveTimer); saveTimer = null; }
    store(KEY_SESSION, view.session_id);
    if (!view.session_id) { store(KEY_LAST, null); store(KEY_VIEW, null); return; }
    let json = JSON.stringify(view);
    if (json.length > VIEW_SAVE_LIMIT) {
      // Too big to keep: keep the session and let a reload replay (or resync) from the start.
      json = JSON.stringify({ session_id: view.session_id, last_event_id: 0, turns: [] });
    }
    store(KEY_VIEW, json);
    store(KEY_LAST, String(view.last_event_id));
  }

  function findTurn(requestId) {
    for (let i = view.turns.length - 1; i >= 0; i--) if (view.turns[i].request_id === requestId) return view.turns[i];
    return null;
  }
  function currentTurn() {
    const t = view.turns[view.turns.length - 1];
    return t && !t.complete ? t : null;
  }
  function newResult(state) {
    return { state, text: '', tokens: 0, backend: null, ttft_ms: null, total_ms: null, usage: null,
      finish_reason: null, error: null, tools: [] };
  }
  function ensureTurn(requestId, models, prompt) {
    let t = findTurn(requestId);
    if (!t) {
      t = { request_id: requestId, prompt: prompt === undefined ? null : prompt, models: [], acked: false,
        complete: false, local_start: null, started_ts: null, results: {} };
      view.turns.push(t);
    }
    for (const m of models || []) ensureResult(t, m);
    return t;
  }
  function ensureResult(turn, model) {
    if (!turn.results[model]) {
      turn.results[model] = newResult('waiting');
      if (!turn.models.includes(model)) turn.models.push(model);
    }
    return turn.results[model];
  }

  // ---------------------------------------------------------------------------------------------
  // Model picker

  let available = []; // [{id, backends, healthy_backends}]
  let selected = [];

  function initialSelection() {
    const fromUrl = new URLSearchParams(location.search).get('models');
    if (fromUrl) return fromUrl.split(',').map((s) => s.trim()).filter(Boolean).slice(0, MAX_MODELS);
    try {
      const saved = JSON.parse(load(KEY_MODELS) || 'null');
      if (Array.isArray(saved)) return saved.filter((m) => typeof m === 'string').slice(0, MAX_MODELS);
    } catch (_) { /* ignore */ }
    return null;
  }

  async function loadModels() {
    ui.refreshModels.disabled = true;
    try {
      const r = await fetch('/v1/models', { cache: 'no-store' });
      if (!r.ok) throw new Error(await errorText(r));
      const j = await r.json();
      setAvailable((j.data || []).map((m) => ({ id: String(m.id), backends: m.backends, healthy_backends: m.healthy_backends })));
    } catch (e) {
      if (!available.length) {
        ui.models.replaceChildren(h('span', { class: 'muted' }, `Could not load the model list (${e.message}). It will come with the session.`));
      }
    } finally {
      ui.refreshModels.disabled = false;
    }
  }

  function setAvailable(list) {
    available = list.slice().sort((a, b) => a.id.localeCompare(b.id));
    const ids = new Set(available.map((m) => m.id));
    const initial = selected.length ? selected : initialSelection();
    if (initial === null) {
      const preferred = ['demo-fast', 'demo-slow-thinker', 'demo-tools'].filter((m) => ids.has(m));
      selected = preferred.length ? preferred : available.slice(0, 3).map((m) => m.id);
    } else {
      selected = initial.filter((m) => ids.has(m));
    }
    renderPicker();
    renderPanels();
  }

  function mergeModelsAvailable(names) {
    if (!Array.isArray(names) || available.length) return;
    setAvailable(names.map((n) => (typeof n === 'string' ? { id: n } : { id: String(n.id || n.name) })));
  }

  function renderPicker() {
    if (!available.length) {
      ui.models.replaceChildren(h('span', { class: 'muted' }, 'No models are registered yet. Register a backend on the dashboard.'));
      return;
    }
    const full = selected.length >= MAX_MODELS;
    const chips = available.map((m) => {
      const checked = selected.includes(m.id);
      const unhealthy = m.healthy_backends === 0;
      const box = h('input', { type: 'checkbox', value: m.id, 'data-testid': 'model-checkbox', 'aria-label': m.id });
      box.checked = checked;
      box.disabled = !checked && full;
      box.addEventListener('change', () => toggleModel(m.id, box.checked));
      const meta = (m.backends !== undefined && m.backends !== null)
        ? h('span', { class: 'chip-meta', title: `${m.healthy_backends} of ${m.backends} backends healthy` }, `${m.healthy_backends}/${m.backends}`)
        : null;
      return h('label', { class: `chip${checked ? ' on' : ''}${unhealthy ? ' warn' : ''}`, 'data-testid': 'model-option', 'data-model': m.id },
        box, h('span', { class: 'chip-name' }, m.id), meta);
    });
    ui.models.replaceChildren(...chips);
  }

  function toggleModel(id, on) {
    if (on && !selected.includes(id) && selected.length < MAX_MODELS) selected.push(id);
    if (!on) selected = selected.filter((m) => m !== id);
    store(KEY_MODELS, JSON.stringify(selected));
    renderPicker();
    renderPanels();
    updateComposer();
  }

  // ---------------------------------------------------------------------------------------------
  // Panels: one per model (selected models plus any model with answers in this conversation).

  const panels = new Map(); // model -> {root, status, stopBtn, metrics:{...}, backend, transcript, cells: Map}

  // The token-arrival timelines under the panels, one per turn (timeline.js).
  const timelines = new window.SwitchboardTimeline.Timelines(ui.timelines, {
    metricsOf: (turn, model) => {
      const r = turn.results[model];
      return r ? { ttft_ms: r.ttft_ms, total_ms: r.total_ms, tps: tokensPerSecond(r) } : null;
    },
    textOf: (turn, model) => (turn.results[model] ? turn.results[model].text : null),
    isRunning: (turn) => !turn.complete && turn.models.some((m) => turn.results[m] && !TERMINAL.has(turn.results[m].state)),
  });

  function panelModels() {
    const out = [];
    for (const t of view.turns) for (const m of t.models) if (!out.includes(m)) out.push(m);
    for (const m of selected) if (!out.includes(m)) out.push(m);
    return out;
  }

  function metricBox(testid, label, hint) {
    const value = h('dd', { class: 'metric-value' }, '—');
    const sub = h('span', { class: 'metric-sub' });
    const root = h('div', { class: 'metric', 'data-testid': testid, title: hint }, h('dt', null, label), value, sub);
    return { root, value, sub };
  }

  function createPanel(model) {
    const status = h('span', { class: 'badge', 'data-testid': 'panel-status' }, 'ready');
    const stopBtn = h('button', { type: 'button', class: 'ghost small', 'data-testid': 'panel-stop', title: `Stop ${model} only`, hidden: true }, 'Stop');
    stopBtn.addEventListener('click', () => stopModel(model));
    const metrics = {
      ttft: metricBox('metric-ttft', 'TTFT', 'time to first token, from the start of the turn'),
      total: metricBox('metric-total', 'Total', 'time until the answer ended'),
      tokens: metricBox('metric-tokens', 'Tokens', 'prompt (in) / completion (out) tokens'),
      tps: metricBox('metric-tps', 'Tok/s', 'completion tokens per second after the first token'),
    };
    const backend = h('div', { class: 'panel-backend', 'data-testid': 'metric-backend' }, 'backend —');
    const transcript = h('div', { class: 'transcript', 'data-testid': 'transcript' });
    const root = h('article', { class: 'panel', 'data-testid': 'panel', 'data-model': model, 'data-state': 'ready' },
      h('header', { class: 'panel-head' }, h('h2', { class: 'panel-model', title: model }, model), status, stopBtn),
      h('dl', { class: 'metrics' }, metrics.ttft.root, metrics.total.root, metrics.tokens.root, metrics.tps.root),
      backend, transcript);
    return { model, root, status, stopBtn, metrics, backend, transcript, cells: new Map() };
  }

  /** Reconciles the panel grid with the view (cheap; called on structural changes). */
  function renderPanels() {
    const models = panelModels();
    for (const [m, p] of panels) {
      if (!models.includes(m)) { p.root.remove(); panels.delete(m); }
    }
    ui.empty.hidden = models.length > 0;
    let prev = null;
    for (const m of models) {
      let p = panels.get(m);
      if (!p) { p = createPanel(m); panels.set(m, p); }
      const want = prev ? prev.nextSibling : ui.panels.firstChild;
      if (want !== p.root) ui.panels.insertBefore(p.root, want);
      prev = p.root;
      // cells of turns for this model
      const live = new Set();
      for (const t of view.turns) {
        if (!t.results[m]) continue;
        live.add(t.request_id);
        renderCell(t, m);
      }
      for (const [rid, cell] of p.cells) if (!live.has(rid)) { cell.root.remove(); p.cells.delete(rid); }
      p.root.classList.toggle('unselected', !selected.includes(m) && !(currentTurn() && currentTurn().results[m]));
      renderPanelHead(m);
    }
    ui.panels.dataset.count = String(models.length);
    renderBest();
    timelines.sync(view.turns);
  }

  function latestResult(model) {
    for (let i = view.turns.length - 1; i >= 0; i--) {
      const r = view.turns[i].results[model];
      if (r) return { turn: view.turns[i], r };
    }
    return null;
  }

  function tokensPerSecond(r) {
    const completion = r.usage && typeof r.usage.completion_tokens === 'number' ? r.usage.completion_tokens : null;
    if (completion === null || !r.total_ms) return null;
    const decode = r.ttft_ms !== null && r.ttft_ms !== undefined ? r.total_ms - r.ttft_ms : r.total_ms;
    const secs = (decode > 50 ? decode : r.total_ms) / 1000;
    return secs > 0 ? completion / secs : null;
  }

  function elapsedFor(turn) {
    const start = turn.local_start || turn.started_ts;
    return start ? Math.max(0, Date.now() - start) : null;
  }

  const STATE_LABEL = {
    ready: 'ready', sending: 'sending', waiting: 'waiting', streaming: 'streaming', done: 'done',
    error: 'error', cancelled: 'stopped', unknown: 'ended',
  };

  function renderPanelHead(model) {
    const p = panels.get(model);
    if (!p) return;
    const latest = latestResult(model);
    const state = latest ? latest.r.state : 'ready';
    p.root.dataset.state = state;
    p.status.textContent = STATE_LABEL[state] || state;
    p.status.className = `badge state-${state}`;
    p.stopBtn.hidden = !(latest && !latest.turn.complete && !TERMINAL.has(state) && state !== 'sending');
    const m = p.metrics;
    if (!latest) {
      for (const box of Object.values(m)) { box.value.textContent = '—'; box.sub.textContent = ''; }
      p.backend.replaceChildren('backend —');
      return;
    }
    const { turn, r } = latest;
    const running = !TERMINAL.has(r.state);
    setMs(m.ttft.value, r.ttft_ms, running ? '…' : '—');
    m.ttft.sub.textContent = r.ttft_ms !== null ? 'first token' : running ? 'waiting' : '';
    if (r.total_ms !== null) {
      setMs(m.total.value, r.total_ms);
      m.total.sub.textContent = r.state === 'done' ? 'complete' : STATE_LABEL[r.state] || '';
    } else if (running) {
      setMs(m.total.value, elapsedFor(turn));
      m.total.sub.textContent = 'running…';
    } else {
      m.total.value.textContent = '—';
      m.total.sub.textContent = '';
    }
    if (r.usage) {
      m.tokens.value.replaceChildren(String(r.usage.prompt_tokens ?? '—'), h('span', { class: 'slash' }, ' / '), String(r.usage.completion_tokens ?? '—'));
      m.tokens.sub.textContent = r.usage.estimated ? 'in / out (est.)' : 'in / out';
    } else {
      m.tokens.value.textContent = r.tokens ? `~${r.tokens}` : '—';
      m.tokens.sub.textContent = r.tokens ? 'out so far' : '';
    }
    const tps = tokensPerSecond(r);
    m.tps.value.textContent = tps === null ? '—' : tps.toFixed(tps < 10 ? 1 : 0);
    m.tps.sub.textContent = tps === null ? '' : 'completion';
    if (r.backend) {
      p.backend.replaceChildren('backend ', h('code', { title: r.backend }, String(r.backend).slice(0, 8)));
    } else {
      p.backend.replaceChildren('backend —');
    }
  }

  /** Marks the fastest TTFT / total and the highest tok/s of the latest turn. */
  function renderBest() {
    for (const p of panels.values()) for (const box of Object.values(p.metrics)) box.root.classList.remove('best');
    const turn = view.turns[view.turns.length - 1];
    if (!turn || !turn.complete) return; // judge a race only when every model has finished
    const done = turn.models.filter((m) => turn.results[m] && turn.results[m].state === 'done' && panels.has(m));
    if (done.length < 2) return;
    const pick = (key, f, better) => {
      let bestM = null; let bestV = null;
      for (const m of done) {
        const v = f(turn.results[m]);
        if (v === null || v === undefined || !isFinite(v)) continue;
        if (bestV === null || better(v, bestV)) { bestV = v; bestM = m; }
      }
      if (bestM) panels.get(bestM).metrics[key].root.classList.add('best');
    };
    pick('ttft', (r) => r.ttft_ms, (a, b) => a < b);
    pick('total', (r) => r.total_ms, (a, b) => a < b);
    pick('tps', tokensPerSecond, (a, b) => a > b);
  }

  function createCell(turn, model) {
    const prompt = h('p', { class: 'turn-prompt', 'data-testid': 'turn-prompt' });
    const textNode = document.createTextNode('');
    const text = h('div', { class: 'turn-text', 'data-testid': 'turn-text' }, textNode);
    const caret = h('span', { class: 'caret', 'aria-hidden': 'true' });
    const status = h('div', { class: 'turn-status', 'data-testid': 'turn-status' });
    const tools = h('div', { class: 'tools', 'data-testid': 'tool-timeline', hidden: true });
    const foot = h('div', { class: 'turn-foot', 'data-testid': 'turn-metrics' });
    const root = h('section', { class: 'turn', 'data-testid': 'turn', 'data-request-id': turn.request_id },
      prompt, h('div', { class: 'answer' }, text, caret), tools, status, foot);
    return { root, prompt, text, textNode, caret, status, tools, foot, toolsKey: '' };
  }

  function renderCell(turn, model) {
    const p = panels.get(model);
    const r = turn.results[model];
    if (!p || !r) return;
    let cell = p.cells.get(turn.request_id);
    if (!cell) {
      cell = createCell(turn, model);
      p.cells.set(turn.request_id, cell);
      // keep transcript order = turn order
      const idx = view.turns.indexOf(turn);
      let before = null;
      for (let i = idx + 1; i < view.turns.length && !before; i++) {
        const c = p.cells.get(view.turns[i].request_id);
        if (c) before = c.root;
      }
      p.transcript.insertBefore(cell.root, before);
    }
    cell.root.dataset.state = r.state;
    cell.prompt.textContent = turn.prompt === null ? '(prompt not known here: sent from another tab or restored from the server)' : turn.prompt;
    cell.prompt.classList.toggle('unknown', turn.prompt === null);
    if (cell.textNode.data !== r.text) cell.textNode.data = r.text;
    pendingText.delete(cell); // r.text already holds any text queued for the next frame
    cell.text.classList.toggle('empty', !r.text);
    cell.caret.hidden = r.state !== 'streaming';
    let status = '';
    if (r.state === 'sending') status = 'sending…';
    else if (r.state === 'waiting') status = r.backend ? 'waiting for the first token…' : 'waiting for a backend…';
    else if (r.state === 'error') status = `error${r.error && r.error.code ? ` (${r.error.code})` : ''}: ${(r.error && r.error.message) || 'the model failed'}${r.error && r.error.retryable ? ' — you can try again' : ''}`;
    else if (r.state === 'cancelled') status = 'stopped — the text so far is kept';
    else if (r.state === 'unknown') status = 'ended while the page was disconnected';
    else if (r.state === 'done' && !r.text) status = r.tools.length ? 'no text: the model answered with tool calls' : 'empty answer';
    cell.status.textContent = status;
    cell.status.className = `turn-status status-${r.state}`;
    renderTools(cell, turn, r);
    if (r.state === 'done') {
      const parts = [`TTFT ${fmtMs(r.ttft_ms)}`, `total ${fmtMs(r.total_ms)}`];
      if (r.usage) parts.push(`${r.usage.completion_tokens} tokens${r.usage.estimated ? ' (est.)' : ''}`);
      const tps = tokensPerSecond(r);
      if (tps !== null) parts.push(`${tps.toFixed(1)} tok/s`);
      if (r.finish_reason) parts.push(`finish: ${r.finish_reason}`);
      cell.foot.textContent = parts.join(' · ');
    } else {
      cell.foot.textContent = '';
    }
  }

  /** The tool timeline of one answer: a row per call with an SVG bar placed on the turn's clock. */
  function renderTools(cell, turn, r) {
    const key = JSON.stringify([r.tools, r.total_ms, r.state]);
    if (key === cell.toolsKey) return;
    cell.toolsKey = key;
    cell.tools.hidden = r.tools.length === 0;
    if (!r.tools.length) { cell.tools.replaceChildren(); return; }
    const t0 = turn.started_ts || (r.tools[0] && r.tools[0].start_ts) || 0;
    let span = r.total_ms || 0;
    for (const tool of r.tools) {
      const end = (tool.start_ts ? tool.start_ts - t0 : 0) + (tool.ms || 0);
      if (end > span) span = end;
    }
    if (!span) span = 1;
    const rows = r.tools.map((tool) => {
      const offset = tool.start_ts && t0 ? Math.max(0, tool.start_ts - t0) : 0;
      const x = Math.min(99, (offset / span) * 100);
      const w = tool.ms !== null && tool.ms !== undefined ? Math.max(1.5, (tool.ms / span) * 100) : Math.max(1.5, 100 - x);
      const track = svg('svg', { class: 'tool-track', viewBox: '0 0 100 8', preserveAspectRatio: 'none', 'aria-hidden': 'true' });
      track.append(svg('rect', { x: 0, y: 3, width: 100, height: 2, class: 'track-line' }));
      if (r.ttft_ms) track.append(svg('rect', { x: Math.min(99.5, (r.ttft_ms / span) * 100), y: 0, width: 0.5, height: 8, class: 'track-ttft' }));
      track.append(svg('rect', { x, y: 1, width: Math.min(w, 100 - x), height: 6, rx: 1, class: `track-bar ${tool.state}` }));
      const args = tool.arguments === null || tool.arguments === undefined ? '' : (typeof tool.arguments === 'string' ? tool.arguments : JSON.stringify(tool.arguments));
      return h('div', { class: `tool ${tool.state}`, 'data-testid': 'tool-item', 'data-name': tool.name, 'data-state': tool.state },
        h('span', { class: 'tool-name' }, tool.name || '(tool)'),
        track,
        h('span', { class: 'tool-ms' }, tool.state === 'done' ? fmtMs(tool.ms) : 'running…'),
        args ? h('code', { class: 'tool-args', title: args }, args) : null);
    });
    cell.tools.replaceChildren(h('div', { class: 'tools-title' }, `Tool calls (${r.tools.length})`), ...rows);
  }

  // Streamed text is appended once per animation frame per answer, and the "stick to the bottom"
  // check reads every panel's scroll position before any write: one layout per frame instead of
  // one per token (at 4 × 100 tokens/s the per-token version cost most of each frame).
  const pendingText = new Map(); // cell -> {p, text}
  const TEXT_EVERY_MS = 30;
  let textFrame = 0;

  function appendToken(turn, model, content) {
    const p = panels.get(model);
    const cell = p && p.cells.get(turn.request_id);
    if (!cell) { renderPanels(); return; }
    const queued = pendingText.get(cell);
    if (queued) queued.text += content;
    else pendingText.set(cell, { p, text: content });
    if (!textFrame) textFrame = requestAnimationFrame(flushText);
  }

  let lastTextFlush = 0;
  function flushText(now) {
    // at most ~30 text updates a second: streaming reads the same, and each update costs a
    // layout and a repaint of the growing answers
    if (now - lastTextFlush < TEXT_EVERY_MS) { textFrame = requestAnimationFrame(flushText); return; }
    lastTextFlush = now;
    textFrame = 0;
    const entries = [...pendingText.entries()];
    pendingText.clear();
    const stick = new Map();
    for (const [, e] of entries) if (!stick.has(e.p)) stick.set(e.p, isNearBottom(e.p.transcript));
    for (const [cell, e] of entries) {
      cell.textNode.appendData(e.text);
      cell.text.classList.remove('empty');
    }
    for (const [p, s] of stick) if (s) p.transcript.scrollTop = p.transcript.scrollHeight;
  }

  function isNearBottom(box) {
    return box.scrollHeight - box.scrollTop - box.clientHeight < 48;
  }

  function refresh(turn, model) {
    if (!panels.has(model)) { renderPanels(); return; }
    const p = panels.get(model);
    const stick = isNearBottom(p.transcript);
    renderCell(turn, model);
    renderPanelHead(model);
    if (stick) p.transcript.scrollTop = p.transcript.scrollHeight;
  }

  // A light ticker for the running clocks ("Total … running").
  setInterval(() => {
    const t = currentTurn();
    if (!t) return;
    for (const m of t.models) {
      const r = t.results[m];
      if (r && !TERMINAL.has(r.state)) renderPanelHead(m);
    }
  }, 200);

  // ---------------------------------------------------------------------------------------------
  // Events from the server (the same JSON over WebSocket and SSE)

  let sessionLastId = 0; // `last_event_id` announced by the `session` event, used after a resync

  function handleEvent(ev) {
    if (!ev || typeof ev !== 'object') return;
    lastReceived = Date.now();
    if (typeof ev.id === 'number') {
      if (ev.id <= view.last_event_id) return; // seen already (at-least-once delivery)
      view.last_event_id = ev.id;
      markDirty();
    }
    const turn = ev.request_id ? findTurn(ev.request_id) : null;
    const r = turn && ev.model ? turn.results[ev.model] : null;
    switch (ev.type) {
      case 'session': onSession(ev); break;
      case 'ack': {
        const t = ensureTurn(ev.request_id, ev.models || [], typeof ev.content === 'string' ? ev.content : undefined);
        if (t.prompt === null && typeof ev.content === 'string') t.prompt = ev.content;
        t.acked = true;
        if (Array.isArray(ev.models) && ev.models.length) {
          // the server decides which models run; drop optimistic results it did not accept
          for (const m of t.models.filter((x) => !ev.models.includes(x))) delete t.results[m];
          t.models = t.models.filter((x) => ev.models.includes(x));
        }
        if (ev.ts && !t.started_ts) t.started_ts = ev.ts;
        for (const m of t.models) if (t.results[m].state === 'sending') t.results[m].state = 'waiting';
        renderPanels();
        break;
      }
      case 'start': if (r) { r.backend = ev.backend || r.backend; if (r.state === 'sending') r.state = 'waiting'; refresh(turn, ev.model); } break;
      case 'ttft': if (r) { r.ttft_ms = ev.ms; if (!TERMINAL.has(r.state)) r.state = 'streaming'; refresh(turn, ev.model); } break;
      case 'token':
        if (r && typeof ev.content === 'string') {
          r.text += ev.content;
          r.tokens += 1;
          if (r.state !== 'streaming' && !TERMINAL.has(r.state)) { r.state = 'streaming'; refresh(turn, ev.model); }
          appendToken(turn, ev.model, ev.content);
        }
        break;
      case 'tool_start':
        if (r) {
          if (!r.tools.some((x) => x.id === ev.tool_call_id)) {
            r.tools.push({ id: ev.tool_call_id, name: ev.name, arguments: null, ms: null, start_ts: ev.ts || null, state: 'running' });
          }
          if (!TERMINAL.has(r.state)) r.state = 'streaming';
          refresh(turn, ev.model);
        }
        break;
      case 'tool_end':
        if (r) {
          let tool = r.tools.find((x) => x.id === ev.tool_call_id);
          if (!tool) {
            tool = { id: ev.tool_call_id, name: ev.name, arguments: null, ms: null, start_ts: ev.ts && ev.ms ? ev.ts - ev.ms : null, state: 'running' };
            r.tools.push(tool);
          }
          tool.name = ev.name || tool.name;
          tool.arguments = ev.arguments === undefined ? null : ev.arguments;
          tool.ms = typeof ev.ms === 'number' ? ev.ms : null;
          tool.state = 'done';
          refresh(turn, ev.model);
        }
        break;
      case 'done':
        if (r) {
          r.state = 'done';
          if (typeof ev.ttft_ms === 'number') r.ttft_ms = ev.ttft_ms;
          if (typeof ev.total_ms === 'number') r.total_ms = ev.total_ms;
          r.usage = ev.usage || null;
          r.finish_reason = ev.finish_reason || null;
          for (const tool of r.tools) if (tool.state === 'running') tool.state = 'done';
          refresh(turn, ev.model);
          renderBest();
        }
        break;
      case 'error': onError(ev, turn, r); break;
      case 'cancelled':
        if (turn) {
          const models = ev.model ? [ev.model] : turn.models;
          for (const m of models) {
            const x = turn.results[m];
            if (x && !TERMINAL.has(x.state)) { x.state = 'cancelled'; if (x.total_ms === null) x.total_ms = elapsedFor(turn); refresh(turn, m); }
          }
        }
        break;
      case 'complete':
        if (turn) {
          turn.complete = true;
          for (const m of turn.models) {
            const x = turn.results[m];
            if (x && !TERMINAL.has(x.state)) x.state = 'unknown';
          }
          renderPanels();
        }
        break;
      case 'resync': onResync(ev); break;
      case 'cleared': onCleared(); break;
      default: break; // heartbeat, pong, future types
    }
    if (ev.request_id && TIMELINE_EVENTS.has(ev.type)) {
      const t = findTurn(ev.request_id);
      if (t) timelines.record(t, ev);
    }
    updateComposer();
  }

  /** The history was cleared by any connection of the session (SPEC §4.2): empty the view. */
  function onCleared() {
    view.turns = [];
    for (const p of panels.values()) p.root.remove();
    panels.clear();
    timelines.clear();
    renderPanels();
    saveView();
  }

  function onError(ev, turn, r) {
    const message = ev.message || ev.code || 'error';
    if (r) {
      r.state = 'error';
      r.error = { code: ev.code || null, message, retryable: !!ev.retryable };
      if (r.total_ms === null && turn) r.total_ms = null;
      refresh(turn, ev.model);
      return;
    }
    if (turn) {
      if (ev.code === 'busy' && !turn.acked) {
        // our send was refused because another turn is running: drop the optimistic turn
        view.turns = view.turns.filter((t) => t !== turn);
        if (!ui.prompt.value) ui.prompt.value = turn.prompt || '';
        renderPanels();
        showNotice('A turn is still running in this session — wait for it or press Stop, then send again.');
        return;
      }
      // a turn-level failure (invalid request, unknown model…): the turn ends here
      for (const m of turn.models) {
        const x = turn.results[m];
        if (x && !TERMINAL.has(x.state)) { x.state = 'error'; x.error = { code: ev.code || null, message, retryable: !!ev.retryable }; }
      }
      turn.complete = true;
      renderPanels();
      showNotice(`The turn failed: ${message}`);
      return;
    }
    showNotice(`Server says: ${message}${ev.code ? ` (${ev.code})` : ''}`);
  }

  function mapSnapshotState(s) {
    const v = String(s || '').toLowerCase();
    if (['done', 'complete', 'completed', 'finished', 'ok'].includes(v)) return 'done';
    if (['error', 'failed', 'failure'].includes(v)) return 'error';
    if (['cancelled', 'canceled', 'stopped'].includes(v)) return 'cancelled';
    if (v === 'interrupted') return 'unknown'; // in flight when the broker stopped (SPEC §4.4)
    if (['streaming', 'running', 'started', 'active', 'in_progress'].includes(v)) return 'streaming';
    return 'waiting'; // pending
  }

  function onResync(ev) {
    const snap = ev.snapshot || {};
    // `resync` has no id: the live events after it continue from the session's last id
    if (typeof ev.id !== 'number' && sessionLastId > view.last_event_id) view.last_event_id = sessionLastId;
    markDirty();
    if (!ev.request_id) { renderPanels(); return; } // the session has had no turn yet
    const turn = ensureTurn(ev.request_id, Object.keys(snap));
    turn.acked = true;
    // turns before the resynced one ended while we were away
    for (const t of view.turns) {
      if (t === turn) break;
      if (!t.complete) {
        t.complete = true;
        for (const m of t.models) if (!TERMINAL.has(t.results[m].state)) t.results[m].state = 'unknown';
      }
    }
    for (const [model, s] of Object.entries(snap)) {
      const r = ensureResult(turn, model);
      const metrics = (s && s.metrics) || {};
      r.text = typeof s.content === 'string' ? s.content : r.text;
      r.state = mapSnapshotState(s.state);
      for (const k of ['ttft_ms', 'total_ms', 'finish_reason', 'backend']) if (metrics[k] !== undefined) r[k] = metrics[k];
      if (metrics.usage) r.usage = metrics.usage;
      if (typeof metrics.tokens === 'number') r.tokens = metrics.tokens;
      if (s.backend) r.backend = s.backend;
      const err = s.error || metrics.error;
      if (err) r.error = typeof err === 'string' ? { code: null, message: err, retryable: false } : err;
      const tools = metrics.tool_calls || metrics.tools || s.tools;
      if (Array.isArray(tools)) {
        r.tools = tools.map((t) => ({ id: t.tool_call_id || t.id, name: t.name, arguments: t.arguments ?? null,
          ms: typeof t.ms === 'number' ? t.ms : null, start_ts: t.ts || t.start_ts || null, state: typeof t.ms === 'number' ? 'done' : 'running' }));
      }
      timelines.fromSnapshot(turn, model, s);
    }
    turn.complete = turn.models.every((m) => TERMINAL.has(turn.results[m].state));
    // rebuild this turn's cells from scratch
    for (const p of panels.values()) {
      const c = p.cells.get(turn.request_id);
      if (c) { c.root.remove(); p.cells.delete(turn.request_id); }
    }
    renderPanels();
  }

  // ---------------------------------------------------------------------------------------------
  // Connection (WebSocket or SSE), reconnect with backoff, resume

  // `/sse` is the same document as `/`: mark it as the SSE page and say so in the chrome.
  function pageTransport() {
    if (location.pathname !== '/sse') return 'ws';
    document.body.dataset.transport = 'sse';
    document.title = 'switchboard · compare models (SSE)';
    for (const a of document.querySelectorAll('.nav a')) {
      if (a.getAttribute('href') === '/sse') a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    const tag = document.createElement('span');
    tag.className = 'tag';
    tag.textContent = 'SSE';
    $('picker-title').append(' ', tag);
    ui.transport.textContent = 'SSE';
    return 'sse';
  }

  const conn = {
    transport: pageTransport(),
    fellBack: false,
    status: 'connecting',
    attempts: 0, // failed tries since the last working connection
    timer: null,
    nextAt: 0,
    ws: null,
    es: null,
    attached: false,
    everOpenedWs: false,
    wsOpenFailures: 0,
    gen: 0,
  };
  let lastReceived = Date.now();
  let pendingCheck = null;

  function setStatus(status) {
    conn.status = status;
    ui.conn.dataset.state = status;
    ui.retry.hidden = status !== 'lost';
    renderStatusText();
    updateComposer();
  }

  function renderStatusText() {
    const wait = conn.timer ? Math.max(0, conn.nextAt - Date.now()) : 0;
    const next = conn.timer ? ` in ${(wait / 1000).toFixed(wait < 10000 ? 1 : 0)} s` : '…';
    let text;
    switch (conn.status) {
      case 'open': text = conn.transport === 'sse' ? 'Connected (SSE)' : 'Connected'; break;
      case 'reconnecting': text = `Reconnecting${next}`; break;
      // SPEC §7's words; the "retry now" button follows the text. Retries go on meanwhile.
      case 'lost': text = 'connection lost — '; break;
      default: text = 'Connecting…';
    }
    ui.connText.textContent = text;
    ui.conn.title = conn.status === 'lost' && conn.timer ? `still trying: next attempt${next}` : '';
  }
  setInterval(() => { if (conn.timer) renderStatusText(); }, 250);

  function clearTimer() {
    if (conn.timer) { clearTimeout(conn.timer); conn.timer = null; }
  }

  /** Backoff: 1 s, 2 s, 4 s … capped at 30 s, full jitter (a random wait up to the cap). */
  function scheduleReconnect() {
    clearTimer();
    const cap = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(conn.attempts, 15));
    const delay = Math.random() * cap;
    conn.nextAt = Date.now() + delay;
    conn.timer = setTimeout(() => { conn.timer = null; connect(); }, delay);
    setStatus(conn.attempts >= LOST_AFTER_TRIES ? 'lost' : 'reconnecting');
  }

  function connect() {
    clearTimer();
    conn.attached = false;
    if (conn.status !== 'lost') setStatus(conn.attempts > 0 || view.session_id ? 'reconnecting' : 'connecting');
    else renderStatusText();
    if (conn.transport === 'ws' && typeof window.WebSocket === 'function') wsConnect();
    else sseConnect();
  }

  function hello() {
    return view.session_id
      ? { type: 'hello', session_id: view.session_id, last_event_id: view.last_event_id }
      : { type: 'hello' };
  }

  function wsConnect() {
    const gen = ++conn.gen;
    let opened = false;
    let attached = false;
    let ws;
    try {
      ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
    } catch (_) {
      onWsClosed(gen, 1006, false, false);
      return;
    }
    conn.ws = ws;
    ws.onopen = () => {
      if (conn.gen !== gen) return;
      opened = true;
      conn.everOpenedWs = true;
      ws.send(JSON.stringify(hello()));
    };
    ws.onmessage = (msg) => {
      if (conn.gen !== gen) return;
      let ev;
      try { ev = JSON.parse(msg.data); } catch (_) { return; }
      if (ev && ev.type === 'session') attached = true;
      handleEvent(ev);
    };
    ws.onerror = () => { /* a close event follows */ };
    ws.onclose = (e) => {
      if (conn.gen !== gen) return;
      conn.ws = null;
      onWsClosed(gen, e.code, opened, attached);
    };
  }

  const CLOSE_REASONS = {
    4001: 'The session expired — starting a new conversation.',
    4029: 'Too many connections from your address — close other switchboard tabs.',
    4503: 'The server is busy or restarting — reconnecting.',
    4009: 'The connection fell behind — reconnecting and resuming.',
    4400: 'The server did not accept the handshake — reconnecting.',
    1008: 'Not authorised — reload the page to sign in again.',
    1009: 'A message was too large for the server (prompt over 1 MiB?).',
  };

  async function onWsClosed(gen, code, opened, attached) {
    conn.attached = false;
    if (!attached) conn.attempts += 1;
    if (!opened) conn.wsOpenFailures += 1;
    const reason = CLOSE_REASONS[code];
    if (code === 4001) {
      sessionExpired();
      conn.attempts = 0;
      connect();
      return;
    }
    if (reason && code !== 4009) showNotice(reason);
    if (!opened && !conn.everOpenedWs && conn.wsOpenFailures >= 2 && await httpWorks()) {
      if (conn.gen !== gen) return;
      // WebSockets are blocked somewhere on the way, plain HTTP works: use the SSE transport.
      conn.transport = 'sse';
      conn.fellBack = true;
      conn.attempts = 0;
      ui.transport.textContent = 'SSE (WebSocket unavailable)';
      connect();
      return;
    }
    if (conn.gen !== gen) return;
    scheduleReconnect();
  }

  async function httpWorks() {
    try {
      const r = await fetch('/health', { cache: 'no-store' });
      return r.status < 500;
    } catch (_) { return false; }
  }

  async function sseConnect() {
    const gen = ++conn.gen;
    if (!view.session_id) {
      try {
        const r = await fetch('/api/sessions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
        if (!r.ok) throw new Error(await errorText(r));
        const j = await r.json();
        if (conn.gen !== gen) return;
        startSession(j.session_id);
      } catch (e) {
        if (conn.gen !== gen) return;
        conn.attempts += 1;
        scheduleReconnect();
        return;
      }
    }
    const sid = view.session_id;
    let attached = false;
    const es = new EventSource(`/api/sessions/${encodeURIComponent(sid)}/events?last_event_id=${view.last_event_id}`);
    conn.es = es;
    const attach = () => {
      if (attached) return;
      attached = true;
      conn.attempts = 0;
      conn.attached = true;
      setStatus('open');
      checkUnacked();
    };
    es.onopen = () => { if (conn.gen === gen) attach(); };
    const onMessage = (e) => {
      if (conn.gen !== gen) return;
      let ev;
      try { ev = JSON.parse(e.data); } catch (_) { return; }
      if (!ev || typeof ev !== 'object') return;
      if (!ev.type) ev.type = e.type === 'message' ? undefined : e.type;
      if (typeof ev.id !== 'number' && e.lastEventId && /^\d+$/.test(e.lastEventId) && ev.type !== 'heartbeat' && ev.type !== 'session') {
        ev.id = Number(e.lastEventId);
      }
      attach();
      handleEvent(ev);
    };
    for (const t of SSE_EVENT_TYPES) es.addEventListener(t, onMessage);
    es.onmessage = onMessage;
    es.onerror = async (e) => {
      // A server `event: error` (a model failed) is a MessageEvent with data, handled by
      // onMessage like every other event; only a transport error has none.
      if (e instanceof MessageEvent) return;
      if (conn.gen !== gen) return;
      // we run our own backoff (and pass last_event_id ourselves), so stop EventSource's retry
      es.close();
      conn.es = null;
      conn.attached = false;
      if (!attached) conn.attempts += 1;
      let gone = false;
      try { gone = (await fetch(`/api/sessions/${encodeURIComponent(sid)}`, { cache: 'no-store' })).status === 404; } catch (_) { gone = false; }
      if (conn.gen !== gen) return;
      if (gone) {
        sessionExpired();
        conn.attempts = 0;
        connect();
        return;
      }
      scheduleReconnect();
    };
  }

  function onSession(ev) {
    conn.attached = true;
    conn.attempts = 0;
    conn.wsOpenFailures = 0;
    sessionLastId = typeof ev.last_event_id === 'number' ? ev.last_event_id : 0;
    if (ev.session_id && ev.session_id !== view.session_id) {
      if (view.session_id && view.turns.length) showNotice('The previous session has ended on the server; this is a new conversation.');
      startSession(ev.session_id);
    }
    if (Array.isArray(ev.models_available)) mergeModelsAvailable(ev.models_available);
    setStatus('open');
    checkUnacked();
  }

  function startSession(id) {
    view = { session_id: id, last_event_id: 0, turns: [] };
    sessionLastId = 0;
    showSessionId();
    renderPanels();
    saveView();
  }

  function sessionExpired() {
    const had = view.turns.length > 0;
    view = { session_id: null, last_event_id: 0, turns: [] };
    saveView();
    showSessionId();
    renderPanels();
    if (had) showNotice(CLOSE_REASONS[4001]);
  }

  function showSessionId() {
    ui.sessionId.textContent = view.session_id ? view.session_id.slice(0, 8) : '—';
    ui.sessionId.title = view.session_id || '';
    if (view.session_id) ui.sessionId.dataset.sessionId = view.session_id;
    else delete ui.sessionId.dataset.sessionId;
  }

  /** After a (re)attach, a turn the server never acknowledged was lost on the way. */
  function checkUnacked() {
    if (pendingCheck) clearTimeout(pendingCheck);
    const attachedAt = Date.now();
    pendingCheck = setTimeout(() => {
      pendingCheck = null;
      const t = currentTurn();
      // only a turn sent before this attach can have been lost with the old connection
      if (!t || t.acked || !conn.attached || !(t.local_start < attachedAt)) return;
      for (const m of t.models) {
        const r = t.results[m];
        r.state = 'error';
        r.error = { code: 'not_delivered', message: 'the prompt did not reach the server (connection dropped); send it again', retryable: true };
      }
      t.complete = true;
      if (!ui.prompt.value) ui.prompt.value = t.prompt || '';
      renderPanels();
      updateComposer();
      markDirty();
    }, 2000);
  }

  async function transmit(msg) {
    if (conn.transport === 'ws' && !conn.fellBack) {
      if (!conn.ws || conn.ws.readyState !== WebSocket.OPEN || !conn.attached) return false;
      conn.ws.send(JSON.stringify(msg));
      return true;
    }
    if (!view.session_id || !conn.attached) return false;
    const path = { send: 'messages', cancel: 'cancel', clear: 'clear' }[msg.type];
    const body = Object.assign({}, msg);
    try {
      const r = await fetch(`/api/sessions/${encodeURIComponent(view.session_id)}/${path}`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
      });
      if (r.status === 404) {
        sessionExpired();
        connect();
        return false;
      }
      if (!r.ok) {
        showNotice(`The server refused the ${msg.type}: ${await errorText(r)}`);
        return false;
      }
      return true;
    } catch (e) {
      showNotice(`Could not reach the server: ${e.message}`);
      return false;
    }
  }

  function dropConnection() {
    if (conn.ws) {
      conn.ws.close(4000, 'debug: dropped by the page');
    } else if (conn.es) {
      const es = conn.es;
      if (typeof es.onerror === 'function') es.onerror(new Event('error'));
      es.close();
    }
  }

  // keep-alive from our side and a watchdog for a silent server
  setInterval(() => {
    if (conn.transport === 'ws' && conn.ws && conn.ws.readyState === WebSocket.OPEN && conn.attached) {
      try { conn.ws.send(JSON.stringify({ type: 'ping' })); } catch (_) { /* close follows */ }
    }
    if (conn.attached && Date.now() - lastReceived > SILENCE_LIMIT_MS) {
      lastReceived = Date.now();
      dropConnection();
    }
  }, PING_EVERY_MS / 2);

  // ---------------------------------------------------------------------------------------------
  // Composer: send, stop, clear

  function updateComposer() {
    const running = currentTurn();
    const connected = conn.status === 'open' && conn.attached;
    ui.send.disabled = !!running || !connected || selected.length === 0;
    ui.stop.disabled = !running || !connected;
    ui.clear.disabled = !connected;
    ui.send.title = !connected ? 'Not connected' : running ? 'Wait for the running turn or press Stop' : selected.length === 0 ? 'Pick at least one model' : 'Send to every selected model (Enter)';
    document.body.dataset.busy = running ? 'true' : 'false';
  }

  function params() {
    const p = {};
    if (ui.temperature.value !== '') p.temperature = Number(ui.temperature.value);
    if (ui.maxTokens.value !== '') p.max_tokens = Math.floor(Number(ui.maxTokens.value));
    return Object.keys(p).length ? p : null;
  }

  async function sendPrompt() {
    const content = ui.prompt.value.trim();
    if (!content || ui.send.disabled) return;
    const models = selected.slice(0, MAX_MODELS);
    const requestId = newRequestId();
    const msg = { type: 'send', request_id: requestId, content, models };
    const p = params();
    if (p) msg.params = p;
    const turn = ensureTurn(requestId, models, content);
    turn.local_start = Date.now();
    for (const m of models) turn.results[m].state = 'sending';
    ui.prompt.value = '';
    hideNotice();
    renderPanels();
    updateComposer();
    markDirty();
    const ok = await transmit(msg);
    if (!ok && !turn.acked) {
      for (const m of models) {
        turn.results[m].state = 'error';
        turn.results[m].error = { code: 'not_sent', message: 'not connected; the prompt was not sent', retryable: true };
      }
      turn.complete = true;
      if (!ui.prompt.value) ui.prompt.value = content;
      renderPanels();
      updateComposer();
    }
  }

  function stopModel(model) {
    const t = currentTurn();
    if (!t) return;
    const msg = { type: 'cancel', request_id: t.request_id };
    if (model) msg.model = model;
    transmit(msg);
  }

  async function clearConversation() {
    const ok = await transmit({ type: 'clear' });
    if (!ok) { showNotice('Not connected; nothing was cleared.'); return; }
    view.turns = [];
    for (const p of panels.values()) { p.root.remove(); }
    panels.clear();
    timelines.clear();
    hideNotice();
    renderPanels();
    updateComposer();
    saveView();
  }

  // ---------------------------------------------------------------------------------------------
  // Notices

  let noticeTimer = null;
  function showNotice(text) {
    ui.noticeText.textContent = text;
    ui.notice.hidden = false;
    if (noticeTimer) clearTimeout(noticeTimer);
    noticeTimer = setTimeout(hideNotice, 12000);
  }
  function hideNotice() {
    ui.notice.hidden = true;
  }

  async function errorText(r) {
    try {
      const j = await r.json();
      if (j && j.error && j.error.message) return j.error.message;
    } catch (_) { /* not JSON */ }
    return `HTTP ${r.status}`;
  }

  // ---------------------------------------------------------------------------------------------
  // Wiring

  ui.form.addEventListener('submit', (e) => { e.preventDefault(); sendPrompt(); });
  ui.prompt.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendPrompt();
    }
  });
  ui.stop.addEventListener('click', () => stopModel(null));
  ui.clear.addEventListener('click', clearConversation);
  ui.retry.addEventListener('click', () => { clearTimer(); connect(); });
  ui.refreshModels.addEventListener('click', loadModels);
  ui.noticeClose.addEventListener('click', hideNotice);
  window.addEventListener('online', () => { if (conn.timer) { clearTimer(); connect(); } });
  window.addEventListener('pagehide', saveView);
  document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'hidden') saveView(); });

  window.__switchboard = {
    dropConnection,
    state: () => ({
      transport: conn.fellBack ? 'sse' : conn.transport,
      status: conn.status,
      attached: conn.attached,
      attempts: conn.attempts,
      session_id: view.session_id,
      last_event_id: view.last_event_id,
    }),
    view: () => JSON.parse(JSON.stringify(view)),
    /** The timeline exports of a turn (what the SVG / JSON buttons download). */
    timeline: (requestId) => {
      const v = timelines.view(requestId || (view.turns.length ? view.turns[view.turns.length - 1].request_id : ''));
      return v ? { json: v.exportJson(), svg: v.exportSvg() } : null;
    },
    /** Feeds an event as if the server had sent it (the timeline's frame-time measurement). */
    feed: (ev) => handleEvent(ev),
  };

  restoreView();
  showSessionId();
  renderPanels();
  updateComposer();
  loadModels();
  connect();
}());
