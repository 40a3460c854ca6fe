// Drives the query page in headless Chromium (Debian's /usr/bin/chromium through
// playwright-core) against a running m3query, as tests/ui.rs does:
//
//   node e2e/ui.mjs --url http://127.0.0.1:7201 --metric NAME --jaeger URL [--screenshot FILE]
//
// Types the first letters of NAME into the editor and expects the completion list to offer
// NAME; accepts it and runs the range query; expects the graph drawn (painted canvas pixels),
// the table's rows, the phase bar, and the trace link to be <jaeger>/trace/<X-Trace-Id of the
// query response>; then checks the slow-query and TSDB pages. Prints a JSON report on stdout;
// exits 1 naming the first check that failed.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    metric: { type: 'string' },
    jaeger: { type: 'string', default: '' },
    screenshot: { type: 'string' },
    chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
  },
});
function fail(msg) {
  console.error(`e2e/ui.mjs: ${msg}`);
  process.exit(1);
}
if (!args.url || !args.metric) fail('usage: --url URL --metric NAME [--jaeger URL] [--screenshot FILE]');
if (!fs.existsSync(args.chromium)) {
  fail(`no Chromium at ${args.chromium}: install Debian's chromium (scripts/test-deps does) or set CHROMIUM`);
}
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  fail(`playwright-core is not installed: run \`npm ci\` in ui/ (scripts/test-deps does): ${e.message}`);
}

const WAIT = 20000;
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'm3query-ui-chromium-'));
// Without the background-networking flags Chromium keeps trying to reach Google's services,
// and on a closed network the page loads hang behind those attempts.
const context = await chromium.launchPersistentContext(profile, {
  executablePath: args.chromium,
  headless: true,
  viewport: { width: 1280, height: 860 },
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage',
  ],
});
const report = { checks: [] };
const consoleErrors = [];
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(WAIT);
  page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  const check = (name, ok, detail) => {
    report.checks.push({ name, ok, detail });
    if (!ok) throw new Error(`${name}: ${detail}`);
  };

  await page.goto(`${args.url}/graph`);
  const editor = page.locator('.cm-content');
  await editor.waitFor();
  await editor.click();
  // Autocompletion from our own API: the first letters offer the loaded metric.
  await page.keyboard.type(args.metric.slice(0, 6), { delay: 40 });
  const option = page.locator('.cm-tooltip-autocomplete li', { hasText: args.metric });
  await option.first().waitFor().catch(() => {});
  const offered = await page.locator('.cm-tooltip-autocomplete li').allInnerTexts().catch(() => []);
  check('autocompletion offers the metric', offered.some((o) => o.includes(args.metric)), JSON.stringify(offered));
  await option.first().click();
  const typed = await page.evaluate(() => document.querySelector('.cm-content')?.textContent ?? '');
  check('completion inserted the metric', typed.trim() === args.metric, typed);

  const responseP = page.waitForResponse((r) => r.url().includes('/api/v1/query_range'));
  await page.click('#execute');
  const resp = await responseP;
  const traceId = (await resp.headerValue('x-trace-id')) ?? '';
  const serverTiming = (await resp.headerValue('server-timing')) ?? '';
  report.traceId = traceId;
  report.serverTiming = serverTiming;
  check('query answered 200', resp.status() === 200, String(resp.status()));
  check('query response has X-Trace-Id', /^[0-9a-f]{16,32}$/.test(traceId), traceId);

  // The graph: uPlot paints its lines on a canvas; count the painted pixels.
  await page.locator('#graph canvas').waitFor();
  await page.waitForTimeout(300);
  const painted = await page.evaluate(() => {
    const c = document.querySelector('#graph canvas');
    const ctx = c.getContext('2d');
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) n++;
    return n;
  });
  report.paintedPixels = painted;
  check('graph is drawn', painted > 200, `${painted} painted pixels`);
  const legend = await page.locator('#graph .u-legend .u-series').count();
  check('graph has a legend', legend > 1, `${legend} legend rows`);

  const rows = await page.locator('#result-table tbody tr').count();
  report.tableRows = rows;
  check('table has rows', rows > 0, `${rows} rows`);
  const tableText = await page.locator('#result-table').innerText();
  check('table names the metric', tableText.includes(args.metric), tableText.slice(0, 200));

  const phases = await page.locator('#phases .seg[data-phase]').count();
  check('phase bar shows the phases', phases >= 4, `${phases} segments`);

  if (args.jaeger) {
    const href = await page.locator('#trace-link').getAttribute('href');
    report.traceLink = href;
    check('trace link carries the trace id', href === `${args.jaeger.replace(/\/+$/, '')}/trace/${traceId}`, String(href));
  }
  const url = new URL(page.url());
  check('URL captures the query', url.pathname === '/graph' && url.searchParams.get('expr') === args.metric, page.url());

  // History and a shared URL: reloading the URL runs the same query again.
  await page.reload();
  await page.locator('#result-table tbody tr').first().waitFor();
  const hist = await page.locator('#history option').allInnerTexts();
  check('history keeps the query', hist.includes(args.metric), JSON.stringify(hist));

  if (args.screenshot) {
    await page.mouse.move(700, 420);
    await page.waitForTimeout(200);
    await page.screenshot({ path: args.screenshot });
    report.screenshot = args.screenshot;
  }

  // A shared URL of an instant query: table only, with the answer's warning shown.
  const warnExpr = `quantile(2, ${args.metric})`;
  await page.goto(`${args.url}/graph?${new URLSearchParams({ expr: warnExpr, type: 'instant' })}`);
  await page.locator('#result-table tbody tr').first().waitFor();
  const warning = await page.locator('.alert.warning').allInnerTexts();
  check('warnings are shown', warning.some((w) => w.includes('quantile')), JSON.stringify(warning));
  check('an instant query draws no graph', (await page.locator('#graph').count()) === 0, 'graph present');
  const instantHead = await page.locator('#result-table thead').innerText();
  check('an instant query shows values', instantHead.includes('Value'), instantHead);

  // Stacked lines.
  await page.goto(`${args.url}/graph?${new URLSearchParams({ expr: args.metric, type: 'range', stacked: '1' })}`);
  await page.locator('#graph canvas').waitFor();
  check('stacked option is kept', await page.locator('#stacked').isChecked(), 'unchecked');

  await page.click('header nav a[href="/slow"]');
  await page.locator('#slow-queries tbody tr').first().waitFor();
  const slow = await page.locator('#slow-queries').innerText();
  check('slow-query page lists the query', slow.includes(args.metric), slow.slice(0, 300));

  await page.click('header nav a[href="/tsdb"]');
  await page.locator('#top-metrics').waitFor();
  const tsdb = await page.locator('#top-metrics').innerText();
  check('TSDB page lists the metric', tsdb.includes(args.metric), tsdb.slice(0, 300));

  await page.click('header nav a[href="/status"]');
  await page.locator('#buildinfo').waitFor();
  await page.click('header nav a[href="/config"]');
  const yaml = await page.locator('#config-yaml').innerText();
  check('config page shows the config', yaml.includes('jaegerURL'), yaml.slice(0, 200));

  check('no errors in the page console', consoleErrors.length === 0, JSON.stringify(consoleErrors));
  report.ok = true;
  console.log(JSON.stringify(report));
} catch (e) {
  report.ok = false;
  report.error = String(e.message ?? e);
  report.consoleErrors = consoleErrors;
  console.log(JSON.stringify(report));
  console.error(`e2e/ui.mjs: ${report.error}`);
  process.exitCode = 1;
} finally {
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
