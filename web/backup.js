// switchboard: the dashboard's backup card. Export downloads the registry as JSON (API keys only
// when asked for); import sends such a file to `/admin/import`, which stores all of it or nothing.
// Loaded before dashboard.js; exposes `window.SwitchboardBackup`.
(function () {
  'use strict';

  const { h } = window.SwitchboardDom;
  const $ = (id) => document.getElementById(id);

  /**
   * Wires the export and import controls. Hooks: `api(method, path, body)` the dashboard's admin
   * API call (it carries the admin key and locks the page on a rejected key), `onImported()` what
   * to refresh after an import.
   */
  function attach(hooks) {
    function backupResult(kind, text) {
      const out = $('backup-result');
      out.dataset.state = kind;
      out.textContent = text;
    }

    $('export').addEventListener('click', async () => {
      const keys = $('export-keys').checked;
      backupResult('pending', 'Exporting…');
      try {
        const doc = await hooks.api('GET', `/admin/export${keys ? '?include_keys=true' : ''}`);
        const n = doc && Array.isArray(doc.servers) ? doc.servers.length : 0;
        const url = URL.createObjectURL(new Blob([JSON.stringify(doc, null, 2)], { type: 'application/json' }));
        const a = h('a', { href: url, download: `switchboard-export-${new Date().toISOString().slice(0, 10)}.json` });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
        backupResult('ok', `Exported ${n} server${n === 1 ? '' : 's'}${keys ? ' with their API keys — keep the file safe' : ' (without API keys)'}.`);
      } catch (e) {
        backupResult('fail', `Export failed: ${e.status === 404 || e.status === 405 ? 'this broker has no export route yet' : e.message}`);
      }
    });

    $('import-file').addEventListener('change', async () => {
      const file = $('import-file').files && $('import-file').files[0];
      $('import-file').value = '';
      if (!file) return;
      let doc;
      try {
        doc = JSON.parse(await file.text());
      } catch (e) {
        backupResult('fail', `Import failed: ${file.name} is not JSON (${e.message}).`);
        return;
      }
      backupResult('pending', `Importing ${file.name}…`);
      try {
        const r = await hooks.api('POST', '/admin/import', doc);
        backupResult('ok', `Imported ${file.name}: ${r && r.created !== undefined ? r.created : '?'} created, ${r && r.skipped !== undefined ? r.skipped : '?'} skipped (already registered).`);
        await hooks.onImported();
      } catch (e) {
        backupResult('fail', `Import failed, nothing was stored: ${e.message}`);
      }
    });
  }

  window.SwitchboardBackup = Object.freeze({ attach });
})();
