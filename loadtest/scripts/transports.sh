#!/usr/bin/env bash
# TCP, TLS and QUIC compared on one `tern serve` (embedded, loopback, defaults: redb with
# fsync), started here:
#   1. reconnect -> LoginOk over RTT_MS of injected round trip (TCP and UDP chaos proxies), for
#      TCP, TLS 1.3 full and resumed, QUIC 1-RTT and 0-RTT; then the server's CPU per login per
#      transport, CPU_LOGINS logins each without the proxies (loadtest/examples/reconnect_time.rs);
#   2. 1:1 messages with SDK clients (`tern bench`, receivers sending DELIVERED receipts), over
#      each transport, at RATE msg/s and at saturation (WINDOW sends in flight per client):
#      send->ack and send->deliver percentiles and the server's CPU seconds per 100k messages
#      (utime+stime from /proc/PID/stat over the bench run, connections included).
#
#   loadtest/scripts/transports.sh
#   RTT_MS=100 ROUNDS=50 RATE=1000 DURATION=30s loadtest/scripts/transports.sh
#
# Settings (environment): RTT_MS ROUNDS CPU_LOGINS PAIRS RATE WINDOW BODY DURATION OUT TERN_BIN
# EXAMPLE_BIN (skip the build). Results in OUT (default target/transports). Every run is bounded
# (`timeout`) and every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

RTT_MS=${RTT_MS:-50}
ROUNDS=${ROUNDS:-20}
CPU_LOGINS=${CPU_LOGINS:-1000}
PAIRS=${PAIRS:-100}
RATE=${RATE:-2000}
WINDOW=${WINDOW:-8}
BODY=${BODY:-64}
DURATION=${DURATION:-15s}
OUT=${OUT:-target/transports}

target=${CARGO_TARGET_DIR:-target}
if [ -z "${TERN_BIN:-}" ] || [ -z "${EXAMPLE_BIN:-}" ]; then
  # Two builds: with --example, cargo would build only the example, not the tern binary.
  cargo build --release -p tern && cargo build --release -p tern-loadtest --example reconnect_time
fi
TERN_BIN=${TERN_BIN:-$target/release/tern}
EXAMPLE_BIN=${EXAMPLE_BIN:-$target/release/examples/reconnect_time}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
SERVE=
cleanup() {
  if [ -n "$SERVE" ]; then
    kill "$SERVE" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVE" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVE" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$TERN_BIN" serve --listen "127.0.0.1:$PORT" --http-listen "" --data-dir "$WORK/data" \
  --set server.log=warn >"$WORK/serve.log" 2>&1 & SERVE=$!
for _ in $(seq 1 300); do grep -q listening "$WORK/serve.log" && break; sleep 0.05; done
grep -q listening "$WORK/serve.log" || { echo "transports: tern serve did not start" >&2; cat "$WORK/serve.log" >&2; exit 1; }
PIN=$(openssl x509 -in "$WORK/data/tls/cert.pem" -noout -fingerprint -sha256 | cut -d= -f2)
TOKEN=$("$TERN_BIN" token --data-dir "$WORK/data" --user rt --device d1)
ticks() { awk '{print $14 + $15}' "/proc/$SERVE/stat"; }
HZ=$(getconf CLK_TCK)

{
  echo "machine: $(nproc) cores, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "server: tern serve (embedded, defaults), pid $SERVE, port $PORT (TCP, TLS and QUIC)"
  echo
  timeout 600 "$EXAMPLE_BIN" --server "127.0.0.1:$PORT" --token "$TOKEN" --pin "$PIN" \
    --rtt-ms "$RTT_MS" --rounds "$ROUNDS" --server-pid "$SERVE" --cpu-logins "$CPU_LOGINS"
  echo
  echo "1:1 messages: tern bench, $PAIRS pairs (SDK clients, DELIVERED receipts), body $BODY B, $DURATION per run"
  printf '%-6s %-10s %9s %9s %9s %9s %9s %9s %12s\n' transport load "msgs/s" "ack p50" "ack p99" \
    "dlv p50" "dlv p99" "dlv p99.9" "CPU-s/100k"
  for scheme in tcp tls quic; do
    for rate in "$RATE" 0; do
      c0=$(ticks)
      timeout 300 "$TERN_BIN" bench --data-dir "$WORK/data" --addr "$scheme://127.0.0.1:$PORT" \
        --pin "$PIN" --pairs "$PAIRS" --rate "$rate" --window "$WINDOW" --body-bytes "$BODY" \
        --duration "$DURATION" --prefix "$scheme$rate" >"$OUT/bench-$scheme-$rate.txt" 2>&1 \
        || { echo "transports: bench over $scheme failed:" >&2; tail -5 "$OUT/bench-$scheme-$rate.txt" >&2; continue; }
      c1=$(ticks)
      tail -1 "$OUT/bench-$scheme-$rate.txt" | python3 -c '
import json, sys
scheme, rate, cpu_ticks, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
r = json.load(sys.stdin)
window, acked, mps = r["window"], max(r["acked"], 1), r["msgs_per_s"]
a, d = r["ack_ms"], r["deliver_ms"]
load = "%d/s" % rate if rate else "max w%d" % window
cpu = cpu_ticks / hz / acked * 1e5
print("%-6s %-10s %9.0f %9.2f %9.2f %9.2f %9.2f %9.2f %12.1f" % (scheme, load, mps, a["p50"],
      a["p99"], d["p50"], d["p99"], d["p999"], cpu))
' "$scheme" "$rate" "$((c1 - c0))" "$HZ"
    done
  done
} | tee "$OUT/summary.txt"
