// The dashboard: unlock with the admin key, register a backend through the form (its
// "test connection" runs on the server), watch it turn healthy, then unhealthy once the backend
// is stopped, edit it, delete it. Also exercises the playground and takes screenshots.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
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

test('dashboard: a wrong admin key is refused and the right one unlocks', async () => {
  const { page, problems, context } = await openPage(browser, `${broker.url}/dashboard`);
  await page.fill('[data-testid=admin-key]', 'not-the-key');
  await page.click('[data-testid=admin-key-save]');
  await page.waitForSelector('[data-testid=key-error]:not([hidden])');
  await unlock(page);
  // demo rows are there, marked as demo
  const demo = page.locator('[data-testid=server-row][data-model=demo-fast]');
  await demo.waitFor();
  assert.match(await demo.textContent(), /demo/);
  assert.equal(await page.locator('#stat-servers').textContent(), '5');
  await shot(page, 'dashboard-servers');
  // the 403 of the wrong key is the only console error
  assert.deepEqual(problems.filter((p) => !/403/.test(p)), []);
  await context.close();
});

test('dashboard: register with test connection, healthy, unhealthy after stop, edit, delete', async () => {
  const backend = await startMock();
  const { page, problems, context } = await openPage(browser, `${broker.url}/dashboard`);
  await unlock(page);
  await page.selectOption('[data-testid=refresh-every]', '2000');

  // a failing connection test stores nothing and offers to register without testing
  await page.click('[data-testid=add-server]');
  await page.fill('[data-testid=reg-model]', 'ui-model');
  await page.fill('[data-testid=reg-url]', 'http://127.0.0.1:9');
  await page.click('[data-testid=reg-submit]');
  await page.waitForSelector('[data-testid=reg-result][data-state=fail]', { timeout: 20000 });
  assert.match(await page.locator('[data-testid=reg-result]').textContent(), /Connection test failed/);
  assert.ok(await page.locator('[data-testid=reg-unverified]').isVisible());
  assert.equal((await broker.admin('GET', '/admin/servers?model=ui-model')).body.total, 0);

  // now the real one: test connection & register
  await page.fill('[data-testid=reg-url]', backend.url);
  await page.fill('[data-testid=reg-owner]', 'ana');
  await page.fill('[data-testid=reg-description]', 'browser test backend');
  await page.click('[data-testid=reg-submit]');
  await page.waitForSelector('[data-testid=reg-result][data-state=ok]', { timeout: 20000 });
  const resultText = await page.locator('[data-testid=reg-result]').textContent();
  assert.match(resultText, /Connection OK/);
  assert.match(resultText, /Registered ui-model/);
  await shot(page, 'dashboard-register-ok');

  const list = (await broker.admin('GET', '/admin/servers?model=ui-model')).body;
  assert.equal(list.total, 1);
  const id = list.servers[0].registration_id;

  // healthy in the table
  await page.click('[data-testid=tab-servers]');
  const row = page.locator(`[data-testid=server-row][data-id="${id}"]`);
  await until(async () => (await row.getAttribute('data-health')) === 'healthy', { message: 'row healthy' });
  assert.match(await row.textContent(), /healthy/);
  assert.match(await row.textContent(), /ana/);

  // filter and sort work on it
  await page.fill('[data-testid=filter]', 'ui-mod');
  await until(async () => (await page.locator('[data-testid=server-row]').count()) === 1, { message: 'filtered to one row' });
  await page.fill('[data-testid=filter]', '');
  // model is the default sort (ascending); one click reverses it
  await page.click('button.sort[data-sort=model_name]');
  assert.equal(await page.locator('th:has(button.sort[data-sort=model_name])').getAttribute('aria-sort'), 'descending');
  const firstModel = await page.locator('[data-testid=server-row]').first().getAttribute('data-model');
  assert.equal(firstModel, 'ui-model', 'descending by model puts ui-model first');

  // detail with history chart
  await row.locator('[data-testid=server-open]').click();
  await page.waitForSelector(`[data-testid=server-detail][data-id="${id}"]`);
  await until(async () => (await page.locator('[data-testid=history-chart] rect[data-ok=true]').count()) >= 2, { message: 'history bars' });
  await page.click('[data-testid=detail-check]');
  await until(async () => /Health check: done/.test(await page.locator('[data-testid=detail-action-result]').textContent()), { message: 'manual check done' });
  await shot(page, 'dashboard-detail-healthy');

  // stop the backend: the live refresh shows it unhealthy (health interval 1 s)
  await backend.stop();
  await until(async () => (await row.getAttribute('data-health')) === 'unhealthy', { timeout: 20000, message: 'row unhealthy' });
  await until(async () => (await page.locator('[data-testid=history-chart] rect[data-ok=false]').count()) >= 1, { timeout: 10000, message: 'a failed check in the chart' });
  assert.match(await page.locator('[data-testid=server-detail]').textContent(), /unhealthy/);
  await shot(page, 'dashboard-detail-unhealthy');

  // edit: owner and description (no new URL, so no connection test needed)
  await page.click('[data-testid=detail-edit]');
  await page.waitForSelector('[data-testid=reg-form][data-mode=edit]');
  assert.equal(await page.inputValue('[data-testid=reg-model]'), 'ui-model');
  await page.fill('[data-testid=reg-owner]', 'bob');
  await page.fill('[data-testid=reg-description]', 'edited in the browser');
  await page.click('[data-testid=reg-submit]');
  await page.waitForSelector('[data-testid=reg-result][data-state=ok]');
  const edited = (await broker.admin('GET', `/admin/servers/${id}`)).body;
  assert.equal(edited.owner, 'bob');
  assert.equal(edited.description, 'edited in the browser');
  await page.click('[data-testid=tab-servers]');
  await until(async () => /bob/.test(await row.textContent()), { message: 'row shows the new owner' });

  // delete (two steps)
  await row.locator('[data-testid=server-open]').click();
  await page.waitForSelector(`[data-testid=server-detail][data-id="${id}"]`);
  await page.click('[data-testid=detail-delete]');
  await page.click('[data-testid=detail-delete-confirm]');
  await until(async () => (await row.count()) === 0, { message: 'row gone' });
  assert.equal((await broker.admin('GET', `/admin/servers/${id}`)).status, 404);
  assert.ok(await page.locator('[data-testid=server-detail]').isHidden());

  // the only failed request the console reports is the refused connection test
  assert.deepEqual(problems.filter((p) => !/status of 503 .*\/admin\/register$/.test(p)), []);
  await context.close();
});

test('dashboard: demo entries cannot be edited or deleted; models view and playground', async () => {
  const { page, problems, context } = await openPage(browser, `${broker.url}/dashboard`);
  await unlock(page);
  await page.locator('[data-testid=server-row][data-model=demo-tools] [data-testid=server-open]').click();
  await page.waitForSelector('[data-testid=server-detail]:not([hidden])');
  // The detail fills in once the record has loaded; then both actions are off for a demo entry.
  await until(async () => await page.locator('[data-testid=detail-edit]').isDisabled(), { message: 'edit disabled for demo' });
  assert.ok(await page.locator('[data-testid=detail-delete]').isDisabled());

  await page.click('[data-testid=tab-models]');
  await page.waitForSelector('[data-testid=model-row][data-model=demo-fast]');
  await shot(page, 'dashboard-models');

  // playground, streaming
  await page.click('[data-testid=tab-playground]');
  await until(async () => (await page.locator('[data-testid=pg-model] option').count()) >= 4, { message: 'model options' });
  await page.selectOption('[data-testid=pg-model]', 'demo-fast');
  await page.fill('[data-testid=pg-message]', 'hello playground');
  await page.click('[data-testid=pg-send]');
  await until(async () => /The quick brown fox jumps over the lazy dog\./.test(await page.locator('[data-testid=pg-output]').textContent()), { message: 'streamed output' });
  await page.waitForSelector('[data-testid=pg-send]:not([disabled])');
  assert.equal(await page.locator('#pg-status').textContent(), '200');
  assert.match(await page.locator('[data-testid=pg-backend]').textContent(), /[0-9a-f]{8}/);
  assert.match(await page.locator('#pg-ttft').textContent(), /\d+ ms|\d\.\d+ s/);
  assert.match(await page.locator('#pg-total').textContent(), /\d+ ms|\d\.\d+ s/);
  assert.match(await page.locator('#pg-tokens').textContent(), /\d+ \/ \d+/);
  await shot(page, 'dashboard-playground');

  // not streamed
  await page.uncheck('[data-testid=pg-stream]');
  await page.fill('[data-testid=pg-message]', 'again');
  await page.click('[data-testid=pg-send]');
  await until(async () => /You said: again\./.test(await page.locator('[data-testid=pg-output]').textContent()), { message: 'non-streamed output' });

  // tool calls show up
  await page.check('[data-testid=pg-stream]');
  await page.selectOption('[data-testid=pg-model]', 'demo-tools');
  await page.click('[data-testid=pg-send]');
  await until(async () => /get_weather/.test(await page.locator('[data-testid=pg-tools]').textContent()), { message: 'tool calls' });

  // phone-sized view of the servers tab
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click('[data-testid=tab-servers]');
  await shot(page, 'dashboard-phone');
  assert.deepEqual(problems, []);
  await context.close();
});
