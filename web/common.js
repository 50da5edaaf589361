// switchboard: the small helpers the page scripts share besides the DOM builders (dom.js):
// durations and times as people read them, the error text of a failed fetch, and sessionStorage that fails
// soft (storage full or disabled only costs reload-resume, never the page). Loaded after dom.js;
// exposes `window.SwitchboardCommon`.
(function () {
  'use strict';

  /** A duration for a metric: "57 ms", "1.25 s", "12.5 s"; "—" when there is none. */
  function fmtMs(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return '—';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  }

  /** How long ago a timestamp (ms since the epoch) was: "12 s ago", "3 h ago", "never". */
  function fmtAgo(ts) {
    if (!ts) return 'never';
    const s = Math.max(0, Math.round((Date.now() - ts) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }
  /** A timestamp as the browser's locale writes date and time; "—" when there is none. */
  function fmtTime(ts) {
    return ts ? new Date(ts).toLocaleString() : '—';
  }

  /** The message of an error answer in the broker's shape, or the bare status. */
  async function errorText(response) {
    try {
      const j = await response.json();
      if (j && j.error && j.error.message) return j.error.message;
    } catch (_) { /* not JSON */ }
    return `HTTP ${response.status}`;
  }

  /** The stored value of `key`, or null. */
  function stored(key) {
    try { return sessionStorage.getItem(key); } catch (_) { return null; }
  }

  /** Stores `value` under `key`; null, undefined or '' removes it. */
  function store(key, value) {
    try {
      if (value === null || value === undefined || value === '') sessionStorage.removeItem(key);
      else sessionStorage.setItem(key, value);
    } catch (_) { /* storage full or disabled: the page still works */ }
  }

  window.SwitchboardCommon = Object.freeze({ fmtMs, fmtAgo, fmtTime, errorText, stored, store });
})();
