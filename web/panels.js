// switchboard: the compare page's panels, one per model: the head with state and metrics (TTFT,
// total, tokens, tok/s, backend), the transcript of answers per turn, and each answer's tool calls
// on the turn's clock. It draws the conversation compare.js keeps (`hooks.view()`) and never
// changes it. Model output only ever becomes text nodes. Loaded before compare.js; exposes
// `window.SwitchboardPanels`.
(function () {
  'use strict';

  const { h, svg } = window.SwitchboardDom;
  const { fmtMs } = window.SwitchboardCommon;

  /** Answer states after which nothing more arrives for that model in that turn. */
  const TERMINAL = new Set(['done', 'error', 'cancelled', 'interrupted', 'unknown']);

  /** The running turn of a conversation: the last one, unless it is complete. */
  function currentTurn(view) {
    const t = view.turns[view.turns.length - 1];
    return t && !t.complete ? t : null;
  }

  /** Puts a number and its unit into a metric value (the unit smaller), e.g. "57" + " ms". */
  function setMs(el, ms, fallback) {
    if (ms === null || ms === undefined || !isFinite(ms)) { el.textContent = fallback || '—'; return; }
    const [num, unit] = fmtMs(ms).split(' ');
    el.replaceChildren(num, h('span', { class: 'unit' }, ` ${unit}`));
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
    error: 'error', cancelled: 'stopped', interrupted: 'interrupted', unknown: 'ended',
  };

  /**
   * The panel grid in `ui.panels` (with `ui.empty` shown when there is none). Hooks: `view()` the
   * conversation, `selected()` the picked models, `onStop(model)` a panel's Stop button,
   * `afterRender()` after every reconcile (the timelines follow the same turns).
   */
  function createPanels(ui, hooks) {
    const panels = new Map(); // model -> {root, status, stopBtn, metrics:{...}, backend, transcript, cells: Map}
    const turns = () => hooks.view().turns;

    function panelModels() {
      const out = [];
      for (const t of turns()) for (const m of t.models) if (!out.includes(m)) out.push(m);
      for (const m of hooks.selected()) if (!out.includes(m)) out.push(m);
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
      stopBtn.addEventListener('click', () => hooks.onStop(model));
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
      const running = currentTurn(hooks.view());
      let prev = null;
      for (const m of models) {
        let p = panels.get(m);
        if (!p) { p = createPanel(m); panels.set(m, p); }
        const want = prev ? prev.nextSibling : ui.panels.firstChild;
        if (want !== p.root) ui.panels.insertBefore(p.root, want);
        prev = p.root;
        // cells of turns for this model
        const live = new Set();
        for (const t of turns()) {
          if (!t.results[m]) continue;
          live.add(t.request_id);
          renderCell(t, m);
        }
        for (const [rid, cell] of p.cells) if (!live.has(rid)) { cell.root.remove(); p.cells.delete(rid); }
        p.root.classList.toggle('unselected', !hooks.selected().includes(m) && !(running && running.results[m]));
        renderPanelHead(m);
      }
      ui.panels.dataset.count = String(models.length);
      renderBest();
      hooks.afterRender();
    }

    function latestResult(model) {
      const all = turns();
      for (let i = all.length - 1; i >= 0; i--) {
        const r = all[i].results[model];
        if (r) return { turn: all[i], r };
      }
      return null;
    }

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
      const all = turns();
      const turn = all[all.length - 1];
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
        const all = turns();
        const idx = all.indexOf(turn);
        let before = null;
        for (let i = idx + 1; i < all.length && !before; i++) {
          const c = p.cells.get(all[i].request_id);
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
      else if (r.state === 'interrupted') status = 'interrupted: the server restarted while this answer streamed; the text so far is kept';
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
      const t = currentTurn(hooks.view());
      if (!t) return;
      for (const m of t.models) {
        const r = t.results[m];
        if (r && !TERMINAL.has(r.state)) renderPanelHead(m);
      }
    }, 200);

    /** Removes every panel (the conversation was cleared). */
    function reset() {
      for (const p of panels.values()) p.root.remove();
      panels.clear();
    }

    /** Drops one turn's answers so the next render builds them afresh (after a resync). */
    function forgetTurn(requestId) {
      for (const p of panels.values()) {
        const c = p.cells.get(requestId);
        if (c) { c.root.remove(); p.cells.delete(requestId); }
      }
    }

    return { render: renderPanels, refresh, appendToken, renderBest, reset, forgetTurn };
  }

  window.SwitchboardPanels = Object.freeze({ createPanels, currentTurn, tokensPerSecond, elapsedFor, TERMINAL });
})();
