#!/usr/bin/env bash
# Native histograms, m3query against Debian's Prometheus (2.42, --enable-feature=native-histograms),
# each alone on this machine, on the same load (examples/histogram_load.rs: request-latency
# histograms, schema 3, one sample per series every 15 s):
#   ingest     histogram samples/s and CPU seconds, replaying the load into each server in
#              turn (m3query acknowledges a write after the WAL fsync that covers it,
#              Prometheus without one: with small requests, wall time is fsync-bound)
#   queries    ../shared/bench/run.py with tools/bench/histogram_queries.yaml, range and instant
#   footprint  ../shared/bench/measure.sh: RSS, disk, bytes per histogram sample
#
# usage: tools/bench/histograms.sh [--series 200] [--duration 6h] [--repeat 5] [--out DIR]
# needs: Debian's prometheus, ../shared/bench's Python requirements (scripts/test-deps installs
# both), ../shared beside the repository. Everything listens on loopback and is stopped at the
# end; DIR (default a new temporary directory) keeps the data, logs and the JSON of each run.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=../shared/bench
[ -d "$SHARED" ] || { echo "histograms: $SHARED is missing (../shared beside the repo)" >&2; exit 2; }
SERIES=200 DURATION=6h REPEAT=5 OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --series) SERIES=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "histograms: unknown argument $1" >&2; exit 2 ;;
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

cargo build --release --quiet --bin m3query --example remote_write_replay --example histogram_load
M3=target/release/m3query
REPLAY=target/release/examples/remote_write_replay

wait_ready() {
  for _ in $(seq 1 6000); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "histograms: $1 not ready in 10 minutes" >&2
  return 1
}

# CPU seconds (user + system) process $1 has used.
cpu() { awk '{printf "%.2f\n", ($14 + $15) / 100}' "/proc/$1/stat"; }

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
  wait_ready "http://127.0.0.1:$MPORT/ready"
}

start_prometheus() {
  PROM_PID=$(EXTRA_FLAGS=--enable-feature=native-histograms \
    "$SHARED/start_prometheus.sh" "$PPORT" "$OUT/prom" | tail -1)
}

echo "== generating the load: $SERIES series x $DURATION"
END=$(( $(date +%s) / 3600 * 3600 ))
LOAD=$(target/release/examples/histogram_load "$OUT/load.bin" --series "$SERIES" \
  --duration "$DURATION" --end "$END")
echo "$LOAD"
SAMPLES=$(echo "$LOAD" | awk '{print $4}')
echo "{\"series\": $SERIES, \"samples\": $SAMPLES, \"end_ms\": $((END * 1000))}" > "$OUT/dataset.json"

echo "== ingest, each server alone"
start_prometheus
C0=$(cpu "$PROM_PID")
PROM_INGEST=$("$REPLAY" "$OUT/load.bin" "http://127.0.0.1:$PPORT/api/v1/write" | tee -a "$OUT/ingest.log" | head -1)
PROM_CPU=$("$PY" -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}")' "$C0" "$(cpu "$PROM_PID")")
kill "$PROM_PID"; wait "$PROM_PID" 2>/dev/null || true; PROM_PID=""
start_m3query
C0=$(cpu "$M3_PID")
M3_INGEST=$("$REPLAY" "$OUT/load.bin" "http://127.0.0.1:$MPORT/api/v1/prom/remote/write" | tee -a "$OUT/ingest.log" | head -1)
M3_CPU=$("$PY" -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}")' "$C0" "$(cpu "$M3_PID")")
echo "prometheus: $PROM_INGEST; ${PROM_CPU} s CPU"
echo "m3query:    $M3_INGEST; ${M3_CPU} s CPU"

echo "== queries (Prometheus = A, m3query = B)"
start_prometheus
for mode in "" --instant; do
  "$PY" "$SHARED/run.py" --a "http://127.0.0.1:$PPORT" --b "http://127.0.0.1:$MPORT" \
    --queries tools/bench/histogram_queries.yaml --end "$END" --repeat "$REPEAT" $mode \
    --out "$OUT/queries${mode}.json" | tee "$OUT/queries${mode}.txt" | tail -4
done

echo "== footprint"
"$SHARED/measure.sh" "$PROM_PID" "$OUT/prom" "$OUT/dataset.json" | tee "$OUT/footprint-prometheus.txt"
"$SHARED/measure.sh" "$M3_PID" "$OUT/m3q" "$OUT/dataset.json" | tee "$OUT/footprint-m3query.txt"
echo "== results in $OUT"
