// The query page: editor, instant/range toggle, time controls, graph, table, warnings, the
// per-phase breakdown from `Server-Timing`, and the link to the query's trace.
import type { EditorView } from '@codemirror/view';
import type uPlot from 'uplot';
import { parseServerTiming, settings, type Envelope, type Timing } from './api';
import { createEditor } from './editor';
import { colorOf, drawGraph, type Histogram, type RangeSeries } from './graph';
import { el, formatDuration, formatTime, humanSeconds, parseDuration, seriesName } from './util';

type QueryType = 'range' | 'instant';

/** The page's state, all of it in the URL so a query can be shared. */
interface State {
  expr: string;
  type: QueryType;
  range: string;
  /** Local `YYYY-MM-DDTHH:MM`, or empty for now. */
  end: string;
  /** A duration, or empty for automatic. */
  step: string;
  stacked: boolean;
}

function stateFromURL(): State {
  const p = new URLSearchParams(location.search);
  return {
    expr: p.get('expr') ?? '',
    type: p.get('type') === 'instant' ? 'instant' : 'range',
    range: p.get('range') || '1h',
    end: p.get('end') ?? '',
    step: p.get('step') ?? '',
    stacked: p.get('stacked') === '1',
  };
}

function stateToURL(s: State): string {
  const p = new URLSearchParams();
  p.set('expr', s.expr);
  p.set('type', s.type);
  if (s.type === 'range') {
    p.set('range', s.range);
    if (s.step) p.set('step', s.step);
    if (s.stacked) p.set('stacked', '1');
  }
  if (s.end) p.set('end', s.end);
  return `/graph?${p.toString()}`;
}

const HISTORY_KEY = 'm3query.history';
const HISTORY_MAX = 50;

function loadHistory(): string[] {
  try {
    const h = JSON.parse(localStorage.getItem(HISTORY_KEY) ?? '[]');
    return Array.isArray(h) ? h.filter((x) => typeof x === 'string') : [];
  } catch {
    return [];
  }
}

function remember(expr: string): void {
  const h = [expr, ...loadHistory().filter((e) => e !== expr)].slice(0, HISTORY_MAX);
  try {
    localStorage.setItem(HISTORY_KEY, JSON.stringify(h));
  } catch {
    // Storage full or disabled: history is a convenience.
  }
}

interface QueryStats {
  timings?: Record<string, number>;
  samples?: { totalQueryableSamples?: number; peakSamples?: number };
  series?: { fetched?: number };
}

interface QueryData {
  resultType: 'matrix' | 'vector' | 'scalar' | 'string';
  result: unknown;
  stats?: QueryStats;
}

interface VectorSample {
  metric: Record<string, string>;
  value?: [number, string];
  histogram?: [number, Histogram];
}

/** What the query page keeps between renders. */
let editor: EditorView | null = null;
let plot: uPlot | null = null;
let running: AbortController | null = null;

export function renderQueryPage(root: HTMLElement, navigate: (url: string, replace?: boolean) => void): () => void {
  const s = stateFromURL();
  const results = el('section', { id: 'results', class: 'results' });
  const editorHost = el('div', { class: 'editor', id: 'editor' });
  const typeRange = el('input', { type: 'radio', name: 'qtype', value: 'range', id: 'type-range', checked: s.type === 'range' });
  const typeInstant = el('input', { type: 'radio', name: 'qtype', value: 'instant', id: 'type-instant', checked: s.type === 'instant' });
  const range = el('input', { id: 'range', size: 6, value: s.range, title: 'Range (e.g. 1h, 30m, 2d)' });
  const end = el('input', { id: 'end', type: 'datetime-local', value: s.end, title: 'End time (empty: now)' });
  const step = el('input', { id: 'step', size: 6, value: s.step, placeholder: 'auto', title: 'Resolution step (empty: automatic)' });
  const stacked = el('input', { id: 'stacked', type: 'checkbox', checked: s.stacked });
  const historySel = el('select', { id: 'history', title: 'Recent queries' }, el('option', { value: '' }, 'History'));
  for (const h of loadHistory()) historySel.append(el('option', { value: h }, h.length > 80 ? h.slice(0, 77) + '…' : h));
  const rangeOnly = el('span', { class: 'range-only' },
    el('label', {}, 'Range ', range),
    el('button', { type: 'button', title: 'Halve the range', onclick: () => zoom(0.5) }, '−'),
    el('button', { type: 'button', title: 'Double the range', onclick: () => zoom(2) }, '+'),
    el('label', {}, 'Step ', step),
    el('label', {}, stacked, ' Stacked'),
  );
  const run = el('button', { id: 'execute', class: 'primary', type: 'button', onclick: () => execute() }, 'Execute');

  function current(): State {
    return {
      expr: editor?.state.doc.toString() ?? s.expr,
      type: typeInstant.checked ? 'instant' : 'range',
      range: range.value.trim() || '1h',
      end: end.value,
      step: step.value.trim(),
      stacked: stacked.checked,
    };
  }

  function zoom(f: number) {
    const secs = parseDuration(range.value) ?? 3600;
    range.value = formatDuration(Math.max(1, secs * f));
    if (current().expr.trim()) execute();
  }

  function syncRangeControls() {
    rangeOnly.hidden = typeInstant.checked;
  }
  typeRange.addEventListener('change', () => (syncRangeControls(), current().expr.trim() && execute()));
  typeInstant.addEventListener('change', () => (syncRangeControls(), current().expr.trim() && execute()));
  stacked.addEventListener('change', () => current().expr.trim() && execute());
  historySel.addEventListener('change', () => {
    if (!historySel.value || !editor) return;
    editor.dispatch({ changes: { from: 0, to: editor.state.doc.length, insert: historySel.value } });
    historySel.value = '';
    execute();
  });
  syncRangeControls();

  root.replaceChildren(
    el('div', { class: 'query-form' },
      editorHost,
      el('div', { class: 'controls' },
        run,
        el('span', { class: 'toggle' },
          el('label', {}, typeRange, ' Range (graph)'),
          el('label', {}, typeInstant, ' Instant (table)'),
        ),
        rangeOnly,
        el('label', {}, 'End ', end),
        historySel,
      ),
    ),
    results,
  );
  editor?.destroy();
  editor = createEditor(editorHost, s.expr, () => execute());
  editor.focus();

  async function execute() {
    const st = current();
    if (!st.expr.trim()) return;
    navigate(stateToURL(st), true);
    remember(st.expr);
    running?.abort();
    const ctl = new AbortController();
    running = ctl;
    const endSecs = st.end ? new Date(st.end).getTime() / 1000 : Date.now() / 1000;
    const rangeSecs = parseDuration(st.range) ?? 3600;
    const startSecs = endSecs - rangeSecs;
    const stepSecs = parseDuration(st.step) ?? Math.max(1, Math.round(rangeSecs / 250));
    const form = new URLSearchParams({ query: st.expr, stats: 'all' });
    let path = '/api/v1/query';
    if (st.type === 'range') {
      path = '/api/v1/query_range';
      form.set('start', startSecs.toFixed(3));
      form.set('end', endSecs.toFixed(3));
      form.set('step', String(stepSecs));
    } else {
      form.set('time', endSecs.toFixed(3));
    }
    results.replaceChildren(el('p', { class: 'muted' }, 'Running…'));
    const t0 = performance.now();
    let resp: Response;
    try {
      resp = await fetch(path, {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
        body: form,
        signal: ctl.signal,
      });
    } catch (e) {
      if (ctl.signal.aborted) return;
      results.replaceChildren(el('div', { class: 'alert error' }, `Request failed: ${String(e)}`));
      return;
    }
    const body = (await resp.json().catch(() => null)) as Envelope<QueryData> | null;
    const elapsed = (performance.now() - t0) / 1000;
    if (ctl.signal.aborted) return;
    const traceId = resp.headers.get('x-trace-id');
    const timings = parseServerTiming(resp.headers.get('server-timing'));
    plot?.destroy();
    plot = null;
    const parts: Node[] = [];
    parts.push(statsPanel(elapsed, body?.data?.stats, timings, traceId, body?.data));
    if (!body || body.status !== 'success') {
      parts.push(el('div', { class: 'alert error', id: 'query-error' },
        `Error executing query: ${body?.error ?? `HTTP ${resp.status}`}`));
    }
    for (const w of body?.warnings ?? []) parts.push(el('div', { class: 'alert warning' }, `Warning: ${w}`));
    for (const i of body?.infos ?? []) parts.push(el('div', { class: 'alert info' }, `Info: ${i}`));
    results.replaceChildren(...parts);
    if (!body || body.status !== 'success') return;
    const data = body.data;
    if (data.resultType === 'matrix') {
      const series = data.result as RangeSeries[];
      const graphHost = el('div', { id: 'graph', class: 'graph' });
      results.append(graphHost);
      if (series.length > 0) {
        plot = drawGraph(graphHost, series, { stacked: st.stacked, start: startSecs, end: endSecs });
      } else {
        graphHost.append(el('p', { class: 'muted' }, 'Empty query result'));
      }
    }
    results.append(resultTable(data));
  }

  if (s.expr.trim()) void execute();
  return () => {
    running?.abort();
    plot?.destroy();
    plot = null;
    editor?.destroy();
    editor = null;
  };
}

function histogramText(h: Histogram): string {
  return `histogram: count=${h.count} sum=${h.sum} buckets=${h.buckets?.length ?? 0}`;
}

/** The result as a table: one row per series. */
function resultTable(data: QueryData): HTMLElement {
  const LIMIT = 1000;
  const rows: HTMLElement[] = [];
  const head = (...cols: string[]) => el('thead', {}, el('tr', {}, ...cols.map((c) => el('th', {}, c))));
  let table: HTMLElement;
  switch (data.resultType) {
    case 'vector': {
      const v = data.result as VectorSample[];
      for (const s of v.slice(0, LIMIT)) {
        const val = s.value ? s.value[1] : s.histogram ? histogramText(s.histogram[1]) : '';
        rows.push(el('tr', {}, el('td', { class: 'series' }, seriesName(s.metric)), el('td', { class: 'num' }, val)));
      }
      table = el('table', { id: 'result-table', class: 'data' }, head('Series', 'Value'), el('tbody', {}, rows));
      break;
    }
    case 'matrix': {
      const m = data.result as RangeSeries[];
      m.slice(0, LIMIT).forEach((s, i) => {
        const last = s.values?.length
          ? s.values[s.values.length - 1][1]
          : s.histograms?.length
            ? histogramText(s.histograms[s.histograms.length - 1][1])
            : '';
        const n = (s.values?.length ?? 0) + (s.histograms?.length ?? 0);
        rows.push(el('tr', {},
          el('td', { class: 'series' }, el('span', { class: 'swatch', style: `background:${colorOf(i)}` }), seriesName(s.metric)),
          el('td', { class: 'num' }, last),
          el('td', { class: 'num' }, String(n)),
        ));
      });
      table = el('table', { id: 'result-table', class: 'data' }, head('Series', 'Last value', 'Points'), el('tbody', {}, rows));
      break;
    }
    default: {
      const [t, v] = data.result as [number, string];
      rows.push(el('tr', {}, el('td', {}, data.resultType), el('td', { class: 'num' }, String(v)), el('td', {}, formatTime(t))));
      table = el('table', { id: 'result-table', class: 'data' }, head('Type', 'Value', 'Time'), el('tbody', {}, rows));
    }
  }
  const total = Array.isArray(data.result) && data.resultType !== 'scalar' && data.resultType !== 'string' ? (data.result as unknown[]).length : 1;
  return el('div', { class: 'table-wrap' },
    total > LIMIT ? el('p', { class: 'muted' }, `Showing ${LIMIT} of ${total} series.`) : null,
    total === 0 ? el('p', { class: 'muted' }, 'Empty query result') : table,
  );
}

const PHASES: { name: string; label: string; color: string }[] = [
  { name: 'parse', label: 'parse', color: '#8c564b' },
  { name: 'select', label: 'select', color: '#1f77b4' },
  { name: 'eval', label: 'eval', color: '#2ca02c' },
  { name: 'encode', label: 'encode', color: '#ff7f0e' },
];

/** Duration, series, samples, the phase bar and the trace link. */
function statsPanel(
  clientSecs: number,
  stats: QueryStats | undefined,
  timings: Timing[],
  traceId: string | null,
  data: QueryData | undefined,
): HTMLElement {
  const cfg = settings();
  const total = timings.find((t) => t.name === 'total')?.dur;
  const facts: (string | Node)[] = [`Load time: ${humanSeconds(clientSecs)}`];
  if (total !== undefined) facts.push(`Server: ${humanSeconds(total / 1000)}`);
  if (stats?.series?.fetched !== undefined) facts.push(`Series fetched: ${stats.series.fetched}`);
  if (stats?.samples?.totalQueryableSamples !== undefined) facts.push(`Samples: ${stats.samples.totalQueryableSamples}`);
  if (data && Array.isArray(data.result) && (data.resultType === 'matrix' || data.resultType === 'vector')) {
    facts.push(`Result series: ${(data.result as unknown[]).length}`);
  }
  if (traceId) {
    if (cfg.jaegerURL) {
      const href = `${cfg.jaegerURL.replace(/\/+$/, '')}/trace/${encodeURIComponent(traceId)}`;
      facts.push(el('a', { id: 'trace-link', href, target: '_blank', rel: 'noopener' }, `Trace ${traceId.slice(0, 16)}`));
    } else {
      facts.push(el('span', { id: 'trace-id', title: 'Set ui.jaegerURL to link traces' }, `Trace ID ${traceId}`));
    }
  }
  const panel = el('div', { class: 'stats', id: 'stats' }, el('div', { class: 'facts' }, ...facts.flatMap((f, i) => (i ? [' · ', f] : [f]))));
  if (timings.length && total) panel.append(phaseBar(timings, total));
  return panel;
}

/** The per-phase breakdown as a bar: phases in order, what is left is queueing and
 * request handling; remote reads as a row under `select`, where they happen. */
function phaseBar(timings: Timing[], total: number): HTMLElement {
  const pct = (ms: number) => `${Math.max(0, Math.min(100, (ms / total) * 100)).toFixed(3)}%`;
  const segs: HTMLElement[] = [];
  let used = 0;
  let selectStart = 0;
  for (const p of PHASES) {
    const t = timings.find((x) => x.name === p.name);
    if (!t) continue;
    if (p.name === 'select') selectStart = used;
    used += t.dur;
    segs.push(el('div', {
      class: `seg seg-${p.name}`, style: `width:${pct(t.dur)};background:${p.color}`,
      title: `${p.label}: ${humanSeconds(t.dur / 1000)}`, 'data-phase': p.name,
    }));
  }
  const other = Math.max(0, total - used);
  segs.push(el('div', { class: 'seg seg-other', style: `width:${pct(other)}`, title: `queue, request and other: ${humanSeconds(other / 1000)}` }));
  const remotes = timings.filter((t) => t.name === 'remote');
  const remoteRows = remotes.map((r) => el('div', { class: 'bar remote' },
    el('div', { class: 'seg-pad', style: `width:${pct(selectStart)}` }),
    el('div', { class: 'seg seg-remote', style: `width:${pct(r.dur)}`, title: `remote read ${r.desc ?? ''}: ${humanSeconds(r.dur / 1000)}`, 'data-phase': 'remote' }),
  ));
  const legend = el('div', { class: 'phase-legend' },
    ...PHASES.filter((p) => timings.some((t) => t.name === p.name)).map((p) => {
      const t = timings.find((x) => x.name === p.name)!;
      return el('span', {}, el('span', { class: 'swatch', style: `background:${p.color}` }), `${p.label} ${humanSeconds(t.dur / 1000)}`);
    }),
    ...remotes.map((r) => el('span', {}, el('span', { class: 'swatch', style: 'background:#9467bd' }), `remote ${r.desc ?? ''} ${humanSeconds(r.dur / 1000)}`)),
    el('span', {}, el('span', { class: 'swatch other' }), `other ${humanSeconds(other / 1000)}`),
  );
  return el('div', { class: 'phases', id: 'phases' }, el('div', { class: 'bar' }, ...segs), ...remoteRows, legend);
}
