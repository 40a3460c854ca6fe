// The status pages: build and runtime information, the (redacted) config, TSDB head
// statistics, and the slowest recent queries with their trace links.
import { getData, settings } from './api';
import { el, formatTime, humanSeconds } from './util';

function kvTable(id: string, obj: Record<string, unknown>): HTMLElement {
  return el('table', { class: 'data kv', id },
    el('tbody', {}, Object.entries(obj).map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {}, String(v))))));
}

function statTable(id: string, title: string, col: string, rows: { name: string; value: number }[]): HTMLElement {
  return el('section', {},
    el('h3', {}, title),
    el('table', { class: 'data', id },
      el('thead', {}, el('tr', {}, el('th', {}, 'Name'), el('th', {}, col))),
      el('tbody', {}, rows.map((r) => el('tr', {}, el('td', {}, r.name), el('td', { class: 'num' }, String(r.value)))))));
}

async function load(root: HTMLElement, title: string, fill: () => Promise<Node[]>): Promise<void> {
  root.replaceChildren(el('h2', {}, title), el('p', { class: 'muted' }, 'Loading…'));
  try {
    root.replaceChildren(el('h2', {}, title), ...(await fill()));
  } catch (e) {
    root.replaceChildren(el('h2', {}, title), el('div', { class: 'alert error' }, String(e instanceof Error ? e.message : e)));
  }
}

export function renderStatus(root: HTMLElement): void {
  void load(root, 'Status', async () => {
    const [build, runtime, flags] = await Promise.all([
      getData<Record<string, unknown>>('/api/v1/status/buildinfo'),
      getData<Record<string, unknown>>('/api/v1/status/runtimeinfo'),
      getData<Record<string, unknown>>('/api/v1/status/flags'),
    ]);
    return [
      el('h3', {}, 'Build information'), kvTable('buildinfo', build),
      el('h3', {}, 'Runtime information'), kvTable('runtimeinfo', runtime),
      el('h3', {}, 'Command-line flags'), kvTable('flags', flags),
    ];
  });
}

export function renderConfig(root: HTMLElement): void {
  void load(root, 'Configuration', async () => {
    const c = await getData<{ yaml: string }>('/api/v1/status/config');
    return [el('p', { class: 'muted' }, 'The effective configuration, defaults filled in and secrets redacted.'), el('pre', { id: 'config-yaml', class: 'yaml' }, c.yaml)];
  });
}

interface Tsdb {
  headStats: { numSeries: number; numLabelPairs: number; chunkCount: number; minTime: number; maxTime: number };
  seriesCountByMetricName: { name: string; value: number }[];
  labelValueCountByLabelName: { name: string; value: number }[];
  memoryInBytesByLabelName: { name: string; value: number }[];
  seriesCountByLabelValuePair: { name: string; value: number }[];
}

export function renderTsdb(root: HTMLElement): void {
  void load(root, 'TSDB status', async () => {
    const t = await getData<Tsdb>('/api/v1/status/tsdb');
    const h = t.headStats;
    const empty = h.numSeries === 0;
    return [
      el('h3', {}, 'Head'),
      kvTable('head-stats', {
        'Series': h.numSeries,
        'Label pairs': h.numLabelPairs,
        'Chunks': h.chunkCount,
        'Oldest sample': empty ? '-' : formatTime(h.minTime / 1000),
        'Newest sample': empty ? '-' : formatTime(h.maxTime / 1000),
      }),
      statTable('top-metrics', 'Top metrics by series count', 'Series', t.seriesCountByMetricName),
      statTable('top-label-values', 'Label names with most values', 'Values', t.labelValueCountByLabelName),
      statTable('top-label-memory', 'Label names by memory of their values', 'Bytes', t.memoryInBytesByLabelName),
      statTable('top-pairs', 'Label pairs with most series', 'Series', t.seriesCountByLabelValuePair),
    ];
  });
}

interface SlowQuery {
  query: string;
  type: 'instant' | 'range' | 'unknown';
  time?: number;
  start?: number;
  end?: number;
  step?: number;
  durationSeconds: number;
  status: number;
  finishedAt: number;
  traceId?: string;
  series?: number;
  samples?: number;
}

/** The query page's URL for a recorded query, its time range kept. */
function graphURL(q: SlowQuery): string {
  const p = new URLSearchParams({ expr: q.query });
  const local = (secs: number) => {
    const d = new Date(secs * 1000);
    const pad = (n: number) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  };
  if (q.type === 'range' && q.start !== undefined && q.end !== undefined) {
    p.set('type', 'range');
    p.set('range', `${Math.max(1, Math.round(q.end - q.start))}s`);
    p.set('end', local(q.end));
    if (q.step) p.set('step', `${q.step}s`);
  } else {
    p.set('type', 'instant');
    if (q.time !== undefined) p.set('end', local(q.time));
  }
  return `/graph?${p.toString()}`;
}

export function renderSlow(root: HTMLElement): void {
  const cfg = settings();
  void load(root, 'Slowest queries of the last hour', async () => {
    const list = await getData<SlowQuery[]>('/api/v1/status/slow_queries');
    if (list.length === 0) return [el('p', { class: 'muted' }, 'No queries yet.')];
    return [
      el('p', { class: 'muted' }, 'The 50 slowest /api/v1/query and /api/v1/query_range requests of the last hour, failed ones included.'),
      el('table', { class: 'data', id: 'slow-queries' },
        el('thead', {}, el('tr', {}, ...['Duration', 'Query', 'Type', 'Status', 'Series', 'Samples', 'Finished', 'Trace'].map((c) => el('th', {}, c)))),
        el('tbody', {}, list.map((q) => el('tr', {},
          el('td', { class: 'num' }, humanSeconds(q.durationSeconds)),
          el('td', { class: 'series' }, el('a', { href: graphURL(q), 'data-nav': true }, q.query)),
          el('td', {}, q.type),
          el('td', { class: q.status >= 400 ? 'bad' : '' }, String(q.status)),
          el('td', { class: 'num' }, q.series === undefined ? '' : String(q.series)),
          el('td', { class: 'num' }, q.samples === undefined ? '' : String(q.samples)),
          el('td', {}, formatTime(q.finishedAt / 1000)),
          el('td', {}, !q.traceId ? '' : cfg.jaegerURL
            ? el('a', { href: `${cfg.jaegerURL.replace(/\/+$/, '')}/trace/${encodeURIComponent(q.traceId)}`, target: '_blank', rel: 'noopener' }, q.traceId.slice(0, 16))
            : el('code', {}, q.traceId)),
        )))),
    ];
  });
}
