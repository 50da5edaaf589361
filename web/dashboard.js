// The admin dashboard (/dashboard): summary cards, servers table with live refresh, server detail
// with its health history chart, register / edit / delete / force check / activate, models view
// and a playground for /v1/chat/completions. Everything goes through the admin API (SPEC §3.1)
// with the admin key from sessionStorage in `X-API-Key`. The chart (health-chart.js), the backup
// card (backup.js) and the playground (playground.js) are their own scripts, wired below.
//
// Server-provided text (model names, URLs, errors, model output) is only inserted as text
// (textContent / text nodes); charts are SVG built with createElementNS; nothing is inline.
(function () {
  'use strict';

  const KEY_ADMIN = 'switchboard.admin_key';
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------------------------------------
  // Helpers

  const { h } = window.SwitchboardDom;
  const { renderHealthHistory } = window.SwitchboardHealthChart;
  const { KEY_CLIENT } = window.SwitchboardPlayground;
  const { fmtMs, fmtAgo, fmtTime, stored, store } = window.SwitchboardCommon;
  function fmtRate(r) {
    return r === null || r === undefined ? '—' : `${Math.round(r * 100)} %`;
  }
  function fmtUptime(s) {
    if (s === null || s === undefined) return '';
    if (s < 120) return `up ${s} s`;
    if (s < 7200) return `up ${Math.floor(s / 60)} min`;
    if (s < 172800) return `up ${Math.floor(s / 3600)} h`;
    return `up ${Math.floor(s / 86400)} d`;
  }

  class ApiError extends Error {
    constructor(status, message, body) { super(message); this.status = status; this.body = body; }
  }

  let adminKey = stored(KEY_ADMIN);
  let backoffUntil = 0;

  /** Calls the admin API; throws ApiError with the server's message on a non-2xx answer. */
  async function api(method, path, body) {
    const headers = { 'X-API-Key': adminKey || '' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let r;
    try {
      r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
    } catch (e) {
      throw new ApiError(0, `cannot reach switchboard (${e.message})`);
    }
    if (r.status === 204) return null;
    let data = null;
    const text = await r.text();
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!r.ok) {
      const msg = data && data.error && data.error.message ? data.error.message : `HTTP ${r.status}`;
      if (r.status === 429) backoffUntil = Date.now() + 1000 * (Number(r.headers.get('Retry-After')) || 10);
      if (r.status === 403 || r.status === 401) lock(`The admin key was rejected (${msg}).`);
      throw new ApiError(r.status, msg, data);
    }
    return data;
  }

  // ---------------------------------------------------------------------------------------------
  // Admin key gate

  function lock(message) {
    adminKey = null;
    store(KEY_ADMIN, null);
    $('app').hidden = true;
    $('key-gate').hidden = false;
    $('forget-key').hidden = true;
    $('key-state').textContent = 'locked';
    $('key-error').hidden = !message;
    $('key-error').textContent = message || '';
    stopRefresh();
    $('admin-key').focus();
  }

  async function unlock(key) {
    adminKey = key;
    try {
      await api('GET', '/admin/stats');
    } catch (e) {
      if (e.status !== 403 && e.status !== 401) {
        $('key-error').hidden = false;
        $('key-error').textContent = e.message;
      }
      return;
    }
    store(KEY_ADMIN, key);
    if (pendingDetail) { const id = pendingDetail; pendingDetail = null; openDetail(id); }
    $('key-gate').hidden = true;
    $('app').hidden = false;
    $('forget-key').hidden = false;
    $('key-state').textContent = 'admin';
    $('key-error').hidden = true;
    refreshAll();
  }

  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('admin-key').value.trim();
    if (key) unlock(key);
  });
  $('forget-key').addEventListener('click', () => lock(null));

  // ---------------------------------------------------------------------------------------------
  // Notices

  let noticeTimer = null;
  function notice(text, kind) {
    $('notice-text').textContent = text;
    $('notice').dataset.kind = kind || 'error';
    $('notice').hidden = false;
    if (noticeTimer) clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { $('notice').hidden = true; }, 10000);
  }
  $('notice-close').addEventListener('click', () => { $('notice').hidden = true; });

  // ---------------------------------------------------------------------------------------------
  // Tabs

  const TABS = ['servers', 'models', 'register', 'playground'];
  function showTab(name) {
    // `#server/{id}` deep-links to a server's detail
    const deep = /^server\/(.+)$/.exec(name || '');
    if (deep) {
      const id = decodeURIComponent(deep[1]);
      showTab('servers');
      if (adminKey && selectedId !== id) openDetail(id);
      else pendingDetail = id;
      return;
    }
    if (!TABS.includes(name)) name = 'servers';
    for (const t of TABS) {
      $(`tab-${t}`).hidden = t !== name;
      $(`tab-btn-${t}`).setAttribute('aria-selected', String(t === name));
    }
    const keepDeepLink = name === 'servers' && selectedId && location.hash === `#server/${encodeURIComponent(selectedId)}`;
    if (location.hash !== `#${name}` && !keepDeepLink) history.replaceState(null, '', `#${name}`);
    if (name === 'models' || name === 'playground') refreshModels();
  }
  for (const b of document.querySelectorAll('[data-tab]')) b.addEventListener('click', () => showTab(b.dataset.tab));
  window.addEventListener('hashchange', () => showTab(location.hash.slice(1)));

  // ---------------------------------------------------------------------------------------------
  // Summary cards

  /** Queue depth per model from `/admin/stats` (`queues`); null when the broker reports none. */
  let queues = null;

  async function refreshStats() {
    const s = await api('GET', '/admin/stats');
    queues = s && s.queues && typeof s.queues === 'object' ? s.queues : null;
    $('stat-servers').textContent = String(s.servers ?? '—');
    $('stat-servers-sub').textContent = s.active !== undefined ? `${s.active} active` : '';
    $('stat-healthy').textContent = String(s.healthy ?? '—');
    $('stat-healthy-sub').textContent = s.servers ? `of ${s.servers} (${Math.round((100 * s.healthy) / s.servers)} %)` : '';
    const healthyCard = document.querySelector('[data-testid=card-healthy]');
    healthyCard.dataset.level = !s.servers ? 'none' : s.healthy === s.servers ? 'ok' : s.healthy === 0 ? 'bad' : 'warn';
    $('stat-models').textContent = String(s.models ?? '—');
    $('stat-sessions').textContent = String(s.sessions ?? '—');
    $('stat-sessions-sub').textContent = s.connections !== undefined ? `${s.connections} connections` : '';
    $('stat-streams').textContent = String(s.streams_in_flight ?? '—');
    $('stat-requests').textContent = String(s.requests_routed ?? '—');
    try {
      const r = await fetch('/health', { cache: 'no-store' });
      const j = await r.json();
      $('stat-uptime').textContent = [j.version ? `v${j.version}` : '', fmtUptime(j.uptime_s)].filter(Boolean).join(' · ');
    } catch (_) { /* optional */ }
  }

  // ---------------------------------------------------------------------------------------------
  // Servers table

  let servers = [];
  let pendingDetail = null; // a deep-linked server to open once unlocked
  let sortKey = 'model_name';
  let sortDir = 1;
  let selectedId = null;

  const HEALTH_ORDER = { unhealthy: 0, unknown: 1, healthy: 2 };

  async function refreshServers() {
    const j = await api('GET', '/admin/servers');
    servers = (j && j.servers) || [];
    renderServers();
    renderModels();
    if (selectedId) {
      if (!servers.some((s) => s.registration_id === selectedId)) closeDetail();
      else await refreshDetail();
    }
  }

  function healthOf(s) {
    if (!s.is_active) return 'inactive';
    return s.health_status || 'unknown';
  }

  function renderServers() {
    const q = $('filter').value.trim().toLowerCase();
    const status = $('status-filter').value;
    let rows = servers.filter((s) => {
      if (q && ![s.model_name, s.endpoint_url, s.owner || '', s.description || ''].some((v) => String(v).toLowerCase().includes(q))) return false;
      if (status === 'active' && !s.is_active) return false;
      if (status === 'inactive' && s.is_active) return false;
      if (['healthy', 'unhealthy', 'unknown'].includes(status) && s.health_status !== status) return false;
      return true;
    });
    rows = rows.slice().sort((a, b) => {
      let va = a[sortKey];
      let vb = b[sortKey];
      if (sortKey === 'health_status') { va = HEALTH_ORDER[healthOf(a)] ?? -1; vb = HEALTH_ORDER[healthOf(b)] ?? -1; }
      if (va === null || va === undefined) va = typeof vb === 'number' ? -Infinity : '';
      if (vb === null || vb === undefined) vb = typeof va === 'number' ? -Infinity : '';
      const c = typeof va === 'number' && typeof vb === 'number' ? va - vb : String(va).localeCompare(String(vb));
      return c * sortDir || a.model_name.localeCompare(b.model_name);
    });
    for (const b of document.querySelectorAll('button.sort')) {
      const th = b.parentElement;
      if (b.dataset.sort === sortKey) th.setAttribute('aria-sort', sortDir > 0 ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    }
    $('queue-col').hidden = !queues;
    const body = $('servers-body');
    body.replaceChildren(...rows.map(serverRow));
    $('servers-empty').hidden = rows.length > 0;
    $('servers-empty').textContent = servers.length ? 'No backends match the filter.' : 'No backends registered yet — use “Register a backend”.';
    $('updated-at').textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  function healthCell(s) {
    const health = healthOf(s);
    const label = health === 'inactive' ? 'inactive' : health;
    return h('span', { class: `health health-${health}`, 'data-testid': 'server-health' }, h('span', { class: 'dot', 'aria-hidden': 'true' }), label);
  }

  /** "in flight / limit" (SPEC §2.1 `max_concurrency`), just the count when unlimited. */
  function inFlightText(s) {
    const n = String(s.in_flight ?? 0);
    return typeof s.max_concurrency === 'number' ? `${n} / ${s.max_concurrency}` : n;
  }
  function limitTitle(s) {
    return typeof s.max_concurrency === 'number' ? `${s.in_flight ?? 0} in flight of at most ${s.max_concurrency}` : 'no concurrency limit';
  }

  function serverRow(s) {
    const open = h('button', { type: 'button', class: 'link-button model-link', 'data-testid': 'server-open' }, s.model_name);
    open.addEventListener('click', () => openDetail(s.registration_id));
    const tr = h('tr', {
      'data-testid': 'server-row', 'data-id': s.registration_id, 'data-model': s.model_name,
      'data-health': s.health_status, 'data-active': String(!!s.is_active),
      class: s.registration_id === selectedId ? 'selected' : null,
    },
    h('td', null, healthCell(s)),
    h('td', { class: 'model-cell' }, open, s.demo ? h('span', { class: 'tag' }, 'demo') : null),
    h('td', { class: 'url-cell', title: s.endpoint_url }, s.endpoint_url),
    h('td', null, s.owner || '—'),
    h('td', { class: 'num' }, fmtMs(s.last_latency_ms)),
    h('td', { class: 'num' }, fmtRate(s.success_rate)),
    h('td', { title: fmtTime(s.last_checked_at) }, fmtAgo(s.last_checked_at)),
    h('td', { class: 'num' }, String(s.requests_routed ?? 0)),
    h('td', { class: 'num', 'data-testid': 'server-in-flight', title: limitTitle(s) }, inFlightText(s)),
    queues ? h('td', { class: 'num', 'data-testid': 'server-queue', title: `requests of ${s.model_name} waiting for a free backend` }, String(queues[s.model_name] ?? 0)) : null);
    tr.addEventListener('click', (e) => { if (e.target === tr || e.target.tagName === 'TD') openDetail(s.registration_id); });
    return tr;
  }

  for (const b of document.querySelectorAll('button.sort')) {
    b.addEventListener('click', () => {
      if (sortKey === b.dataset.sort) sortDir = -sortDir;
      else { sortKey = b.dataset.sort; sortDir = ['requests_routed', 'in_flight', 'last_checked_at', 'success_rate'].includes(sortKey) ? -1 : 1; }
      renderServers();
    });
  }
  $('filter').addEventListener('input', renderServers);
  $('status-filter').addEventListener('change', renderServers);

  // ---------------------------------------------------------------------------------------------
  // Server detail

  let detail = null;

  async function openDetail(id) {
    selectedId = id;
    if (location.hash !== `#server/${encodeURIComponent(id)}`) history.replaceState(null, '', `#server/${encodeURIComponent(id)}`);
    deleteArmed(false);
    $('detail-action-result').textContent = '';
    $('detail').hidden = false;
    renderServers();
    await refreshDetail();
    $('detail').scrollIntoView({ block: 'nearest', behavior: 'smooth' });
  }

  function closeDetail() {
    selectedId = null;
    detail = null;
    $('detail').hidden = true;
    if (location.hash.startsWith('#server/')) history.replaceState(null, '', '#servers');
    renderServers();
  }
  $('detail-close').addEventListener('click', closeDetail);

  async function refreshDetail() {
    if (!selectedId) return;
    try {
      detail = await api('GET', `/admin/servers/${encodeURIComponent(selectedId)}`);
    } catch (e) {
      if (e.status === 404) { closeDetail(); return; }
      throw e;
    }
    renderDetail();
  }

  function renderDetail() {
    const s = detail;
    if (!s) return;
    $('detail').dataset.id = s.registration_id;
    $('detail').dataset.health = s.health_status;
    $('detail-title').textContent = s.model_name;
    $('detail-badges').replaceChildren(...[healthCell(s), s.demo ? h('span', { class: 'tag' }, 'demo') : null].filter(Boolean));
    const fields = [
      ['Registration id', copyable(s.registration_id, 'copy-id'), 'mono'],
      ['Endpoint', copyable(s.endpoint_url, 'copy-url'), 'mono'],
      ['Link', copyable(`${location.origin}/dashboard#server/${encodeURIComponent(s.registration_id)}`, 'copy-link'), 'mono'],
      ['Max concurrency', typeof s.max_concurrency === 'number' ? `${s.in_flight ?? 0} in flight of ${s.max_concurrency}` : 'unlimited'],
      ['Upstream model', s.upstream_model || 'same as the model name'],
      ['Health check', s.health_check || 'models'],
      ['Owner', s.owner || '—'],
      ['Description', s.description || '—'],
      ['API key', s.has_api_key ? 'set (hidden)' : 'none'],
      ['Status', `${s.health_status}${s.is_active ? '' : ' · deactivated'}`],
      ['Consecutive failures', String(s.consecutive_failures ?? 0)],
      ['Last check', `${fmtAgo(s.last_checked_at)} (${fmtTime(s.last_checked_at)})`],
      ['Last latency', fmtMs(s.last_latency_ms)],
      ['Success rate', fmtRate(s.success_rate)],
      ['Last error', s.last_error || '—'],
      ['Requests routed', String(s.requests_routed ?? 0)],
      ['In flight', String(s.in_flight ?? 0)],
      ['Registered', fmtTime(s.registered_at)],
      ['Updated', fmtTime(s.updated_at)],
    ];
    $('detail-fields').replaceChildren(...fields.map(([k, v, cls]) => h('div', { class: 'field' }, h('dt', null, k), h('dd', { class: cls || null }, v))));
    $('detail-activate').hidden = !!s.is_active;
    for (const id of ['detail-edit', 'detail-delete']) {
      $(id).disabled = !!s.demo;
      $(id).title = s.demo ? 'built-in demo entries cannot be changed' : '';
    }
    renderHealthHistory({ chart: $('history-chart'), summary: $('history-summary'), errors: $('history-errors') }, s.health_history || []);
  }

  /** A value with a copy button (registration id, URL). */
  function copyable(text, testid) {
    const btn = h('button', { type: 'button', class: 'link-button copy', 'data-testid': testid, title: 'copy to the clipboard' }, 'copy');
    btn.addEventListener('click', async () => {
      const ok = await copyText(text);
      btn.textContent = ok ? 'copied' : 'copy failed';
      setTimeout(() => { btn.textContent = 'copy'; }, 1500);
    });
    const frag = document.createDocumentFragment();
    frag.append(h('span', { class: 'copy-value' }, text), ' ', btn);
    return frag;
  }

  async function copyText(text) {
    try {
      if (navigator.clipboard && window.isSecureContext) { await navigator.clipboard.writeText(text); return true; }
    } catch (_) { /* fall back below */ }
    const ta = h('textarea', { class: 'visually-hidden', readonly: true });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch (_) { ok = false; }
    ta.remove();
    return ok;
  }

  async function detailAction(label, fn) {
    const out = $('detail-action-result');
    out.textContent = `${label}…`;
    try {
      await fn();
      await Promise.all([refreshServers(), refreshStats()]);
      out.textContent = `${label}: done`;
    } catch (e) {
      out.textContent = `${label} failed: ${e.message}`;
    }
  }

  $('detail-check').addEventListener('click', () => detailAction('Health check', async () => {
    const s = await api('POST', `/admin/servers/${encodeURIComponent(selectedId)}/health-check`);
    detail = Object.assign({}, detail, s);
  }));
  $('detail-activate').addEventListener('click', () => detailAction('Activate', () => api('POST', `/admin/servers/${encodeURIComponent(selectedId)}/activate`)));
  $('detail-edit').addEventListener('click', () => { if (detail) startEdit(detail); });

  let armTimer = null;
  function deleteArmed(on) {
    $('detail-delete').hidden = on;
    $('detail-delete-confirm').hidden = !on;
    if (armTimer) { clearTimeout(armTimer); armTimer = null; }
    if (on) armTimer = setTimeout(() => deleteArmed(false), 5000);
  }
  $('detail-delete').addEventListener('click', () => deleteArmed(true));
  $('detail-delete-confirm').addEventListener('click', async () => {
    const id = selectedId;
    const name = detail ? detail.model_name : id;
    deleteArmed(false);
    try {
      await api('DELETE', `/admin/register/${encodeURIComponent(id)}`);
      closeDetail();
      notice(`Deleted ${name}.`, 'info');
      await Promise.all([refreshServers(), refreshStats()]);
    } catch (e) {
      $('detail-action-result').textContent = `Delete failed: ${e.message}`;
    }
  });

  // ---------------------------------------------------------------------------------------------
  // Register / edit form

  let editing = null; // the record being edited, or null when registering

  function resetForm() {
    editing = null;
    $('reg-form').reset();
    $('reg-form').dataset.mode = 'create';
    $('reg-title').textContent = 'Register a backend';
    $('reg-submit').textContent = 'Test connection & register';
    $('reg-cancel').hidden = true;
    $('reg-unverified').hidden = true;
    $('reg-clear-key-row').hidden = true;
    $('reg-key').placeholder = 'optional';
    setResult(null);
  }

  function startEdit(s) {
    resetForm();
    editing = s;
    $('reg-form').dataset.mode = 'edit';
    $('reg-title').textContent = `Edit ${s.model_name}`;
    $('reg-model').value = s.model_name;
    $('reg-url').value = s.endpoint_url;
    $('reg-owner').value = s.owner || '';
    $('reg-description').value = s.description || '';
    $('reg-max-concurrency').value = typeof s.max_concurrency === 'number' ? String(s.max_concurrency) : '';
    $('reg-upstream-model').value = s.upstream_model || '';
    $('reg-health-check').value = s.health_check === 'passive' ? 'passive' : 'models';
    $('reg-key').placeholder = s.has_api_key ? 'unchanged (a key is set)' : 'none';
    $('reg-clear-key-row').hidden = !s.has_api_key;
    $('reg-submit').textContent = 'Save (tests a new URL or key)';
    $('reg-cancel').hidden = false;
    showTab('register');
    $('reg-model').focus();
  }

  function setResult(kind, ...content) {
    const box = $('reg-result');
    if (!kind) { box.hidden = true; box.replaceChildren(); delete box.dataset.state; return; }
    box.hidden = false;
    box.dataset.state = kind;
    box.replaceChildren(...content);
  }

  function formValues() {
    const v = (id) => $(id).value.trim();
    return { model_name: v('reg-model'), endpoint_url: v('reg-url'), api_key: v('reg-key'), owner: v('reg-owner'), description: v('reg-description'),
      max_concurrency: v('reg-max-concurrency'), upstream_model: v('reg-upstream-model'), health_check: $('reg-health-check').value };
  }

  /** Where the health check goes (SPEC §3.1 base-URL rule): `/v1` is added unless the path ends in a version. */
  function modelsUrl(base) {
    const b = base.replace(/\/+$/, '');
    let path = '';
    try { path = new URL(b).pathname.replace(/\/+$/, ''); } catch (_) { return `${b}/v1/models`; }
    return /\/v\d+(\/openai)?$/.test(path) ? `${b}/models` : `${b}/v1/models`;
  }

  function validate(f) {
    if (!f.model_name) return 'Model name is required.';
    if (!f.endpoint_url) return 'Endpoint URL is required.';
    let u;
    try { u = new URL(f.endpoint_url); } catch (_) { return 'Endpoint URL is not a valid URL (e.g. http://10.0.0.7:11434).'; }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return 'Endpoint URL must start with http:// or https://.';
    if (u.username || u.password) return 'Put credentials in the API key field, not in the URL.';
    if (f.max_concurrency !== '' && !/^\d+$/.test(f.max_concurrency)) return 'Max concurrency must be a whole number from 1 to 10000 (or empty for unlimited).';
    if (f.max_concurrency !== '' && (Number(f.max_concurrency) < 1 || Number(f.max_concurrency) > 10000)) return 'Max concurrency must be from 1 to 10000 (or empty for unlimited).';
    return null;
  }

  async function submitForm(verify) {
    const f = formValues();
    const problem = validate(f);
    if (problem) { setResult('fail', problem); return; }
    const busy = [$('reg-submit'), $('reg-unverified')];
    busy.forEach((b) => { b.disabled = true; });
    setResult('pending', verify ? `Testing ${modelsUrl(f.endpoint_url)} from the switchboard server…` : 'Saving…');
    try {
      let rec;
      if (!editing) {
        const body = { model_name: f.model_name, endpoint_url: f.endpoint_url, verify };
        if (f.api_key) body.api_key = f.api_key;
        if (f.owner) body.owner = f.owner;
        if (f.description) body.description = f.description;
        if (f.max_concurrency !== '') body.max_concurrency = Number(f.max_concurrency);
        if (f.upstream_model) body.upstream_model = f.upstream_model;
        if (f.health_check && f.health_check !== 'models') body.health_check = f.health_check;
        rec = await api('POST', '/admin/register', body);
      } else {
        const body = { verify };
        if (f.model_name !== editing.model_name) body.model_name = f.model_name;
        if (f.endpoint_url !== editing.endpoint_url) body.endpoint_url = f.endpoint_url;
        if (f.owner !== (editing.owner || '')) body.owner = f.owner || null;
        if (f.description !== (editing.description || '')) body.description = f.description || null;
        if (f.api_key) body.api_key = f.api_key;
        else if ($('reg-clear-key').checked) body.api_key = null;
        const limit = f.max_concurrency === '' ? null : Number(f.max_concurrency);
        if (limit !== (typeof editing.max_concurrency === 'number' ? editing.max_concurrency : null)) body.max_concurrency = limit;
        if (f.upstream_model !== (editing.upstream_model || '')) body.upstream_model = f.upstream_model || null;
        if (f.health_check !== (editing.health_check || 'models')) body.health_check = f.health_check;
        rec = await api('PUT', `/admin/register/${encodeURIComponent(editing.registration_id)}`, body);
      }
      const wasEdit = !!editing;
      const checked = rec.health_status === 'healthy'
        ? `Connection OK${rec.last_latency_ms !== null && rec.last_latency_ms !== undefined ? ` (${fmtMs(rec.last_latency_ms)})` : ''}. `
        : verify && !wasEdit ? '' : `Not tested — health: ${rec.health_status}. `;
      const open = h('button', { type: 'button', class: 'link-button', 'data-testid': 'reg-open' }, 'Show it');
      open.addEventListener('click', () => { showTab('servers'); openDetail(rec.registration_id); });
      resetForm();
      setResult('ok', `${checked}${wasEdit ? 'Saved' : 'Registered'} ${rec.model_name} → ${rec.endpoint_url}. `, open);
      await Promise.all([refreshServers(), refreshStats()]);
    } catch (e) {
      if (e.status === 503 && verify) {
        setResult('fail', h('strong', null, 'Connection test failed: '), e.message, h('br'),
          h('span', { class: 'muted' }, 'Nothing was stored. Fix the URL or key, or save without testing (the backend stays out of the rotation until a check succeeds).'));
        $('reg-unverified').hidden = false;
        $('reg-unverified').textContent = editing ? 'Save without testing' : 'Register without testing';
      } else {
        setResult('fail', `${editing ? 'Save' : 'Registration'} failed (${e.status || 'network'}): ${e.message}`);
      }
    } finally {
      busy.forEach((b) => { b.disabled = false; });
    }
  }

  $('reg-form').addEventListener('submit', (e) => { e.preventDefault(); submitForm(true); });
  $('reg-unverified').addEventListener('click', () => submitForm(false));
  $('reg-cancel').addEventListener('click', () => { resetForm(); showTab('servers'); });
  $('add-server').addEventListener('click', () => { resetForm(); showTab('register'); $('reg-model').focus(); });

  // ---------------------------------------------------------------------------------------------
  // Models view

  let models = [];

  async function refreshModels() {
    try {
      const headers = {};
      const ck = stored(KEY_CLIENT);
      if (ck) headers.Authorization = `Bearer ${ck}`;
      const r = await fetch('/v1/models', { headers, cache: 'no-store' });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      models = ((await r.json()).data || []).map((m) => ({ id: String(m.id), backends: m.backends, healthy_backends: m.healthy_backends }));
    } catch (_) {
      // /v1/models may need a client key; fall back to what the registry says
      const names = [...new Set(servers.filter((s) => s.is_active).map((s) => s.model_name))];
      models = names.map((id) => ({ id, backends: null, healthy_backends: null }));
    }
    models.sort((a, b) => a.id.localeCompare(b.id));
    renderModels();
    renderModelSelect();
  }

  function renderModels() {
    const byModel = new Map();
    for (const s of servers) {
      const e = byModel.get(s.model_name) || { routed: 0, owners: new Set(), total: 0, healthy: 0 };
      e.routed += s.requests_routed || 0;
      e.total += 1;
      if (s.is_active && s.health_status === 'healthy') e.healthy += 1;
      if (s.owner) e.owners.add(s.owner);
      byModel.set(s.model_name, e);
    }
    const q = $('models-filter').value.trim().toLowerCase();
    const want = $('models-health').value;
    const rows = models.map((m) => {
      const agg = byModel.get(m.id) || { routed: 0, owners: new Set(), total: 0, healthy: 0 };
      const backends = m.backends ?? agg.total;
      const healthy = m.healthy_backends ?? agg.healthy;
      const pct = backends ? Math.round((100 * healthy) / backends) : null;
      const level = pct === null || healthy === 0 ? 'down' : healthy === backends ? 'healthy' : 'degraded';
      if (q && !m.id.toLowerCase().includes(q) && ![...agg.owners].some((o) => o.toLowerCase().includes(q))) return null;
      if (want && want !== level) return null;
      const tryBtn = h('button', { type: 'button', class: 'link-button' }, 'playground');
      tryBtn.addEventListener('click', () => { showTab('playground'); $('pg-model').value = m.id; $('pg-message').focus(); });
      return h('tr', { 'data-testid': 'model-row', 'data-model': m.id },
        h('td', null, h('span', { class: `health health-${healthy > 0 ? 'healthy' : 'unhealthy'}` }, h('span', { class: 'dot', 'aria-hidden': 'true' }), m.id)),
        h('td', { class: 'num' }, String(backends)),
        h('td', { class: 'num' }, String(healthy)),
        h('td', { class: 'num', 'data-testid': 'model-health-pct', 'data-level': level }, pct === null ? '—' : `${pct} %`),
        h('td', { class: 'num' }, String(agg.routed)),
        h('td', null, agg.owners.size ? [...agg.owners].join(', ') : '—'),
        h('td', null, h('a', { href: `/?models=${encodeURIComponent(m.id)}` }, 'compare'), ' · ', tryBtn));
    });
    const shown = rows.filter(Boolean);
    $('models-body').replaceChildren(...shown);
    $('models-empty').hidden = shown.length > 0;
    $('models-empty').textContent = models.length ? 'No model matches the filter.' : 'No model has an active backend yet.';
  }

  function renderModelSelect() {
    const sel = $('pg-model');
    const current = sel.value;
    sel.replaceChildren(...models.map((m) => h('option', { value: m.id }, m.id)));
    if (models.some((m) => m.id === current)) sel.value = current;
  }

  $('models-filter').addEventListener('input', renderModels);
  $('models-health').addEventListener('change', renderModels);

  // ---------------------------------------------------------------------------------------------
  // Backup (backup.js) and the playground (playground.js)

  window.SwitchboardBackup.attach({ api, onImported: () => Promise.all([refreshServers(), refreshStats()]) });
  window.SwitchboardPlayground.attach({ serverUrl: (id) => (servers.find((x) => x.registration_id === id) || {}).endpoint_url || null });

  // ---------------------------------------------------------------------------------------------
  // Live refresh

  let refreshTimer = null;
  let refreshing = false;

  async function refreshAll() {
    if (!adminKey || refreshing) return;
    refreshing = true;
    try {
      if (Date.now() >= backoffUntil) {
        await Promise.all([refreshStats(), refreshServers()]);
        if (!$('tab-models').hidden || !$('tab-playground').hidden || !models.length) await refreshModels();
      }
    } catch (e) {
      if (e.status !== 403 && e.status !== 401) notice(`Refresh failed: ${e.message}`);
    } finally {
      refreshing = false;
      scheduleRefresh();
    }
  }

  function scheduleRefresh() {
    stopRefresh();
    const every = Number($('refresh-every').value);
    if (!adminKey || !every) return;
    const wait = Math.max(every, backoffUntil - Date.now());
    refreshTimer = setTimeout(() => { if (document.visibilityState !== 'hidden') refreshAll(); else scheduleRefresh(); }, wait);
  }
  function stopRefresh() {
    if (refreshTimer) { clearTimeout(refreshTimer); refreshTimer = null; }
  }

  $('refresh-every').addEventListener('change', scheduleRefresh);
  $('refresh-now').addEventListener('click', refreshAll);
  document.addEventListener('visibilitychange', () => { if (document.visibilityState === 'visible' && adminKey) refreshAll(); });

  // ---------------------------------------------------------------------------------------------
  // Start

  showTab(location.hash.slice(1) || 'servers');
  if (adminKey) unlock(adminKey);
  else lock(null);
}());
