// switchboard: the compare page's link to its thread session. Over WebSocket (`/ws`) or SSE
// (`/api/sessions/{id}/events` plus POSTs for commands): connect, reconnect with backoff, resume
// from the last event id the page holds, keep-alive and a watchdog for a silent server, and the
// WebSocket → SSE fallback when WebSockets are blocked on the way but plain HTTP works.
//
// It knows nothing of the conversation: every event goes to `hooks.onEvent`, and the page says
// where to resume from (`hooks.resumeFrom`). Loaded before compare.js; exposes
// `window.SwitchboardConnection`.
(function () {
  'use strict';

  const BACKOFF_BASE_MS = 1000;
  const BACKOFF_CAP_MS = 30000;
  const LOST_AFTER_TRIES = 3;
  const PING_EVERY_MS = 20000;
  const SILENCE_LIMIT_MS = 45000;
  const SSE_EVENT_TYPES = ['session', 'ack', 'start', 'ttft', 'token', 'tool_start', 'tool_end', 'done',
    'error', 'cancelled', 'complete', 'cleared', 'resync', 'heartbeat', 'pong'];
  /** What the page tells the user when the server closes the WebSocket with one of these codes. */
  const CLOSE_REASONS = Object.freeze({
    4001: 'The session expired — starting a new conversation.',
    4029: 'Too many connections from your address — close other switchboard tabs.',
    4503: 'The server is busy or restarting — reconnecting.',
    4009: 'The connection fell behind — reconnecting and resuming.',
    4400: 'The server did not accept the handshake — reconnecting.',
    1008: 'Not authorised — reload the page to sign in again.',
    1009: 'A message was too large for the server (prompt over 1 MiB?).',
  });
  /** The POST route of each command on the SSE transport. */
  const COMMAND_PATHS = { send: 'messages', cancel: 'cancel', clear: 'clear' };
  const { errorText } = window.SwitchboardCommon;

  /**
   * One page's session connection. `transport` is 'ws' or 'sse'. Hooks (all required):
   * - `resumeFrom()` → `{ session_id, last_event_id }` (session_id null for a new session)
   * - `onEvent(ev)`: every parsed event, in order
   * - `onStatus()`: the status, attempt count or transport changed
   * - `onAttached()`: the session is attached (after its `session` event, or the SSE stream opened)
   * - `onSessionCreated(id)`: the SSE transport created a session for the page
   * - `onSessionGone()`: the server no longer has the page's session
   * - `onNotice(text)`: something the user should read
   */
  class SessionConnection {
    constructor(transport, hooks) {
      this.transport = transport;
      this.hooks = hooks;
      this.fellBack = false; // WebSocket → SSE
      this.status = 'connecting'; // connecting | open | reconnecting | lost
      this.attempts = 0; // failed tries since the last working connection
      this.attached = false;
      this.timer = null;
      this.nextAt = 0;
      this.ws = null;
      this.es = null;
      this.everOpenedWs = false;
      this.wsOpenFailures = 0;
      this.gen = 0; // bumps with every try: callbacks of an older try do nothing
      this.lastReceived = Date.now();
      setInterval(() => this.keepAlive(), PING_EVERY_MS / 2);
    }

    /** Milliseconds until the next scheduled try, or null when none is scheduled. */
    retryInMs() {
      return this.timer ? Math.max(0, this.nextAt - Date.now()) : null;
    }

    /** Whether commands can be sent now. */
    ready() {
      return this.status === 'open' && this.attached;
    }

    setStatus(status) {
      this.status = status;
      this.hooks.onStatus();
    }

    clearTimer() {
      if (this.timer) { clearTimeout(this.timer); this.timer = null; }
    }

    /** Backoff: 1 s, 2 s, 4 s … capped at 30 s, full jitter (a random wait up to the cap). */
    scheduleReconnect() {
      this.clearTimer();
      const cap = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(this.attempts, 15));
      const delay = Math.random() * cap;
      this.nextAt = Date.now() + delay;
      this.timer = setTimeout(() => { this.timer = null; this.connect(); }, delay);
      this.setStatus(this.attempts >= LOST_AFTER_TRIES ? 'lost' : 'reconnecting');
    }

    /** Connects now (a scheduled try is dropped). */
    connect() {
      this.clearTimer();
      this.attached = false;
      if (this.status !== 'lost') this.setStatus(this.attempts > 0 || this.hooks.resumeFrom().session_id ? 'reconnecting' : 'connecting');
      else this.hooks.onStatus();
      if (this.transport === 'ws' && typeof window.WebSocket === 'function') this.wsConnect();
      else this.sseConnect();
    }

    /** Connects now if a try is waiting (the browser came back online). */
    connectIfWaiting() {
      if (this.timer) this.connect();
    }

    /** An event from the server, on either transport. */
    deliver(ev) {
      this.lastReceived = Date.now();
      if (ev.type !== 'session') { this.hooks.onEvent(ev); return; }
      this.attached = true;
      this.attempts = 0;
      this.wsOpenFailures = 0;
      this.hooks.onEvent(ev);
      this.setStatus('open');
      this.hooks.onAttached();
    }

    hello() {
      const { session_id: sid, last_event_id: last } = this.hooks.resumeFrom();
      return sid ? { type: 'hello', session_id: sid, last_event_id: last } : { type: 'hello' };
    }

    wsConnect() {
      const gen = ++this.gen;
      let opened = false;
      let attached = false;
      let ws;
      try {
        ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
      } catch (_) {
        this.onWsClosed(gen, 1006, false, false);
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        if (this.gen !== gen) return;
        opened = true;
        this.everOpenedWs = true;
        ws.send(JSON.stringify(this.hello()));
      };
      ws.onmessage = (msg) => {
        if (this.gen !== gen) return;
        let ev;
        try { ev = JSON.parse(msg.data); } catch (_) { return; }
        if (!ev || typeof ev !== 'object') return;
        if (ev.type === 'session') attached = true;
        this.deliver(ev);
      };
      ws.onerror = () => { /* a close event follows */ };
      ws.onclose = (e) => {
        if (this.gen !== gen) return;
        this.ws = null;
        this.onWsClosed(gen, e.code, opened, attached);
      };
    }

    async onWsClosed(gen, code, opened, attached) {
      this.attached = false;
      if (!attached) this.attempts += 1;
      if (!opened) this.wsOpenFailures += 1;
      if (code === 4001) {
        this.hooks.onSessionGone();
        this.attempts = 0;
        this.connect();
        return;
      }
      const reason = CLOSE_REASONS[code];
      if (reason && code !== 4009) this.hooks.onNotice(reason);
      if (!opened && !this.everOpenedWs && this.wsOpenFailures >= 2 && await httpWorks()) {
        if (this.gen !== gen) return;
        // WebSockets are blocked somewhere on the way, plain HTTP works: use the SSE transport.
        this.transport = 'sse';
        this.fellBack = true;
        this.attempts = 0;
        this.connect();
        return;
      }
      if (this.gen !== gen) return;
      this.scheduleReconnect();
    }

    async sseConnect() {
      const gen = ++this.gen;
      if (!this.hooks.resumeFrom().session_id) {
        try {
          const r = await fetch('/api/sessions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
          if (!r.ok) throw new Error(await errorText(r));
          const j = await r.json();
          if (this.gen !== gen) return;
          this.hooks.onSessionCreated(j.session_id);
        } catch (e) {
          if (this.gen !== gen) return;
          this.attempts += 1;
          this.scheduleReconnect();
          return;
        }
      }
      const { session_id: sid, last_event_id: last } = this.hooks.resumeFrom();
      let attached = false;
      const es = new EventSource(`/api/sessions/${encodeURIComponent(sid)}/events?last_event_id=${last}`);
      this.es = es;
      const attach = () => {
        if (attached) return;
        attached = true;
        this.attempts = 0;
        this.attached = true;
        this.setStatus('open');
        this.hooks.onAttached();
      };
      es.onopen = () => { if (this.gen === gen) attach(); };
      const onMessage = (e) => {
        if (this.gen !== gen) return;
        let ev;
        try { ev = JSON.parse(e.data); } catch (_) { return; }
        if (!ev || typeof ev !== 'object') return;
        if (!ev.type) ev.type = e.type === 'message' ? undefined : e.type;
        if (typeof ev.id !== 'number' && e.lastEventId && /^\d+$/.test(e.lastEventId) && ev.type !== 'heartbeat' && ev.type !== 'session') {
          ev.id = Number(e.lastEventId);
        }
        attach();
        this.deliver(ev);
      };
      for (const t of SSE_EVENT_TYPES) es.addEventListener(t, onMessage);
      es.onmessage = onMessage;
      es.onerror = async (e) => {
        // A server `event: error` (a model failed) is a MessageEvent with data, handled by
        // onMessage like every other event; only a transport error has none.
        if (e instanceof MessageEvent) return;
        if (this.gen !== gen) return;
        // we run our own backoff (and pass last_event_id ourselves), so stop EventSource's retry
        es.close();
        this.es = null;
        this.attached = false;
        if (!attached) this.attempts += 1;
        let gone = false;
        try { gone = (await fetch(`/api/sessions/${encodeURIComponent(sid)}`, { cache: 'no-store' })).status === 404; } catch (_) { gone = false; }
        if (this.gen !== gen) return;
        if (gone) {
          this.hooks.onSessionGone();
          this.attempts = 0;
          this.connect();
          return;
        }
        this.scheduleReconnect();
      };
    }

    /** Sends a command (`send`, `cancel`, `clear`); false when it could not be sent. */
    async transmit(msg) {
      if (this.transport === 'ws' && !this.fellBack) {
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN || !this.attached) return false;
        this.ws.send(JSON.stringify(msg));
        return true;
      }
      const sid = this.hooks.resumeFrom().session_id;
      if (!sid || !this.attached) return false;
      try {
        const r = await fetch(`/api/sessions/${encodeURIComponent(sid)}/${COMMAND_PATHS[msg.type]}`, {
          method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(msg),
        });
        if (r.status === 404) {
          this.hooks.onSessionGone();
          this.connect();
          return false;
        }
        if (!r.ok) {
          this.hooks.onNotice(`The server refused the ${msg.type}: ${await errorText(r)}`);
          return false;
        }
        return true;
      } catch (e) {
        this.hooks.onNotice(`Could not reach the server: ${e.message}`);
        return false;
      }
    }

    /** Closes the live connection abruptly, as a network drop would; reconnecting follows. */
    drop() {
      if (this.ws) {
        this.ws.close(4000, 'debug: dropped by the page');
      } else if (this.es) {
        const es = this.es;
        if (typeof es.onerror === 'function') es.onerror(new Event('error'));
        es.close();
      }
    }

    /** Keep-alive from our side, and a watchdog for a silent server. */
    keepAlive() {
      if (this.transport === 'ws' && this.ws && this.ws.readyState === WebSocket.OPEN && this.attached) {
        try { this.ws.send(JSON.stringify({ type: 'ping' })); } catch (_) { /* close follows */ }
      }
      if (this.attached && Date.now() - this.lastReceived > SILENCE_LIMIT_MS) {
        this.lastReceived = Date.now();
        this.drop();
      }
    }
  }

  async function httpWorks() {
    try {
      const r = await fetch('/health', { cache: 'no-store' });
      return r.status < 500;
    } catch (_) { return false; }
  }

  window.SwitchboardConnection = Object.freeze({ SessionConnection, CLOSE_REASONS });
})();
