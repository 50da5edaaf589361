// The compare page: one prompt fanned out to several models over a thread session (SPEC §4, §5).
// One page (index.html) served at `/` (WebSocket) and `/sse` (EventSource); the path picks the
// transport (see `pageTransport`). The WebSocket page falls back to SSE when a WebSocket cannot be
// opened while plain HTTP to the same server works.
//
// This file keeps the conversation (the view state and how each server event changes it), the
// model picker and the composer. panels.js draws the conversation, timeline.js the token timelines,
// connection.js owns the WebSocket / SSE link; they talk through the hooks wired below.
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
  const VIEW_SAVE_LIMIT = 2000000; // characters of JSON kept in sessionStorage
  /** Events the token timeline is built from (timeline.js). */
  const TIMELINE_EVENTS = new Set(['ack', 'ttft', 'token', 'tool_start', 'tool_end', 'done', 'error', 'cancelled']);

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

  const { h } = window.SwitchboardDom;
  const { errorText, stored, store } = window.SwitchboardCommon;
  const { createPanels, currentTurn, tokensPerSecond, elapsedFor, TERMINAL } = window.SwitchboardPanels;
  const { SessionConnection, CLOSE_REASONS } = window.SwitchboardConnection;

  // ---------------------------------------------------------------------------------------------
  // Small helpers

  function newRequestId() {
    if (window.crypto && typeof window.crypto.randomUUID === 'function') return window.crypto.randomUUID();
    return `r-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
  }

  // ---------------------------------------------------------------------------------------------
  // View state: plain JSON so it can be saved for a reload.
  //
  // view.turns[i] = { request_id, prompt, models, acked, complete, local_start, started_ts,
  //                   results: { model: Result } }
  // Result = { state: sending|waiting|streaming|done|error|cancelled|interrupted|unknown, text, tokens,
  //            backend, ttft_ms, total_ms, usage, finish_reason, error, tools: [...] }
  // turn.tl = the token timeline's data (timeline.js): arrival times from the events' `ts`.

  let view = { session_id: null, last_event_id: 0, turns: [] };

  function restoreView() {
    const sid = stored(KEY_SESSION);
    if (!sid) return;
    let saved = null;
    try { saved = JSON.parse(stored(KEY_VIEW) || 'null'); } catch (_) { saved = null; }
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
      const saved = JSON.parse(stored(KEY_MODELS) || 'null');
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
    panels.render();
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
    panels.render();
    updateComposer();
  }

  // ---------------------------------------------------------------------------------------------
  // Panels (panels.js) and the token-arrival timelines under them, one per turn (timeline.js)

  const timelines = new window.SwitchboardTimeline.Timelines(ui.timelines, {
    metricsOf: (turn, model) => {
      const r = turn.results[model];
      return r ? { ttft_ms: r.ttft_ms, total_ms: r.total_ms, tps: tokensPerSecond(r) } : null;
    },
    textOf: (turn, model) => (turn.results[model] ? turn.results[model].text : null),
    isRunning: (turn) => !turn.complete && turn.models.some((m) => turn.results[m] && !TERMINAL.has(turn.results[m].state)),
  });
  const panels = createPanels(ui, {
    view: () => view,
    selected: () => selected,
    onStop: (model) => stopModel(model),
    afterRender: () => timelines.sync(view.turns),
  });

  // ---------------------------------------------------------------------------------------------
  // Events from the server (the same JSON over WebSocket and SSE)

  let sessionLastId = 0; // `last_event_id` announced by the `session` event, used after a resync

  function handleEvent(ev) {
    if (!ev || typeof ev !== 'object') return;
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
        panels.render();
        break;
      }
      case 'start': if (r) { r.backend = ev.backend || r.backend; if (r.state === 'sending') r.state = 'waiting'; panels.refresh(turn, ev.model); } break;
      case 'ttft': if (r) { r.ttft_ms = ev.ms; if (!TERMINAL.has(r.state)) r.state = 'streaming'; panels.refresh(turn, ev.model); } break;
      case 'token':
        if (r && typeof ev.content === 'string') {
          r.text += ev.content;
          r.tokens += 1;
          if (r.state !== 'streaming' && !TERMINAL.has(r.state)) { r.state = 'streaming'; panels.refresh(turn, ev.model); }
          panels.appendToken(turn, ev.model, ev.content);
        }
        break;
      case 'tool_start':
        if (r) {
          if (!r.tools.some((x) => x.id === ev.tool_call_id)) {
            r.tools.push({ id: ev.tool_call_id, name: ev.name, arguments: null, ms: null, start_ts: ev.ts || null, state: 'running' });
          }
          if (!TERMINAL.has(r.state)) r.state = 'streaming';
          panels.refresh(turn, ev.model);
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
          panels.refresh(turn, ev.model);
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
          panels.refresh(turn, ev.model);
          panels.renderBest();
        }
        break;
      case 'error': onError(ev, turn, r); break;
      case 'cancelled':
        if (turn) {
          const models = ev.model ? [ev.model] : turn.models;
          for (const m of models) {
            const x = turn.results[m];
            if (x && !TERMINAL.has(x.state)) { x.state = 'cancelled'; if (x.total_ms === null) x.total_ms = elapsedFor(turn); panels.refresh(turn, m); }
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
          panels.render();
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
    panels.reset();
    timelines.clear();
    panels.render();
    saveView();
  }

  function onError(ev, turn, r) {
    const message = ev.message || ev.code || 'error';
    if (r) {
      r.state = 'error';
      r.error = { code: ev.code || null, message, retryable: !!ev.retryable };
      if (r.total_ms === null && turn) r.total_ms = null;
      panels.refresh(turn, ev.model);
      return;
    }
    if (turn) {
      if (ev.code === 'busy' && !turn.acked) {
        // our send was refused because another turn is running: drop the optimistic turn
        view.turns = view.turns.filter((t) => t !== turn);
        if (!ui.prompt.value) ui.prompt.value = turn.prompt || '';
        panels.render();
        showNotice('A turn is still running in this session — wait for it or press Stop, then send again.');
        return;
      }
      // a turn-level failure (invalid request, unknown model…): the turn ends here
      for (const m of turn.models) {
        const x = turn.results[m];
        if (x && !TERMINAL.has(x.state)) { x.state = 'error'; x.error = { code: ev.code || null, message, retryable: !!ev.retryable }; }
      }
      turn.complete = true;
      panels.render();
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
    if (v === 'interrupted') return 'interrupted'; // in flight when the broker stopped (SPEC §4.4)
    if (['streaming', 'running', 'started', 'active', 'in_progress'].includes(v)) return 'streaming';
    return 'waiting'; // pending
  }

  function onResync(ev) {
    const snap = ev.snapshot || {};
    // `resync` has no id: the live events after it continue from the session's last id
    if (typeof ev.id !== 'number' && sessionLastId > view.last_event_id) view.last_event_id = sessionLastId;
    markDirty();
    if (!ev.request_id) { panels.render(); return; } // the session has had no turn yet
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
      const state = mapSnapshotState(s.state);
      const content = typeof s.content === 'string' ? s.content : r.text;
      // A turn cut by a broker restart comes back with only what was stored at its start: the
      // text this page already showed is kept, not replaced by less.
      const seenMore = state === 'interrupted' && r.text.length > content.length && r.text.startsWith(content);
      if (!seenMore) r.text = content;
      r.state = state;
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
    panels.forgetTurn(turn.request_id);
    panels.render();
  }

  // ---------------------------------------------------------------------------------------------
  // Connection (connection.js): WebSocket or SSE, reconnect with backoff, resume

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

  const connection = new SessionConnection(pageTransport(), {
    resumeFrom: () => ({ session_id: view.session_id, last_event_id: view.last_event_id }),
    onEvent: handleEvent,
    onStatus: renderStatus,
    onAttached: checkUnacked,
    onSessionCreated: startSession,
    onSessionGone: sessionExpired,
    onNotice: showNotice,
  });
  let pendingCheck = null;

  function renderStatus() {
    const status = connection.status;
    ui.conn.dataset.state = status;
    ui.retry.hidden = status !== 'lost';
    if (connection.fellBack) ui.transport.textContent = 'SSE (WebSocket unavailable)';
    renderStatusText();
    updateComposer();
  }

  function renderStatusText() {
    const wait = connection.retryInMs();
    const next = wait !== null ? ` in ${(wait / 1000).toFixed(wait < 10000 ? 1 : 0)} s` : '…';
    let text;
    switch (connection.status) {
      case 'open': text = connection.transport === 'sse' ? 'Connected (SSE)' : 'Connected'; break;
      case 'reconnecting': text = `Reconnecting${next}`; break;
      // SPEC §7's words; the "retry now" button follows the text. Retries go on meanwhile.
      case 'lost': text = 'connection lost — '; break;
      default: text = 'Connecting…';
    }
    ui.connText.textContent = text;
    ui.conn.title = connection.status === 'lost' && wait !== null ? `still trying: next attempt${next}` : '';
  }
  setInterval(() => { if (connection.retryInMs() !== null) renderStatusText(); }, 250);

  function onSession(ev) {
    sessionLastId = typeof ev.last_event_id === 'number' ? ev.last_event_id : 0;
    if (ev.session_id && ev.session_id !== view.session_id) {
      if (view.session_id && view.turns.length) showNotice('The previous session has ended on the server; this is a new conversation.');
      startSession(ev.session_id);
    }
    if (Array.isArray(ev.models_available)) mergeModelsAvailable(ev.models_available);
  }

  function startSession(id) {
    view = { session_id: id, last_event_id: 0, turns: [] };
    sessionLastId = 0;
    showSessionId();
    panels.render();
    saveView();
  }

  function sessionExpired() {
    const had = view.turns.length > 0;
    view = { session_id: null, last_event_id: 0, turns: [] };
    saveView();
    showSessionId();
    panels.render();
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
      const t = currentTurn(view);
      // only a turn sent before this attach can have been lost with the old connection
      if (!t || t.acked || !connection.attached || !(t.local_start < attachedAt)) return;
      for (const m of t.models) {
        const r = t.results[m];
        r.state = 'error';
        r.error = { code: 'not_delivered', message: 'the prompt did not reach the server (connection dropped); send it again', retryable: true };
      }
      t.complete = true;
      if (!ui.prompt.value) ui.prompt.value = t.prompt || '';
      panels.render();
      updateComposer();
      markDirty();
    }, 2000);
  }

  // ---------------------------------------------------------------------------------------------
  // Composer: send, stop, clear

  function updateComposer() {
    const running = currentTurn(view);
    const connected = connection.ready();
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
    panels.render();
    updateComposer();
    markDirty();
    const ok = await connection.transmit(msg);
    if (!ok && !turn.acked) {
      for (const m of models) {
        turn.results[m].state = 'error';
        turn.results[m].error = { code: 'not_sent', message: 'not connected; the prompt was not sent', retryable: true };
      }
      turn.complete = true;
      if (!ui.prompt.value) ui.prompt.value = content;
      panels.render();
      updateComposer();
    }
  }

  function stopModel(model) {
    const t = currentTurn(view);
    if (!t) return;
    const msg = { type: 'cancel', request_id: t.request_id };
    if (model) msg.model = model;
    connection.transmit(msg);
  }

  async function clearConversation() {
    const ok = await connection.transmit({ type: 'clear' });
    if (!ok) { showNotice('Not connected; nothing was cleared.'); return; }
    view.turns = [];
    panels.reset();
    timelines.clear();
    hideNotice();
    panels.render();
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
  ui.retry.addEventListener('click', () => connection.connect());
  ui.refreshModels.addEventListener('click', loadModels);
  ui.noticeClose.addEventListener('click', hideNotice);
  window.addEventListener('online', () => connection.connectIfWaiting());
  window.addEventListener('pagehide', saveView);
  document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'hidden') saveView(); });

  window.__switchboard = {
    dropConnection: () => connection.drop(),
    state: () => ({
      transport: connection.fellBack ? 'sse' : connection.transport,
      status: connection.status,
      attached: connection.attached,
      attempts: connection.attempts,
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
  panels.render();
  updateComposer();
  loadModels();
  connection.connect();
}());
