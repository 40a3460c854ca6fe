#!/usr/bin/env bash
# m3query against Debian's Prometheus, each alone on this machine, on the same data:
#   ingest     samples/s, replaying one captured load (tools/bench/capture_load.py) into each
#              server in turn, so the Python generator does not share the CPU with them
#   queries    ../shared/bench/run.py: the 45 dashboard queries, range and instant
#   footprint  ../shared/bench/measure.sh: RSS, peak RSS, disk, bytes/sample, RSS bytes/series
#              (computed here the same way when measure.sh fails, as it does past 2 GiB)
#   restart    kill -9 each server, start it again on its data, time until it is ready
#              (WAL replay)
#
# usage: tools/bench/side_by_side.sh [--instances 200] [--duration 6h] [--repeat 5] [--out DIR]
#   --instances 2000 is the 10x run (117k series, 167M samples for 6h).
# needs: Debian's prometheus, ../shared/bench's Python requirements (scripts/test-deps installs
# both), ../shared beside the repository. Everything listens on loopback and is stopped at the
# end; DIR (default a new temporary directory) keeps the data, logs and the JSON of each run.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=../shared/bench
[ -d "$SHARED" ] || { echo "side_by_side: $SHARED is missing (../shared beside the repo)" >&2; exit 2; }
INSTANCES=200 DURATION=6h REPEAT=5 OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --instances) INSTANCES=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "side_by_side: unknown argument $1" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
PPORT=${PROM_PORT:-19090} MPORT=${M3QUERY_PORT:-17201}
PROM_PID="" M3_PID=""
cleanup() {
  [ -n "$PROM_PID" ] && kill "$PROM_PID" 2>/dev/null || true
  [ -n "$M3_PID" ] && kill "$M3_PID" 2>/dev/null || true
}
trap cleanup EXIT

cargo build --release --quiet --bin m3query --example remote_write_replay
M3=target/release/m3query
REPLAY=target/release/examples/remote_write_replay

# Seconds since $1 (epoch ns), to 10 ms.
secs_since() {
  local now
  now=$(date +%s%N)
  printf '%d.%03d\n' $(( (now - $1) / 1000000000 )) $(( (now - $1) / 1000000 % 1000 ))
}

# Wait until URL answers 200; prints the seconds it took since $1 (epoch ns). Polls every
# 10 ms, so the figure is good to about that (restarts take well under a second at 1x).
wait_ready() {
  local since=$1 url=$2
  for _ in $(seq 1 60000); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then
      secs_since "$since"
      return 0
    fi
    sleep 0.01
  done
  echo "side_by_side: $url not ready in 10 minutes" >&2
  return 1
}

start_m3query() {
  cat > "$OUT/m3query.yml" <<YAML
listenAddress: 127.0.0.1:$MPORT
storage:
  path: $OUT/m3q
  outOfOrderWindow: 30d
  retention: 30d
YAML
  "$M3" --config "$OUT/m3query.yml" 2>>"$OUT/m3query.log" &
  M3_PID=$!
}

start_prometheus() {
  PROM_PID=$("$SHARED/start_prometheus.sh" "$PPORT" "$OUT/prom" | tail -1)
}

echo "== capturing the load: $INSTANCES instances x $DURATION"
END=$(( $(date +%s) / 3600 * 3600 ))
"$PY" tools/bench/capture_load.py "$OUT/load.bin" --instances "$INSTANCES" \
  --duration "$DURATION" --end "$END" --meta "$OUT/dataset.json" >"$OUT/capture.log"
tail -3 "$OUT/capture.log"

echo "== ingest, each server alone"
start_prometheus
PROM_INGEST=$("$REPLAY" "$OUT/load.bin" "http://127.0.0.1:$PPORT/api/v1/write" | tee -a "$OUT/ingest.log" | head -1)
kill "$PROM_PID"; wait "$PROM_PID" 2>/dev/null || true; PROM_PID=""
T0=$(date +%s%N); start_m3query; wait_ready "$T0" "http://127.0.0.1:$MPORT/ready" >/dev/null
M3_INGEST=$("$REPLAY" "$OUT/load.bin" "http://127.0.0.1:$MPORT/api/v1/prom/remote/write" | tee -a "$OUT/ingest.log" | head -1)
echo "prometheus: $PROM_INGEST"
echo "m3query:    $M3_INGEST"

echo "== queries (Prometheus = A, m3query = B)"
T0=$(date +%s%N); start_prometheus
"$PY" "$SHARED/run.py" --a "http://127.0.0.1:$PPORT" --b "http://127.0.0.1:$MPORT" \
  --dataset "$OUT/dataset.json" --repeat "$REPEAT" --pid-a "$PROM_PID" --out "$OUT/range.json" \
  | tee "$OUT/range.txt" | tail -4
"$PY" "$SHARED/run.py" --a "http://127.0.0.1:$PPORT" --b "http://127.0.0.1:$MPORT" \
  --dataset "$OUT/dataset.json" --repeat "$REPEAT" --instant --out "$OUT/instant.json" \
  | tee "$OUT/instant.txt" | tail -4

# ../shared's measure.sh, and the same figures computed here when it fails: its mawk prints
# byte counts past 2 GiB in exponent form (2.26594e+09), which shell arithmetic refuses, and
# the run would end before its restart step.
footprint() {
  local pid=$1 dir=$2
  "$SHARED/measure.sh" "$pid" "$dir" "$OUT/dataset.json" && return 0
  echo "(measure.sh failed; the same figures from /proc and du:)"
  "$PY" - "$pid" "$dir" "$OUT/dataset.json" <<'PY'
import json, subprocess, sys
pid, d, meta = sys.argv[1:]
st = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open(f"/proc/{pid}/status") if l.startswith(("VmRSS", "VmHWM"))}
disk = int(subprocess.run(["du", "-sb", d], capture_output=True, text=True).stdout.split()[0])
m = json.load(open(meta))
series, samples = m["series"], m["samples"] + m.get("stale_markers", 0)
print(f"pid {pid}  VmRSS {st['VmRSS'] >> 20} MiB  VmHWM (peak) {st['VmHWM'] >> 20} MiB")
print(f"disk {d}: {disk} bytes ({disk >> 20} MiB)")
print(f"dataset: {series} series, {samples} samples")
print(f"disk bytes/sample: {disk / samples:.3f}")
print(f"RSS bytes/series: {st['VmRSS'] / series:,.0f}   (peak {st['VmHWM'] / series:,.0f})")
PY
}

echo "== footprint"
footprint "$PROM_PID" "$OUT/prom" | tee "$OUT/footprint-prometheus.txt"
footprint "$M3_PID" "$OUT/m3q" | tee "$OUT/footprint-m3query.txt"

echo "== restart after kill -9 (WAL replay), to ready"
kill -9 "$PROM_PID" "$M3_PID"; wait "$PROM_PID" "$M3_PID" 2>/dev/null || true
# Prometheus is not this shell's child (start_prometheus.sh starts it), so `wait` returns at
# once: poll until both are gone, or the new Prometheus finds its port still taken (a 2 GiB
# process takes a moment to tear down after kill -9).
for pid in "$PROM_PID" "$M3_PID"; do
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
done
PROM_PID="" M3_PID=""
# start_prometheus.sh polls readiness every 0.2 s itself: time Prometheus with the same
# 10 ms poll as m3query, and take its pid when the script is done.
T0=$(date +%s%N); "$SHARED/start_prometheus.sh" "$PPORT" "$OUT/prom" >"$OUT/prom.pid" &
STARTER=$!
PROM_RESTART=$(wait_ready "$T0" "http://127.0.0.1:$PPORT/-/ready")
wait "$STARTER"; PROM_PID=$(tail -1 "$OUT/prom.pid")
# Each server restarts alone, as each ingests alone: a restarted Prometheus goes on with its
# own start-up work (head compaction, WAL checkpoint) that would share the CPU with
# m3query's replay.
kill "$PROM_PID"; while kill -0 "$PROM_PID" 2>/dev/null; do sleep 0.05; done; PROM_PID=""
T0=$(date +%s%N); start_m3query
M3_RESTART=$(wait_ready "$T0" "http://127.0.0.1:$MPORT/ready")
echo "prometheus: ${PROM_RESTART}s  m3query: ${M3_RESTART}s  (ratio $("$PY" -c 'import sys; print(f"{float(sys.argv[1]) / float(sys.argv[2]):.2f}")' "$M3_RESTART" "$PROM_RESTART")x)"
echo "== results in $OUT"
