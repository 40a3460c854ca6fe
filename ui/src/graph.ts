// The range query graph: uPlot, one line per series, legend with live values on hover,
// optionally stacked.
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { seriesName } from './util';

/** A native histogram sample as Prometheus's JSON gives it. */
export interface Histogram {
  count: string;
  sum: string;
  buckets?: [number, string, string, string][];
}

export interface RangeSeries {
  metric: Record<string, string>;
  values?: [number, string][];
  histograms?: [number, Histogram][];
}

const PALETTE = [
  '#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd',
  '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf',
];

export function colorOf(i: number): string {
  return PALETTE[i % PALETTE.length];
}

/** A series' points; native histograms are drawn by their observation count. */
function points(s: RangeSeries): [number, number][] {
  if (s.values) return s.values.map(([t, v]) => [t, Number(v)]);
  if (s.histograms) return s.histograms.map(([t, h]) => [t, Number(h.count)]);
  return [];
}

/** Draws `series` into `host` (emptied first); returns the plot to destroy later. */
export function drawGraph(
  host: HTMLElement,
  series: RangeSeries[],
  opts: { stacked: boolean; start: number; end: number },
): uPlot {
  host.replaceChildren();
  const times = new Set<number>();
  const perSeries = series.map((s) => {
    const m = new Map<number, number>();
    for (const [t, v] of points(s)) {
      m.set(t, v);
      times.add(t);
    }
    return m;
  });
  const xs = [...times].sort((a, b) => a - b);
  const ys: (number | null)[][] = perSeries.map((m) => xs.map((t) => (m.has(t) ? m.get(t)! : null)));
  if (opts.stacked) {
    // Each series on top of the ones before it; a missing point adds nothing.
    const acc = xs.map(() => 0);
    for (const y of ys) {
      for (let i = 0; i < y.length; i++) {
        const v = y[i];
        if (v !== null && Number.isFinite(v)) {
          acc[i] += v;
          y[i] = acc[i];
        }
      }
    }
  }
  const width = Math.max(300, host.clientWidth || 800);
  const plotOpts: uPlot.Options = {
    width,
    height: 320,
    scales: { x: { time: true, range: () => [opts.start, opts.end] } },
    series: [
      {},
      ...series.map((s, i) => ({
        label: seriesName(s.metric) + (s.histograms && !s.values ? ' (histogram count)' : ''),
        stroke: colorOf(i),
        fill: opts.stacked ? colorOf(i) + '33' : undefined,
        width: 1.5,
        spanGaps: false,
        points: { show: xs.length < 60 },
      })),
    ],
    axes: [{}, { size: 70 }],
    legend: { live: true },
    cursor: { focus: { prox: 16 } },
    focus: { alpha: 0.3 },
  };
  return new uPlot(plotOpts, [xs, ...ys] as uPlot.AlignedData, host);
}
