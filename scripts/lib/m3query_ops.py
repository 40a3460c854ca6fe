"""Shared code of m3query's operator scripts (Python 3 standard library only).

- Jaeger trace search: `slow-queries`, `error-queries` and `status-queries` call Jaeger's
  HTTP query API (`GET $JAEGER_URL/api/traces`, the API the Jaeger UI uses) and print one line
  per trace from m3query's root span.
- Demo data: `load-demo` pushes series into m3query with Prometheus remote write 1.0
  (protobuf encoded by hand, snappy block format with literal-only encoding).

Exit codes shared by the scripts: 0 found/ok; 1 nothing found, or an HTTP/connection error
(the message on stderr says which); 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_ERROR = 1

DEFAULT_JAEGER_URL = "http://localhost:16686"
DEFAULT_M3QUERY_URL = "http://localhost:7201"
DEFAULT_SERVICE = "m3query"
DEFAULT_OPERATION = "/api/v1/query_range"
# An --operation that is a bare route (starts with "/") names the request spans of every
# method m3query serves it with: Grafana's Prometheus data source sends POST by default,
# curl and promtool send GET. Jaeger searches one operation at a time, so each is a search.
ROUTE_METHODS = ("GET", "POST")
USER_AGENT = "m3query-ops/1"

EXIT_CODES_HELP = """exit codes:
  0  at least one trace found and printed
  1  no trace found, or Jaeger answered with an HTTP error or could not be reached
     (stderr says which)
  2  bad arguments"""


class OpsError(Exception):
    """A failure to report on stderr, with exit code 1."""


def _quiet_broken_pipe() -> None:
    """Die silently when stdout is closed early (`slow-queries | head`), as Unix tools do."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


# ---- durations -------------------------------------------------------------------------------

# Go's time.ParseDuration units: what Jaeger accepts for minDuration/maxDuration.
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# Lookback and demo durations also take days and weeks, as the Jaeger UI's lookback does.
_LONG_UNITS = dict(_GO_UNITS, d=86400.0, w=604800.0)
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h|d|w)")


def _parse_duration(text: str, units: Dict[str, float]) -> float:
    s = text.strip()
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m or m.group(2) not in units:
            break
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        names = ", ".join(u for u in units if u not in ("\u00b5s", "\u03bcs"))
        raise ValueError(
            f"invalid duration {text!r}: use numbers with units ({names}), like 500ms, 1s or 1h30m"
        )
    return total


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string (`1s`, `250ms`, `1m30s`), the syntax Jaeger parses."""
    return _parse_duration(text, _GO_UNITS)


def parse_long_duration(text: str) -> float:
    """Seconds in a duration that may also use days and weeks (`2d`, `1w`)."""
    return _parse_duration(text, _LONG_UNITS)


def _arg_type(parse, positive: bool):
    def check(text: str) -> str:
        try:
            seconds = parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if positive and seconds <= 0:
            raise argparse.ArgumentTypeError(f"duration {text!r} must be positive")
        return text

    return check


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return n


def format_duration_us(us: int) -> str:
    """A span duration (microseconds) for humans: 2.150s, 12.500ms, 830us."""
    if us >= 1_000_000:
        return f"{us / 1_000_000:.3f}s"
    if us >= 1_000:
        return f"{us / 1_000:.3f}ms"
    return f"{us}us"


def format_time_us(us: int) -> str:
    """Unix microseconds as RFC 3339 in UTC with milliseconds: 2019-01-30T18:31:12.544Z."""
    t = datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{(us % 1_000_000) // 1000:03d}Z"


# ---- HTTP ------------------------------------------------------------------------------------


def _http(
    method: str,
    url: str,
    timeout: float,
    body: Optional[bytes] = None,
    headers: Optional[Dict[str, str]] = None,
) -> Tuple[int, bytes]:
    """Sends one request; returns (status, body) for any HTTP status, raises OpsError when the
    server cannot be reached."""
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("User-Agent", USER_AGENT)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read() or b""
    except urllib.error.URLError as e:
        raise OpsError(f"cannot reach {_origin(url)}: {e.reason}") from None
    except (OSError, ValueError) as e:  # timeouts, resets, malformed URLs
        raise OpsError(f"cannot reach {_origin(url)}: {e}") from None


def _origin(url: str) -> str:
    p = urllib.parse.urlsplit(url)
    return f"{p.scheme}://{p.netloc}" if p.netloc else url


def _snippet(body: bytes, limit: int = 300) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


# ---- Jaeger trace search ---------------------------------------------------------------------


@dataclass(frozen=True)
class SearchKind:
    """What distinguishes slow-queries, error-queries and status-queries."""

    prog: str
    summary: str
    default_min_duration: Optional[str]
    sort_by_duration: bool


SLOW = SearchKind(
    prog="slow-queries",
    summary="Find m3query's slowest queries in Jaeger: traces of the operation (by default "
    "GET and POST /api/v1/query_range) lasting at least --min-duration, slowest first.",
    default_min_duration="1s",
    sort_by_duration=True,
)
ERRORS = SearchKind(
    prog="error-queries",
    summary='Find m3query queries that failed, in Jaeger: traces tagged error=true (5xx '
    'responses and panics), newest first. Same search as the Jaeger UI with '
    'tags={"error":"true"}.',
    default_min_duration=None,
    sort_by_duration=False,
)
STATUS = SearchKind(
    prog="status-queries",
    summary="Find m3query queries answered with one HTTP status (500 by default) in Jaeger: "
    'traces tagged http.status_code=CODE, newest first. Same search as the Jaeger UI with '
    'tags={"http.status_code":"500"}.',
    default_min_duration=None,
    sort_by_duration=False,
)


@dataclass(frozen=True)
class TraceLine:
    trace_id: str
    start_us: int
    duration_us: int
    status: Optional[str]
    step: Optional[str]
    query: Optional[str]
    # The span's name: "METHOD route" for m3query's request spans.
    operation: str = "-"
    # Grafana's X-Dashboard-Uid and X-Panel-Id, as m3query tags the request span.
    dashboard: Optional[str] = None
    panel: Optional[str] = None

    def render(self, jaeger_url: str) -> str:
        query = json.dumps(self.query, ensure_ascii=False) if self.query is not None else "-"
        return "  ".join(
            [
                format_time_us(self.start_us),
                format_duration_us(self.duration_us),
                self.operation,
                f"status={self.status if self.status is not None else '-'}",
                f"step={self.step if self.step is not None else '-'}",
                f"query={query}",
            ]
            + ([f"dashboard={self.dashboard}"] if self.dashboard is not None else [])
            + ([f"panel={self.panel}"] if self.panel is not None else [])
            + [trace_link(jaeger_url, self.trace_id)]
        )


def jaeger_url_from_env() -> str:
    return (os.environ.get("JAEGER_URL") or DEFAULT_JAEGER_URL).rstrip("/")


def trace_link(jaeger_url: str, trace_id: str) -> str:
    return f"{jaeger_url}/trace/{trace_id}"


def search_params(
    service: str,
    operation: str,
    lookback: str,
    limit: int,
    min_duration: Optional[str],
    tags: Optional[Dict[str, str]],
    now_us: int,
) -> List[Tuple[str, str]]:
    """The query parameters of a trace search, as the Jaeger UI sends them: start/end in unix
    microseconds (Jaeger ignores `lookback`; it is sent for the UI link)."""
    end = now_us
    start = end - int(round(parse_long_duration(lookback) * 1_000_000))
    params = [("service", service)]
    if operation:
        params.append(("operation", operation))
    if min_duration:
        params.append(("minDuration", min_duration))
    if tags:
        params.append(("tags", json.dumps(tags, separators=(",", ":"))))
    params += [
        ("lookback", lookback),
        ("limit", str(limit)),
        ("start", str(start)),
        ("end", str(end)),
    ]
    return params


def operations_for(operation: str) -> List[str]:
    """The Jaeger operations one --operation value searches: a bare route ("/api/v1/query")
    is every method's request span; "" is every operation (one search without the
    parameter); anything else is that span name."""
    if operation.startswith("/"):
        return [f"{m} {operation}" for m in ROUTE_METHODS]
    return [operation]


def search_traces(jaeger_url: str, params: Sequence[Tuple[str, str]], timeout: float) -> list:
    """GET /api/traces; returns the `data` list. Raises OpsError on HTTP and protocol errors."""
    url = f"{jaeger_url}/api/traces?{urllib.parse.urlencode(params, quote_via=urllib.parse.quote)}"
    status, body = _http("GET", url, timeout, headers={"Accept": "application/json"})
    doc = None
    try:
        doc = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    errors = _jaeger_errors(doc)
    if status != 200:
        detail = "; ".join(errors) if errors else _snippet(body) or "(empty body)"
        raise OpsError(f"Jaeger answered HTTP {status} for {url}: {detail}")
    if not isinstance(doc, dict) or "data" not in doc:
        raise OpsError(
            f"{url} did not answer with a Jaeger query API response: {_snippet(body)}"
        )
    data = doc.get("data") or []
    if errors and not data:
        raise OpsError(f"Jaeger reported errors for {url}: {'; '.join(errors)}")
    for e in errors:
        print(f"warning: Jaeger reported: {e}", file=sys.stderr)
    if not isinstance(data, list):
        raise OpsError(f"{url}: `data` is not a list of traces")
    return data


def _jaeger_errors(doc) -> List[str]:
    if not isinstance(doc, dict) or not isinstance(doc.get("errors"), list):
        return []
    out = []
    for e in doc["errors"]:
        if isinstance(e, dict):
            code, msg = e.get("code"), e.get("msg", "")
            out.append(f"{msg} (code {code})" if code is not None else str(msg))
        else:
            out.append(str(e))
    return out


def _tag_map(span: dict) -> Dict[str, object]:
    out: Dict[str, object] = {}
    for t in span.get("tags") or []:
        if isinstance(t, dict) and "key" in t:
            out[t["key"]] = t.get("value")
    return out


def _tag_text(value: object) -> Optional[str]:
    if value is None:
        return None
    # A status code some clients send as a double (503.0) reads as 503.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def root_span(trace: dict, service: str, operation: str) -> Optional[dict]:
    """m3query's request span in a trace: the earliest span of `service` named `operation`
    (or of any name when `operation` is empty; of any method when it is a bare route). A trace may start elsewhere (Grafana, a proxy),
    but within one process a child never starts before its parent, so the earliest span of the
    service is its request span. Falls back to the earliest span of the trace."""
    spans = [s for s in trace.get("spans") or [] if isinstance(s, dict)]
    if not spans:
        return None
    processes = trace.get("processes") or {}

    def service_of(span: dict) -> Optional[str]:
        p = processes.get(span.get("processID"))
        return p.get("serviceName") if isinstance(p, dict) else None

    def start(span: dict) -> int:
        return int(span.get("startTime") or 0)

    own = [s for s in spans if not service or service_of(s) == service]
    names = operations_for(operation) if operation else []
    named = [s for s in own if not names or s.get("operationName") in names]
    return min(named or own or spans, key=start)


def summarize(trace: dict, service: str, operation: str) -> Optional[TraceLine]:
    span = root_span(trace, service, operation)
    if span is None:
        return None
    tags = _tag_map(span)
    return TraceLine(
        trace_id=str(trace.get("traceID") or span.get("traceID") or ""),
        start_us=int(span.get("startTime") or 0),
        duration_us=int(span.get("duration") or 0),
        status=_tag_text(tags.get("http.status_code")),
        step=_tag_text(tags.get("step")),
        query=_tag_text(tags.get("query")),
        operation=str(span.get("operationName") or "-"),
        dashboard=_tag_text(tags.get("grafana.dashboard_uid")),
        panel=_tag_text(tags.get("grafana.panel_id")),
    )


def ui_search_url(jaeger_url: str, params: Sequence[Tuple[str, str]]) -> str:
    return f"{jaeger_url}/search?{urllib.parse.urlencode(params, quote_via=urllib.parse.quote)}"


def search_main(kind: SearchKind, argv: Sequence[str]) -> int:
    """Entry point of slow-queries, error-queries and status-queries."""
    _quiet_broken_pipe()
    parser = argparse.ArgumentParser(
        prog=kind.prog,
        description=kind.summary
        + " Prints one line per trace: start time (UTC), duration, method and route, HTTP "
        "status, the PromQL step and query of m3query's root span, the Grafana dashboard and "
        "panel when the request came from one, and the trace's link in the Jaeger UI.",
        epilog=f"environment:\n  JAEGER_URL  Jaeger UI/query address (default "
        f"{DEFAULT_JAEGER_URL})\n\n{EXIT_CODES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if kind is STATUS:
        parser.add_argument(
            "--code",
            type=int,
            default=500,
            help="the http.status_code tag to search for (default 500)",
        )
    parser.add_argument(
        "--min-duration",
        type=_arg_type(parse_go_duration, positive=False),
        default=kind.default_min_duration,
        metavar="DURATION",
        help="only traces at least this long, Go syntax: 500ms, 1s, 1m30s (default "
        + (kind.default_min_duration or "none")
        + ")",
    )
    parser.add_argument(
        "--lookback",
        type=_arg_type(parse_long_duration, positive=True),
        default="1h",
        metavar="DURATION",
        help="how far back to search: 15m, 1h, 24h, 2d (default 1h)",
    )
    parser.add_argument(
        "--limit", type=_positive_int, default=20, help="most traces to fetch (default 20)"
    )
    parser.add_argument(
        "--service", default=DEFAULT_SERVICE, help=f"service name (default {DEFAULT_SERVICE})"
    )
    parser.add_argument(
        "--operation",
        default=DEFAULT_OPERATION,
        help=f'operation: a span name ("POST /api/v1/query"), a route for every method '
        f'("/api/v1/query"; default "{DEFAULT_OPERATION}", GET and POST), or "" for all',
    )
    parser.add_argument(
        "--dashboard",
        metavar="UID",
        help="only requests from this Grafana dashboard (its X-Dashboard-Uid, the uid in the "
        "dashboard's URL), tagged grafana.dashboard_uid",
    )
    parser.add_argument(
        "--panel",
        metavar="ID",
        help="only requests from this Grafana panel (X-Panel-Id, viewPanel= in the panel's "
        "URL), tagged grafana.panel_id",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="HTTP timeout (default 30)",
    )
    args = parser.parse_args(argv)

    tags: Dict[str, str] = {}
    if kind is ERRORS:
        tags["error"] = "true"
    elif kind is STATUS:
        tags["http.status_code"] = str(args.code)
    if args.dashboard:
        tags["grafana.dashboard_uid"] = args.dashboard
    if args.panel:
        tags["grafana.panel_id"] = args.panel

    jaeger_url = jaeger_url_from_env()
    now_us = time.time_ns() // 1000
    searches = [
        search_params(
            service=args.service,
            operation=op,
            lookback=args.lookback,
            limit=args.limit,
            min_duration=args.min_duration,
            tags=tags,
            now_us=now_us,
        )
        for op in operations_for(args.operation)
    ]
    ops = operations_for(args.operation) if args.operation else []
    what = f"service {args.service!r}" + (
        f", operation {' or '.join(repr(o) for o in ops)}" if ops else ""
    )
    if args.min_duration:
        what += f", at least {args.min_duration}"
    if tags:
        what += f", tags {json.dumps(tags)}"
    what += f", last {args.lookback}"
    traces: Dict[str, dict] = {}
    try:
        for params in searches:
            for t in search_traces(jaeger_url, params, args.timeout):
                if isinstance(t, dict):
                    traces.setdefault(str(t.get("traceID") or len(traces)), t)
    except OpsError as e:
        print(f"{kind.prog}: error: {e}", file=sys.stderr)
        return EXIT_ERROR

    lines = [l for l in (summarize(t, args.service, args.operation) for t in traces.values()) if l]
    if kind.sort_by_duration:
        lines.sort(key=lambda l: (-l.duration_us, -l.start_us))
    else:
        lines.sort(key=lambda l: (-l.start_us, -l.duration_us))
    # Each search returns up to --limit traces; together they keep the --limit first.
    lines = lines[: args.limit]
    link = " ".join(ui_search_url(jaeger_url, params) for params in searches)
    if not lines:
        print(f"{kind.prog}: no traces found ({what}). Jaeger UI: {link}", file=sys.stderr)
        return EXIT_NOT_FOUND
    for l in lines:
        print(l.render(jaeger_url))
    print(
        f"{kind.prog}: {len(lines)} trace{'s' if len(lines) != 1 else ''} ({what}). "
        f"Jaeger UI: {link}",
        file=sys.stderr,
    )
    return EXIT_OK


# ---- remote write 1.0 encoding ---------------------------------------------------------------


def _uvarint(n: int) -> bytes:
    """Protobuf varint of a non-negative value or an int64 (two's complement, 10 bytes)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return _uvarint((number << 3) | wire_type)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _uvarint(len(payload)) + payload


def encode_label(name: str, value: str) -> bytes:
    # prometheus.Label { string name = 1; string value = 2; }
    return _bytes_field(1, name.encode("utf-8")) + _bytes_field(2, value.encode("utf-8"))


def encode_sample(t_ms: int, value: float) -> bytes:
    # prometheus.Sample { double value = 1; int64 timestamp = 2; }
    return _field(1, 1) + struct.pack("<d", value) + _field(2, 0) + _uvarint(t_ms)


def encode_timeseries(labels: Dict[str, str], samples: Iterable[Tuple[int, float]]) -> bytes:
    # prometheus.TimeSeries { repeated Label labels = 1; repeated Sample samples = 2; }
    # Labels sorted by name, as remote write requires.
    out = bytearray()
    for name in sorted(labels):
        out += _bytes_field(1, encode_label(name, labels[name]))
    for t, v in samples:
        out += _bytes_field(2, encode_sample(t, v))
    return bytes(out)


METRIC_TYPES = {"counter": 1, "gauge": 2, "histogram": 3, "gaugehistogram": 4, "summary": 5}


def encode_metadata(family: str, metric_type: str, help_text: str, unit: str = "") -> bytes:
    # prometheus.MetricMetadata { MetricType type = 1; string metric_family_name = 2;
    #                             string help = 4; string unit = 5; }
    out = _field(1, 0) + _uvarint(METRIC_TYPES[metric_type])
    out += _bytes_field(2, family.encode("utf-8"))
    out += _bytes_field(4, help_text.encode("utf-8"))
    if unit:
        out += _bytes_field(5, unit.encode("utf-8"))
    return out


def encode_write_request(
    series: Iterable[Tuple[Dict[str, str], Sequence[Tuple[int, float]]]],
    metadata: Iterable[bytes] = (),
) -> bytes:
    # prometheus.WriteRequest { repeated TimeSeries timeseries = 1;
    #                           repeated MetricMetadata metadata = 3; }
    out = bytearray()
    for labels, samples in series:
        out += _bytes_field(1, encode_timeseries(labels, samples))
    for m in metadata:
        out += _bytes_field(3, m)
    return bytes(out)


def snappy_block(data: bytes) -> bytes:
    """Snappy block format (what remote write uses), literal-only: the uncompressed length,
    then the data as literal elements of at most 64 KiB. Valid snappy that any decoder reads;
    it does not make the body smaller."""
    out = bytearray(_uvarint(len(data)))
    for off in range(0, len(data), 1 << 16):
        chunk = data[off : off + (1 << 16)]
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        elif n < 1 << 8:
            out += bytes([60 << 2, n])
        else:
            out += bytes([61 << 2]) + n.to_bytes(2, "little")
        out += chunk
    return bytes(out)


# ---- demo data -------------------------------------------------------------------------------

DEMO_JOB = "demo"
DEMO_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, math.inf)
DEMO_SERIES_PER_INSTANCE = 2 + len(DEMO_BUCKETS) + 2 + 1
_PERIOD_S = 3600.0


def _le(b: float) -> str:
    return "+Inf" if math.isinf(b) else repr(b)


def demo_series(instances: int) -> List[Tuple[Dict[str, str], object]]:
    """The demo series: per instance, request counters by code, a latency histogram and a
    memory gauge. Each value is a pure function of (instance, timestamp), so re-running the
    loader sends the same value for a timestamp already stored (m3query ignores it) and
    counters only ever go up."""
    out: List[Tuple[Dict[str, str], object]] = []
    for i in range(instances):
        base = {"job": DEMO_JOB, "instance": f"demo-{i}"}
        rate = 2.0 + (i % 7) * 1.5  # requests per second, on average
        phase = i * 0.7
        error_ratio = 0.01 + 0.02 * (i % 3)
        mean_latency = 0.05 * (1 + i % 4)  # seconds, exponentially distributed

        def requests(t: float, rate=rate, phase=phase) -> float:
            # Integral of rate * (1 + 0.5 sin(2 pi t / P + phase)): increasing in t.
            w = 2 * math.pi / _PERIOD_S
            return rate * (t + 0.5 / w * (1 - math.cos(w * t + phase)))

        out.append(
            (
                dict(base, __name__="demo_http_requests_total", code="200"),
                lambda t, f=requests, e=error_ratio: f(t) * (1 - e),
            )
        )
        out.append(
            (
                dict(base, __name__="demo_http_requests_total", code="500"),
                lambda t, f=requests, e=error_ratio: f(t) * e,
            )
        )
        for b in DEMO_BUCKETS:
            share = 1.0 if math.isinf(b) else 1 - math.exp(-b / mean_latency)
            out.append(
                (
                    dict(base, __name__="demo_http_request_duration_seconds_bucket", le=_le(b)),
                    lambda t, f=requests, s=share: f(t) * s,
                )
            )
        out.append(
            (
                dict(base, __name__="demo_http_request_duration_seconds_sum"),
                lambda t, f=requests, m=mean_latency: f(t) * m,
            )
        )
        out.append(
            (
                dict(base, __name__="demo_http_request_duration_seconds_count"),
                lambda t, f=requests: f(t),
            )
        )
        out.append(
            (
                dict(base, __name__="demo_memory_usage_bytes"),
                lambda t, i=i, phase=phase: float(
                    round(
                        (200 + 10 * i) * 2**20
                        + 50 * 2**20 * math.sin(2 * math.pi * t / 900 + phase)
                    )
                ),
            )
        )
    return out


DEMO_METADATA = (
    ("demo_http_requests_total", "counter", "Demo HTTP requests by status code.", ""),
    ("demo_http_request_duration_seconds", "histogram", "Demo request latency.", "seconds"),
    ("demo_memory_usage_bytes", "gauge", "Demo memory in use.", "bytes"),
)

DEMO_QUERIES = (
    ("request rate by instance", "sum by (instance) (rate(demo_http_requests_total[5m]))"),
    (
        "error ratio",
        'sum(rate(demo_http_requests_total{code="500"}[5m])) / sum(rate(demo_http_requests_total[5m]))',
    ),
    (
        "p99 latency by instance",
        "histogram_quantile(0.99, sum by (le, instance) "
        "(rate(demo_http_request_duration_seconds_bucket[5m])))",
    ),
    ("peak memory over the last hour", "max_over_time(demo_memory_usage_bytes[1h])"),
)

_REFUSED = re.compile(r"(\d+) samples written; refused: (.*?)(?: \(first:|$)", re.S)


def push(url: str, body: bytes, timeout: float) -> int:
    """POSTs one remote write request (`body`: an encoded WriteRequest). Returns how many
    samples m3query refused as already stored: an HTTP 400 that names only out-of-order or
    duplicate samples, as when an earlier run wrote the same timestamps. Raises OpsError on
    any other error."""
    status, resp = _http(
        "POST",
        url,
        timeout,
        body=snappy_block(body),
        headers={
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "snappy",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
        },
    )
    if 200 <= status < 300:
        return 0
    text = resp.decode("utf-8", "replace")
    try:
        msg = json.loads(text).get("error", text)
    except (json.JSONDecodeError, AttributeError):
        msg = text
    m = _REFUSED.search(msg) if status == 400 else None
    if m and all(
        "out of order" in part or "duplicate" in part for part in m.group(2).split(", ")
    ):
        return sum(int(n) for n in re.findall(r"(\d+) ", m.group(2)))
    raise OpsError(f"m3query answered HTTP {status} for POST {url}: {_snippet(msg.encode())}")


def load_demo_main(argv: Sequence[str]) -> int:
    """Entry point of load-demo."""
    _quiet_broken_pipe()
    parser = argparse.ArgumentParser(
        prog="load-demo",
        description="Push demo series into a running m3query with Prometheus remote write 1.0, "
        "so its dashboards and trace searches have something to show, then print PromQL "
        f"queries to try. Each demo instance has {DEMO_SERIES_PER_INSTANCE} series (request "
        "counters by code, a latency histogram, a memory gauge) with one sample per --step "
        "over the last --duration. Values depend only on the timestamp, so running it again "
        "adds only the newer samples.",
        epilog="environment:\n  M3QUERY_URL  default for --url\n\n"
        "exit codes:\n  0  samples written (or already there)\n"
        "  1  m3query answered with an HTTP error or could not be reached\n  2  bad arguments",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("M3QUERY_URL") or DEFAULT_M3QUERY_URL,
        help=f"m3query's address (default $M3QUERY_URL or {DEFAULT_M3QUERY_URL})",
    )
    parser.add_argument(
        "--series",
        type=_positive_int,
        default=5,
        metavar="N",
        help="demo instances, i.e. series per demo metric (default 5)",
    )
    parser.add_argument(
        "--duration",
        type=_arg_type(parse_long_duration, positive=True),
        default="1h",
        help="history to write, ending now (default 1h)",
    )
    parser.add_argument(
        "--step",
        type=_arg_type(parse_long_duration, positive=True),
        default="15s",
        help="time between samples (default 15s)",
    )
    parser.add_argument(
        "--batch", type=_positive_int, default=10000, help="most samples per request (default 10000)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    args = parser.parse_args(argv)

    step_ms = int(round(parse_long_duration(args.step) * 1000))
    if step_ms < 1:
        parser.error("--step must be at least 1ms")
    span_ms = int(round(parse_long_duration(args.duration) * 1000))
    end_ms = (time.time_ns() // 1_000_000) // step_ms * step_ms
    times = list(range(end_ms - (span_ms // step_ms - 1) * step_ms, end_ms + 1, step_ms))
    series = demo_series(args.series)
    per_request = max(1, args.batch // len(series))
    url = args.url.rstrip("/") + "/api/v1/prom/remote/write"
    metadata = [encode_metadata(*m) for m in DEMO_METADATA]

    sent = refused = 0
    try:
        for i in range(0, len(times), per_request):
            chunk = times[i : i + per_request]
            body = encode_write_request(
                ((labels, [(t, f(t / 1000.0)) for t in chunk]) for labels, f in series),
                metadata if i == 0 else (),
            )
            refused += push(url, body, args.timeout)
            sent += len(chunk) * len(series)
    except OpsError as e:
        print(f"load-demo: error: {e}", file=sys.stderr)
        return EXIT_ERROR

    total_series = len(series)
    print(
        f"load-demo: sent {sent} samples of {total_series} series "
        f"({args.series} instance{'s' if args.series != 1 else ''}, job=\"{DEMO_JOB}\") "
        f"to {url}, one every {args.step} over the last {args.duration}"
    )
    if refused:
        print(
            f"load-demo: {refused} of them were already stored: m3query had newer samples for "
            "their series (an earlier run) and kept its own"
        )
    base = args.url.rstrip("/")
    print("\nPromQL to try (Grafana's Explore on the m3query data source, or curl):")
    for title, q in DEMO_QUERIES:
        print(f"\n  # {title}\n  {q}")
    print(
        f"\n  curl -G {base}/api/v1/query_range --data-urlencode 'query={DEMO_QUERIES[0][1]}' \\\n"
        "    -d start=$(( $(date +%s) - 3600 )) -d end=$(date +%s) -d step=60"
    )
    print(
        "\nEach query is traced: find the slow ones with scripts/slow-queries, failures with "
        "scripts/error-queries and scripts/status-queries."
    )
    return EXIT_OK
