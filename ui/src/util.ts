// Small DOM and formatting helpers shared by the pages.

type Child = Node | string | null | undefined | false;

/** An element with attributes (`class`, `href`, `on*` handlers) and children. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, unknown> = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      e.addEventListener(k.slice(2), v as EventListener);
    } else if (k === 'value' && 'value' in e) {
      (e as HTMLInputElement).value = String(v);
    } else if (k === 'checked' && 'checked' in e) {
      (e as HTMLInputElement).checked = Boolean(v);
    } else {
      e.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c);
  }
  return e;
}

const UNITS: [string, number][] = [
  ['y', 365 * 86400],
  ['w', 7 * 86400],
  ['d', 86400],
  ['h', 3600],
  ['m', 60],
  ['s', 1],
  ['ms', 0.001],
];

/** Seconds of a Prometheus duration (`1h30m`, `15s`, `500ms`), or a plain number of seconds. */
export function parseDuration(s: string): number | null {
  const t = s.trim();
  if (t === '') return null;
  if (/^\d+(\.\d+)?$/.test(t)) return Number(t);
  const re = /(\d+)(ms|y|w|d|h|m|s)/g;
  let total = 0;
  let used = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(t)) !== null) {
    const unit = UNITS.find(([u]) => u === m![2]);
    if (!unit) return null;
    total += Number(m[1]) * unit[1];
    used += m[0].length;
  }
  return used === t.length && used > 0 ? total : null;
}

/** A number of seconds as a Prometheus duration (`1h30m`, `15s`). */
export function formatDuration(secs: number): string {
  if (secs <= 0) return '0s';
  let rest = Math.round(secs * 1000);
  let out = '';
  for (const [u, n] of UNITS) {
    const ms = Math.round(n * 1000);
    if (rest >= ms) {
      out += `${Math.floor(rest / ms)}${u}`;
      rest %= ms;
    }
  }
  return out;
}

/** A time span for people: `850µs`, `12.3ms`, `1.25s`. */
export function humanSeconds(s: number): string {
  if (s < 0.001) return `${(s * 1e6).toFixed(0)}µs`;
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)}ms`;
  return `${s.toFixed(2)}s`;
}

/** `{__name__="up", job="a"}` as PromQL writes it: `up{job="a"}`. */
export function seriesName(metric: Record<string, string>): string {
  const name = metric.__name__ ?? '';
  const labels = Object.entries(metric)
    .filter(([k]) => k !== '__name__')
    .map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  return labels.length ? `${name}{${labels.join(', ')}}` : name || '{}';
}

/** A unix time (seconds) as local `YYYY-MM-DD HH:MM:SS`. */
export function formatTime(secs: number): string {
  const d = new Date(secs * 1000);
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}
