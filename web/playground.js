// switchboard: the dashboard's playground: one chat completion through `/v1/chat/completions`,
// as any OpenAI client would send it (with the client key when one is given), streamed or not,
// showing the answer, tool calls, TTFT, total time, tokens, tok/s, the backend that served it and
// the request id. Model output only ever becomes text. Loaded before dashboard.js; exposes
// `window.SwitchboardPlayground`.
(function () {
  'use strict';

  /** Where the client key typed into the playground is kept (the models view uses it too). */
  const KEY_CLIENT = 'switchboard.client_key';
  const { h } = window.SwitchboardDom;
  const { fmtMs, stored, store } = window.SwitchboardCommon;
  const $ = (id) => document.getElementById(id);
  /** Hooks from dashboard.js, set by `attach`. */
  let hooks = { serverUrl: () => null };

  let pgAbort = null;

  function pgSet(id, text) { $(id).textContent = text; }

  async function playground() {
    const model = $('pg-model').value;
    const message = $('pg-message').value.trim();
    if (!model || !message) { pgError(!model ? 'Pick a model.' : 'Write a message.'); return; }
    const stream = $('pg-stream').checked;
    const clientKey = $('pg-client-key').value.trim();
    store(KEY_CLIENT, clientKey || null);
    const messages = [];
    if ($('pg-system').value.trim()) messages.push({ role: 'system', content: $('pg-system').value.trim() });
    messages.push({ role: 'user', content: message });
    const body = { model, messages, stream };
    if ($('pg-temperature').value !== '') body.temperature = Number($('pg-temperature').value);
    if ($('pg-max-tokens').value !== '') body.max_tokens = Math.floor(Number($('pg-max-tokens').value));
    if (stream) body.stream_options = { include_usage: true };
    const headers = { 'Content-Type': 'application/json' };
    if (clientKey) headers.Authorization = `Bearer ${clientKey}`;

    pgAbort = new AbortController();
    $('pg-send').disabled = true;
    $('pg-stop').disabled = false;
    $('pg-output').textContent = '';
    $('pg-tools').hidden = true;
    $('pg-tools').replaceChildren();
    $('pg-error').hidden = true;
    ['pg-ttft', 'pg-total', 'pg-tokens', 'pg-tps'].forEach((id) => pgSet(id, '—'));
    pgSet('pg-status', '…');
    pgSet('pg-backend', '—');
    pgSet('pg-request-id', '—');
    const t0 = performance.now();
    const ticker = setInterval(() => pgSet('pg-total', fmtMs(performance.now() - t0)), 100);
    let firstAt = null;
    let usage = null;
    const tools = [];
    try {
      const r = await fetch('/v1/chat/completions', { method: 'POST', headers, body: JSON.stringify(body), signal: pgAbort.signal });
      pgSet('pg-status', String(r.status));
      $('pg-status').dataset.ok = String(r.ok);
      showBackend(r.headers.get('X-Switchboard-Backend'));
      pgSet('pg-request-id', r.headers.get('X-Request-Id') || '—');
      const ctype = r.headers.get('Content-Type') || '';
      if (!r.ok) {
        const text = await r.text();
        let msg = text;
        try { msg = JSON.parse(text).error.message; } catch (_) { /* raw text */ }
        throw new Error(msg || `HTTP ${r.status}`);
      }
      if (ctype.includes('text/event-stream') && r.body) {
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = '';
        let finished = false;
        while (!finished) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let cut;
          while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut).replace(/^\r?\n\r?\n/, '');
            const data = block.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
            if (!data) continue;
            if (data === '[DONE]') { finished = true; break; }
            let chunk;
            try { chunk = JSON.parse(data); } catch (_) { continue; }
            if (chunk.error) throw new Error(chunk.error.message || 'stream error');
            if (chunk.usage) usage = chunk.usage;
            const choice = chunk.choices && chunk.choices[0];
            const delta = choice && (choice.delta || choice.message);
            if (!delta) continue;
            if (delta.content) {
              if (firstAt === null) { firstAt = performance.now(); pgSet('pg-ttft', fmtMs(firstAt - t0)); }
              $('pg-output').append(delta.content);
            }
            for (const tc of delta.tool_calls || []) {
              if (firstAt === null) { firstAt = performance.now(); pgSet('pg-ttft', fmtMs(firstAt - t0)); }
              const i = tc.index ?? tools.length;
              const slot = tools[i] || (tools[i] = { name: '', arguments: '' });
              if (tc.function && tc.function.name) slot.name = tc.function.name;
              if (tc.function && tc.function.arguments) slot.arguments += tc.function.arguments;
              renderPgTools(tools);
            }
          }
        }
      } else {
        const j = await r.json();
        firstAt = performance.now();
        pgSet('pg-ttft', 'n/a');
        usage = j.usage || null;
        const msg = j.choices && j.choices[0] && j.choices[0].message;
        if (msg && msg.content) $('pg-output').append(msg.content);
        for (const tc of (msg && msg.tool_calls) || []) tools.push({ name: tc.function && tc.function.name, arguments: tc.function && tc.function.arguments });
        renderPgTools(tools);
      }
      const total = performance.now() - t0;
      pgSet('pg-total', fmtMs(total));
      if (usage) {
        const decode = firstAt !== null && stream ? (performance.now() - firstAt) : total;
        pgSet('pg-tokens', `${usage.prompt_tokens ?? '—'} / ${usage.completion_tokens ?? '—'}`);
        if (usage.completion_tokens && decode > 0) pgSet('pg-tps', (usage.completion_tokens / (decode / 1000)).toFixed(1));
      }
    } catch (e) {
      if (e.name === 'AbortError') pgError('Stopped.');
      else pgError(e.message);
      pgSet('pg-total', fmtMs(performance.now() - t0));
    } finally {
      clearInterval(ticker);
      pgAbort = null;
      $('pg-send').disabled = false;
      $('pg-stop').disabled = true;
    }
  }

  function showBackend(id) {
    const el = $('pg-backend');
    if (!id) { el.textContent = '—'; return; }
    const url = hooks.serverUrl(id);
    el.replaceChildren(h('code', { title: id }, id.slice(0, 8)), url ? ` (${url})` : '');
    el.dataset.backend = id;
  }

  function renderPgTools(tools) {
    const box = $('pg-tools');
    box.hidden = !tools.length;
    box.replaceChildren(h('div', { class: 'tools-title' }, `Tool calls (${tools.length})`),
      ...tools.map((t) => h('div', { class: 'tool done' }, h('span', { class: 'tool-name' }, t.name || '(tool)'), h('code', { class: 'tool-args' }, t.arguments || ''))));
  }

  function pgError(text) {
    $('pg-error').hidden = false;
    $('pg-error').textContent = text;
  }

  /** Wires the playground. Hooks: `serverUrl(registration_id)` the URL of a registered server. */
  function attach(given) {
    hooks = given;
    $('pg-form').addEventListener('submit', (e) => { e.preventDefault(); playground(); });
    $('pg-stop').addEventListener('click', () => { if (pgAbort) pgAbort.abort(); });
    $('pg-message').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); playground(); }
    });
    $('pg-client-key').value = stored(KEY_CLIENT) || '';
  }

  window.SwitchboardPlayground = Object.freeze({ attach, KEY_CLIENT });
})();
