// The token timeline's data (SPEC §7): plain JSON kept in each turn (`turn.tl`), built only from
// session events, so the compare page saves it with the rest of its view and a reload, a replay or
// a `resync` redraws exactly the same thing. Times are the server's `ts` values; offsets are
// `ts - t0`, never the browser's clock. Also the statistics (gap percentiles, stalls), the JSON
// export and the duration formats the drawing (timeline.js) labels with. Loaded before
// timeline.js; exposes `window.SwitchboardTimelineData`.
(function () {
  'use strict';

  /** A gap between two tokens is a stall when it is over this many times the median gap… */
  const STALL_FACTOR = 4;
  /** …and over this many milliseconds. */
  const STALL_MIN_MS = 250;

  function newRow() {
    // ticks: server ts of every token; ends: cumulative text length after each token (for the
    // token's text on hover); partial: some arrivals are not known (a resync without them)
    return { ticks: [], ends: [], ttft: null, tools: [], end: null, partial: false };
  }

  function tlOf(turn) {
    if (!turn.tl || typeof turn.tl !== 'object') turn.tl = { t0: null, rows: {} };
    return turn.tl;
  }

  function rowOf(tl, model) {
    if (!tl.rows[model]) tl.rows[model] = newRow();
    return tl.rows[model];
  }

  /** Folds one session event into the turn's timeline data. Returns true when it changed. */
  function record(turn, ev) {
    if (!turn || !ev || typeof ev !== 'object') return false;
    const tl = tlOf(turn);
    const ts = typeof ev.ts === 'number' ? ev.ts : null;
    switch (ev.type) {
      case 'ack':
        if (tl.t0 === null && ts !== null) tl.t0 = ts;
        for (const m of ev.models || []) rowOf(tl, m);
        return true;
      case 'token': {
        if (!ev.model || ts === null || typeof ev.content !== 'string') return false;
        const r = rowOf(tl, ev.model);
        const prev = r.ends.length ? r.ends[r.ends.length - 1] : 0;
        r.ticks.push(ts);
        r.ends.push(prev + ev.content.length);
        return true;
      }
      case 'ttft':
        if (!ev.model || typeof ev.ms !== 'number') return false;
        rowOf(tl, ev.model).ttft = ev.ms;
        return true;
      case 'tool_start': {
        if (!ev.model) return false;
        const r = rowOf(tl, ev.model);
        if (!r.tools.some((t) => t.id === ev.tool_call_id)) {
          r.tools.push({ id: ev.tool_call_id, name: ev.name || '', start: ts, end: null });
        }
        return true;
      }
      case 'tool_end': {
        if (!ev.model) return false;
        const r = rowOf(tl, ev.model);
        let t = r.tools.find((x) => x.id === ev.tool_call_id && x.end === null);
        if (!t) {
          t = { id: ev.tool_call_id, name: ev.name || '', start: ts !== null && typeof ev.ms === 'number' ? ts - ev.ms : ts, end: null };
          r.tools.push(t);
        }
        t.name = ev.name || t.name;
        t.end = ts;
        return true;
      }
      case 'done':
      case 'cancelled':
      case 'error': {
        const models = ev.model ? [ev.model] : (ev.type === 'done' ? [] : (turn.models || []));
        let changed = false;
        for (const m of models) {
          const r = rowOf(tl, m);
          if (r.end) continue;
          r.end = { kind: ev.type, ts, message: ev.type === 'error' ? String(ev.message || ev.code || '') : undefined };
          for (const t of r.tools) if (t.end === null && ev.type === 'done') t.end = ts;
          changed = true;
        }
        return changed;
      }
      default:
        return false;
    }
  }

  /**
   * Rebuilds one model's row from a `resync` snapshot entry. The server's snapshot carries the
   * arrival times as `timeline: {started_ts, token_offsets_ms, token_lens, tool_spans, ended_ms}`;
   * without them, the ticks this page already saw are kept and the row is marked partial.
   */
  function fromSnapshot(turn, model, snap) {
    const tl = tlOf(turn);
    const s = snap && typeof snap === 'object' ? snap : {};
    const metrics = s.metrics || {};
    const t = s.timeline || metrics.timeline;
    const r = rowOf(tl, model);
    if (typeof metrics.ttft_ms === 'number') r.ttft = metrics.ttft_ms;
    if (t && typeof t.started_ts === 'number' && Array.isArray(t.token_offsets_ms)) {
      if (tl.t0 === null) tl.t0 = t.started_ts;
      const base = t.started_ts;
      r.ticks = t.token_offsets_ms.map((o) => base + Number(o));
      const lens = Array.isArray(t.token_lens) && t.token_lens.length === r.ticks.length ? t.token_lens : null;
      let acc = 0;
      r.ends = r.ticks.map((_, i) => { acc += lens ? Number(lens[i]) : 0; return acc; });
      r.partial = !lens ? 'text' : false;
      if (Array.isArray(t.tool_spans)) {
        r.tools = t.tool_spans.map((x) => ({ id: x.tool_call_id, name: x.name || '',
          start: typeof x.start_ms === 'number' ? base + x.start_ms : null,
          end: typeof x.end_ms === 'number' ? base + x.end_ms : null }));
      }
      const kind = String(s.state || '');
      if (['done', 'cancelled', 'error', 'interrupted'].includes(kind)) {
        r.end = { kind: kind === 'interrupted' ? 'cancelled' : kind, ts: typeof t.ended_ms === 'number' ? base + t.ended_ms : null,
          message: kind === 'error' ? String(metrics.error || '') : undefined };
      }
    } else {
      // the server did not send arrival times (a turn from before a restart): keep what was
      // seen, say the row is incomplete
      r.partial = 'times';
      const kind = String(s.state || '');
      if (!r.end && ['done', 'cancelled', 'error', 'interrupted'].includes(kind)) {
        r.end = { kind: kind === 'interrupted' ? 'cancelled' : kind, ts: null };
      }
    }
    return r;
  }

  function percentile(sorted, p) {
    if (!sorted.length) return null;
    const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
    return sorted[idx];
  }

  /**
   * Offsets and statistics of one row: token offsets (ms from t0), inter-token gaps p50 / p99,
   * stalls (gap > STALL_FACTOR × median gap and > STALL_MIN_MS) and the longest one.
   */
  function analyse(tl, model) {
    const r = tl.rows[model] || newRow();
    const t0 = baseOf(tl);
    const offsets = r.ticks.map((ts) => ts - t0);
    const gaps = [];
    for (let i = 1; i < offsets.length; i++) gaps.push(offsets[i] - offsets[i - 1]);
    const sorted = gaps.slice().sort((a, b) => a - b);
    const p50 = percentile(sorted, 50);
    const p99 = percentile(sorted, 99);
    const stalls = [];
    if (p50 !== null) {
      const limit = Math.max(STALL_FACTOR * p50, STALL_MIN_MS);
      for (let i = 1; i < offsets.length; i++) {
        const gap = offsets[i] - offsets[i - 1];
        if (gap > limit) stalls.push({ start_ms: offsets[i - 1], end_ms: offsets[i], gap_ms: gap, after_token: i });
      }
    }
    const longest = stalls.reduce((m, s) => Math.max(m, s.gap_ms), 0);
    return { offsets, gaps, p50, p99, stalls, longest: stalls.length ? longest : null };
  }

  function baseOf(tl) {
    if (typeof tl.t0 === 'number') return tl.t0;
    let min = Infinity;
    for (const r of Object.values(tl.rows)) if (r.ticks.length && r.ticks[0] < min) min = r.ticks[0];
    return isFinite(min) ? min : 0;
  }

  /** The JSON export: per model the offset of every token in ms, TTFT, stalls and tool spans. */
  function exportJson(turn, models) {
    const tl = tlOf(turn);
    const t0 = baseOf(tl);
    const out = {
      request_id: turn.request_id,
      prompt: turn.prompt === undefined ? null : turn.prompt,
      started_ts: tl.t0,
      stall_rule: { factor_of_median_gap: STALL_FACTOR, min_ms: STALL_MIN_MS },
      models: {},
    };
    for (const m of models) {
      const r = tl.rows[m] || newRow();
      const a = analyse(tl, m);
      out.models[m] = {
        tokens: r.ticks.length,
        token_offsets_ms: a.offsets,
        ttft_ms: r.ttft,
        gap_p50_ms: a.p50,
        gap_p99_ms: a.p99,
        longest_stall_ms: a.longest,
        stalls: a.stalls.map((s) => ({ start_ms: s.start_ms, end_ms: s.end_ms, gap_ms: s.gap_ms })),
        tool_spans: r.tools.map((t) => ({ tool_call_id: t.id, name: t.name,
          start_ms: t.start === null ? null : t.start - t0, end_ms: t.end === null ? null : t.end - t0 })),
        end: r.end ? { state: r.end.kind, at_ms: r.end.ts === null ? null : r.end.ts - t0 } : null,
        complete: !r.partial,
      };
    }
    return out;
  }

  // ---------------------------------------------------------------------------------------------
  // Durations, as the drawing labels them

  function fmtOffset(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return '—';
    return `${Math.round(ms).toLocaleString('en-US')} ms`;
  }

  function fmtDur(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return '—';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
    return fmtClock(ms);
  }

  function fmtClock(ms) {
    const s = Math.round(ms / 1000);
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
  }


  window.SwitchboardTimelineData = Object.freeze({
    newRow, tlOf, record, fromSnapshot, analyse, baseOf, exportJson, fmtOffset, fmtDur, fmtClock,
  });
})();
