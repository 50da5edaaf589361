// The dashboard's newer parts: max_concurrency / upstream_model / health_check in the register
// form, in-flight / limit and queue depth in the servers table, export / import, the
// `#server/{id}` deep link with copy buttons, and the Models view's health % and filters.
// Fields another part of the broker adds (max_concurrency, queues, export/import) are injected
// into the real broker's answers with page.route where this build may not have them yet, so the
// page is tested both with and without them.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startBroker, startMock, launchBrowser, openPage, shot, until } from './harness.mjs';

let broker;
let mock;
let browser;

before(async () => {
  broker = await startBroker();
  mock = await startMock();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await mock?.stop();
  await broker?.stop();
});

async function unlock(page) {
  await page.waitForSelector('[data-testid=key-gate]:not([hidden])');
  await page.fill('[data-testid=admin-key]', broker.adminKey);
  await page.click('[data-testid=admin-key-save]');
  await page.waitForSelector('[data-testid=server-row]');
}

test('dashboard: in flight / limit and queue depth when the broker reports them, plain counts when not', async () => {
  const { page, problems, context } = await openPage(browser, null);
  let withFields = false;
  await page.route('**/admin/servers', async (route) => {
    const res = await route.fetch();
    const body = await res.json();
    for (const s of body.servers) {
      if (withFields && s.model_name === 'demo-fast') { s.max_concurrency = 4; s.in_flight = 3; }
      if (!withFields) delete s.max_concurrency;
    }
    await route.fulfill({ response: res, json: body });
  });
  await page.route('**/admin/stats', async (route) => {
    const res = await route.fetch();
    const body = await res.json();
    // Before: a broker that reports no queues (older, or none yet); after: one that does.
    if (withFields) body.queues = { 'demo-fast': 7 };
    else delete body.queues;
    await route.fulfill({ response: res, json: body });
  });
  await page.goto(`${broker.url}/dashboard`);
  await unlock(page);
  const fast = page.locator('[data-testid=server-row][data-model=demo-fast]');
  assert.match(await fast.locator('[data-testid=server-in-flight]').textContent(), /^\d+$/, 'no limit: just the count');
  assert.ok(await page.locator('[data-testid=queue-col]').isHidden(), 'no queue column without `queues`');
  assert.equal(await fast.locator('[data-testid=server-queue]').count(), 0);

  withFields = true;
  await page.click('[data-testid=refresh-now]');
  await until(async () => (await fast.locator('[data-testid=server-in-flight]').textContent()) === '3 / 4', { message: 'in flight / limit' });
  await until(async () => (await fast.locator('[data-testid=server-queue]').count()) === 1, { message: 'queue cell' });
  assert.equal(await fast.locator('[data-testid=server-queue]').textContent(), '7');
  assert.equal(await page.locator('[data-testid=server-row][data-model=demo-tools] [data-testid=server-queue]').textContent(), '0');
  assert.ok(await page.locator('[data-testid=queue-col]').isVisible());
  await shot(page, 'dashboard-limits');
  assert.deepEqual(problems, []);
  await context.close();
});

test('dashboard: the register form sends max_concurrency, upstream_model and health_check, and checks the limit', async () => {
  const { page, context } = await openPage(browser, `${broker.url}/dashboard`);
  await unlock(page);
  await page.click('[data-testid=add-server]');
  await page.fill('[data-testid=reg-model]', 'limited-model');
  await page.fill('[data-testid=reg-url]', mock.url);
  for (const bad of ['0', '10001', '2.5']) {
    await page.fill('[data-testid=reg-max-concurrency]', bad);
    await page.click('[data-testid=reg-submit]');
    await page.waitForSelector('[data-testid=reg-result][data-state=fail]');
    assert.match(await page.locator('[data-testid=reg-result]').textContent(), /Max concurrency must be/, bad);
  }
  await page.fill('[data-testid=reg-max-concurrency]', '3');
  await page.fill('[data-testid=reg-upstream-model]', 'mock-chat');
  await page.selectOption('[data-testid=reg-health-check]', 'passive');
  const sent = page.waitForRequest((r) => r.url().endsWith('/admin/register') && r.method() === 'POST');
  await page.click('[data-testid=reg-submit]');
  const body = JSON.parse((await sent).postData());
  assert.equal(body.max_concurrency, 3);
  assert.equal(body.upstream_model, 'mock-chat');
  assert.equal(body.health_check, 'passive');
  // a broker that knows the fields registers it; one that does not says which field it refused
  await page.waitForSelector('[data-testid=reg-result][data-state=ok], [data-testid=reg-result][data-state=fail]', { timeout: 20000 });
  const state = await page.getAttribute('[data-testid=reg-result]', 'data-state');
  if (state === 'fail') assert.match(await page.locator('[data-testid=reg-result]').textContent(), /max_concurrency|upstream_model|health_check/);
  else {
    const rec = (await broker.admin('GET', '/admin/servers?model=limited-model')).body.servers[0];
    assert.equal(rec.max_concurrency, 3);
  }
  await context.close();
});

test('dashboard: export (with or without keys) downloads JSON; import shows created / skipped or the error', async (t) => {
  const { page, context } = await openPage(browser, null);
  const exportUrls = [];
  const doc = { version: 1, exported_at: '2026-01-01T00:00:00Z', servers: [{ model_name: 'x', endpoint_url: 'http://127.0.0.1:1' }] };
  await page.route('**/admin/export*', async (route) => {
    exportUrls.push(route.request().url());
    if (route.request().headers()['x-api-key'] !== broker.adminKey) { await route.fulfill({ status: 403, json: { error: { message: 'no key' } } }); return; }
    await route.fulfill({ json: doc });
  });
  let importAnswer = { status: 200, json: { created: 2, skipped: 1 } };
  let imported = null;
  await page.route('**/admin/import', async (route) => {
    imported = JSON.parse(route.request().postData());
    await route.fulfill(importAnswer);
  });
  await page.goto(`${broker.url}/dashboard`);
  await unlock(page);

  let download = page.waitForEvent('download');
  await page.click('[data-testid=export]');
  let file = await (await download).path();
  assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), doc);
  assert.ok(!exportUrls[0].includes('include_keys'));
  assert.match(await page.locator('[data-testid=backup-result]').textContent(), /Exported 1 server \(without API keys\)/);
  await page.check('[data-testid=export-keys]');
  download = page.waitForEvent('download');
  await page.click('[data-testid=export]');
  await download;
  assert.ok(exportUrls[1].endsWith('/admin/export?include_keys=true'));

  const dir = mkdtempSync(join(tmpdir(), 'sb-import-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'backup.json');
  writeFileSync(path, JSON.stringify(doc));
  await page.setInputFiles('[data-testid=import-file]', path);
  await until(async () => /created/.test(await page.locator('[data-testid=backup-result]').textContent()), { message: 'import result' });
  assert.match(await page.locator('[data-testid=backup-result]').textContent(), /2 created, 1 skipped/);
  assert.deepEqual(imported, doc);

  importAnswer = { status: 400, json: { error: { message: 'servers[0].endpoint_url: not a valid URL', type: 'invalid_request_error', param: 'servers[0].endpoint_url', code: null } } };
  await page.setInputFiles('[data-testid=import-file]', path);
  await until(async () => /failed/.test(await page.locator('[data-testid=backup-result]').textContent()), { message: 'import error' });
  assert.match(await page.locator('[data-testid=backup-result]').textContent(), /nothing was stored: servers\[0\]\.endpoint_url: not a valid URL/);
  writeFileSync(path, '{not json');
  await page.setInputFiles('[data-testid=import-file]', path);
  await until(async () => /is not JSON/.test(await page.locator('[data-testid=backup-result]').textContent()), { message: 'bad file' });
  await context.close();
});

test('dashboard: #server/{id} deep-links to the detail; copy buttons; models view health % and filters', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: broker.url });
  const servers = (await broker.admin('GET', '/admin/servers')).body.servers;
  const stalls = servers.find((s) => s.model_name === 'demo-stalls');
  assert.ok(stalls, 'demo-stalls is registered');
  const page = await context.newPage();
  await page.addInitScript((k) => sessionStorage.setItem('switchboard.admin_key', k), broker.adminKey);
  await page.goto(`${broker.url}/dashboard#server/${stalls.registration_id}`);
  await page.waitForSelector(`[data-testid=server-detail][data-id="${stalls.registration_id}"]`);
  assert.equal(await page.locator('#detail-title').textContent(), 'demo-stalls');
  await page.click('[data-testid=copy-id]');
  await until(async () => (await page.locator('[data-testid=copy-id]').textContent()) === 'copied', { message: 'copied' });
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), stalls.registration_id);
  await page.click('[data-testid=copy-url]');
  await until(async () => (await page.evaluate(() => navigator.clipboard.readText())) === stalls.endpoint_url, { message: 'url copied' });
  // opening another server moves the link; closing goes back to the list
  await page.locator('[data-testid=server-row][data-model=demo-fast] [data-testid=server-open]').click();
  const fast = servers.find((s) => s.model_name === 'demo-fast');
  await until(async () => (await page.evaluate(() => location.hash)) === `#server/${fast.registration_id}`, { message: 'hash follows' });
  await page.click('[data-testid=detail-close]');
  assert.equal(await page.evaluate(() => location.hash), '#servers');

  await page.click('[data-testid=tab-models]');
  await page.waitForSelector('[data-testid=model-row][data-model=demo-stalls]');
  assert.equal(await page.locator('[data-testid=model-row][data-model=demo-fast] [data-testid=model-health-pct]').textContent(), '100 %');
  await page.fill('[data-testid=models-filter]', 'stall');
  await until(async () => (await page.locator('[data-testid=model-row]').count()) === 1, { message: 'filtered to demo-stalls' });
  await page.fill('[data-testid=models-filter]', '');
  await page.selectOption('[data-testid=models-health]', 'down');
  await until(async () => (await page.locator('[data-testid=model-row]').count()) === 0, { message: 'no model is down' });
  assert.ok(await page.locator('#models-empty').isVisible());
  await page.selectOption('[data-testid=models-health]', '');
  await shot(page, 'dashboard-models-health');
  await context.close();
});
