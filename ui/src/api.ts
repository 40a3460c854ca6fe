// The server's settings and the Prometheus API's JSON envelope.

export interface Settings {
  jaegerURL: string;
  version: string;
  revision: string;
  metricsPath: string;
}

/** The settings the server put into index.html (`ui.jaegerURL`, version). */
export function settings(): Settings {
  const fallback: Settings = { jaegerURL: '', version: '', revision: '', metricsPath: '/metrics' };
  const node = document.getElementById('m3query-settings');
  if (!node?.textContent) return fallback;
  try {
    return { ...fallback, ...JSON.parse(node.textContent) };
  } catch {
    return fallback;
  }
}

/** A failed API call: the server's `error` message, or the HTTP status. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly traceId: string | null,
  ) {
    super(message);
  }
}

export interface Envelope<T> {
  status: 'success' | 'error';
  data: T;
  error?: string;
  errorType?: string;
  warnings?: string[];
  infos?: string[];
}

/** GETs an API path and unwraps the envelope. */
export async function getData<T>(path: string): Promise<T> {
  const r = await fetch(path, { headers: { Accept: 'application/json' } });
  const body = (await r.json().catch(() => null)) as Envelope<T> | null;
  if (!r.ok || !body || body.status !== 'success') {
    throw new ApiError(body?.error ?? `HTTP ${r.status}`, r.status, r.headers.get('x-trace-id'));
  }
  return body.data;
}

/** One `Server-Timing` metric, duration in milliseconds. */
export interface Timing {
  name: string;
  desc?: string;
  dur: number;
}

/** Parses a `Server-Timing` header (`parse;dur=0.1, remote;desc="a";dur=2`). */
export function parseServerTiming(h: string | null): Timing[] {
  if (!h) return [];
  const out: Timing[] = [];
  // Split on commas outside quoted strings.
  const parts = h.match(/(?:[^,"]|"(?:\\.|[^"\\])*")+/g) ?? [];
  for (const part of parts) {
    const [name, ...params] = part.split(/;(?=(?:[^"]*"[^"]*")*[^"]*$)/).map((s) => s.trim());
    if (!name) continue;
    const t: Timing = { name, dur: 0 };
    for (const p of params) {
      const i = p.indexOf('=');
      if (i < 0) continue;
      const k = p.slice(0, i).trim();
      let v = p.slice(i + 1).trim();
      if (v.startsWith('"')) v = v.slice(1, -1).replace(/\\(.)/g, '$1');
      if (k === 'dur') t.dur = Number(v) || 0;
      if (k === 'desc') t.desc = v;
    }
    out.push(t);
  }
  return out;
}
