#!/usr/bin/env bash
# The message-path benchmark (issue 9): `tern-loadtest pairs` drives 100 sender->receiver pairs
# (64-byte bodies, receivers sending DELIVERED receipts like a real client) against a server
# started here, twice: at a fixed rate (open loop, RATE msg/s) and at saturation (WINDOW sends in
# flight per pair). Each run reports send->ack and send->deliver p50/p99/p99.9, persisted and
# delivered msg/s, and the SERVER's CPU seconds per 100k messages (/proc, summed over every
# server process), the load generator's own CPU and the machine's busy cores beside it.
#
#   loadtest/scripts/msg_path.sh                       # tern serve (redb, fsync on: the default)
#   MODE=distributed loadtest/scripts/msg_path.sh      # 2 gateways on one port, 2 workers,
#                                                      # presence Redis, store Redis (AOF always)
#   DURATION=30s RATE=5000 loadtest/scripts/msg_path.sh
#   MODE=floor loadtest/scripts/msg_path.sh            # the floor: loadtest/examples/floor_server.rs
#   MODE=floor FLOOR_FSYNC=0 loadtest/scripts/msg_path.sh   # ... persisting nothing
#
# MODE=floor runs the same load against a one-thread server that does the least the protocol
# asks (the token checked at login, no index, no dedupe; one log write + fdatasync per poll
# round, or none with FLOOR_FSYNC=0): what the protocol itself costs on this machine, the lower
# bound for any server's CPU figure here.
#
# MODE=distributed starts a presence redis-server, a store redis-server (appendonly yes,
# appendfsync always), 2 `tern dispatch` workers and 2 `tern gateway`s sharing one client port
# (server.share_port); the CPU figure then sums gateways + workers + both Redis.
#
# Settings (environment): MODE (embedded | distributed | floor) PAIRS RATE WINDOW BODY WARMUP DURATION
# RECEIPTS (1; 0 = receivers send none: the issue's "no receipts" rows) GATEWAYS WORKERS
# (distributed) FLOOR_FSYNC (floor; 1) PAIRS_ARGS (more `pairs` arguments for both runs; group_chat.sh passes
# `--group-size`) SERVER_SETS (more `key=value` server settings, space-separated) TAG (result name prefix, default MODE) FRAME_LIMIT (gateway.max_frames_per_sec; default 0 = off: at 100k msg/s each of
# 100 senders sends 1000 frames/s, the default limit) OUT (result directory) TERN_BIN
# LOADTEST_BIN (skip the build). Results: OUT/<mode>[-noreceipts]-{rate,saturation}.{txt,json}
# and OUT/<mode>[-noreceipts]-summary.txt. Everything stops by itself (`--max-duration` and
# `timeout` on each run) and every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

MODE=${MODE:-embedded}
PAIRS=${PAIRS:-100}
RATE=${RATE:-2000}
WINDOW=${WINDOW:-16}
BODY=${BODY:-64}
WARMUP=${WARMUP:-2s}
DURATION=${DURATION:-10s}
GATEWAYS=${GATEWAYS:-2}
WORKERS=${WORKERS:-2}
FRAME_LIMIT=${FRAME_LIMIT:-0}
RECEIPTS=${RECEIPTS:-1}
OUT=${OUT:-target/msg_path}
PAIRS_ARGS=${PAIRS_ARGS:-}

if [ -z "${TERN_BIN:-}" ] || [ -z "${LOADTEST_BIN:-}" ]; then
  cargo build --release -p tern -p tern-loadtest
fi
target=${CARGO_TARGET_DIR:-target}
if [ "$MODE" = floor ]; then cargo build --release -p tern-loadtest --example floor_server; fi
TERN_BIN=${TERN_BIN:-$target/release/tern}
LOADTEST_BIN=${LOADTEST_BIN:-$target/release/tern-loadtest}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port, what
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "msg_path: $2 did not come up on port $1" >&2; exit 1
}
wait_line() { # file, pattern, what
  for _ in $(seq 1 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "msg_path: $3 did not start; log:" >&2; tail -20 "$1" >&2; exit 1
}
metric() { # http port, metric name
  curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'
}
secs() { local d=$1; case $d in *ms) echo $(( ${d%ms} / 1000 ));; *s) echo "${d%s}";; *m) echo $(( ${d%m} * 60 ));; *) echo "$d";; esac; }

KEY=$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')
CLIENT=$(free_port)
SERVER_PIDS=()
limit=(--set "gateway.max_frames_per_sec=$FRAME_LIMIT")
for kv in ${SERVER_SETS:-}; do limit+=(--set "$kv"); done
case $MODE in
  embedded)
    "$TERN_BIN" serve --listen "127.0.0.1:$CLIENT" --http-listen "" --data-dir "$WORK/data" \
      --set "auth.hs256_key=$KEY" --set server.log=warn "${limit[@]}" \
      >"$WORK/serve.log" 2>&1 & PIDS+=($!); SERVER_PIDS+=($!)
    wait_line "$WORK/serve.log" "listening" "tern serve"
    setup="tern serve (embedded redb store, store.fsync=true)"
    ;;
  distributed)
    PRESENCE=$(free_port); STORE=$(free_port)
    redis-server --port "$PRESENCE" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$WORK" --daemonize no >"$WORK/presence.log" 2>&1 & PIDS+=($!); SERVER_PIDS+=($!)
    mkdir -p "$WORK/store"
    redis-server --port "$STORE" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always \
      --dir "$WORK/store" --daemonize no >"$WORK/store.log" 2>&1 & PIDS+=($!); SERVER_PIDS+=($!)
    wait_port "$PRESENCE" "presence Redis"; wait_port "$STORE" "store Redis"
    SECRET=$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')
    common=(--set "auth.hs256_key=$KEY" --set "cluster.secret=$SECRET"
            --set "cluster.presence_redis=redis://127.0.0.1:$PRESENCE/" --set server.log=warn)
    links=()
    for w in $(seq 1 "$WORKERS"); do
      link=$(free_port); links+=("127.0.0.1:$link")
      "$TERN_BIN" dispatch "${common[@]}" --set "server.data_dir=$WORK/w$w" \
        --set "cluster.link_listen=127.0.0.1:$link" --set "cluster.node_id=w$w" \
        --set store.backend=redis --set "store.redis_url=redis://127.0.0.1:$STORE/" \
        --set server.http_listen= >"$WORK/w$w.log" 2>&1 & PIDS+=($!); SERVER_PIDS+=($!)
      wait_port "$link" "tern dispatch $w"
    done
    workers=$(IFS=,; echo "${links[*]}")
    for g in $(seq 1 "$GATEWAYS"); do
      http=$(free_port)
      "$TERN_BIN" gateway "${common[@]}" "${limit[@]}" --set "server.data_dir=$WORK/g$g" \
        --set "server.listen=127.0.0.1:$CLIENT" --set server.share_port=true \
        --set "server.http_listen=127.0.0.1:$http" --set "cluster.dispatch_workers=$workers" \
        --set "cluster.node_id=gw$g" >"$WORK/gw$g.log" 2>&1 & PIDS+=($!); SERVER_PIDS+=($!)
      wait_port "$http" "tern gateway $g"
      # Every gateway links every worker before the clients come.
      for _ in $(seq 1 200); do
        [ "$(metric "$http" tern_gateway_links_up_total || echo 0)" -ge "$WORKERS" ] 2>/dev/null && break
        sleep 0.05
      done
    done
    # A gateway's first presence check (1 s after start) finds no marker and sends a SyncHint
    # to every connection it holds: let that pass before the clients come.
    sleep 2
    setup="$GATEWAYS gateways sharing one port, $WORKERS dispatch workers, presence Redis,"
    setup+=" store Redis (appendonly yes, appendfsync always)"
    ;;
  floor)
    floor_args=(); [ "${FLOOR_FSYNC:-1}" = 0 ] && floor_args+=(--no-fsync)
    mkdir -p "$WORK/data"
    "$target/release/examples/floor_server" "127.0.0.1:$CLIENT" "$WORK/data/floor.log" --key "$KEY" \
      "${floor_args[@]}" >"$WORK/floor.log" 2>&1 & PIDS+=($!); SERVER_PIDS+=($!)
    wait_line "$WORK/floor.log" "listening" "floor_server"
    setup="floor_server (one thread; $([ "${FLOOR_FSYNC:-1}" = 0 ] && echo "persists nothing" || echo "one fdatasync per poll round"))"
    ;;
  *) echo "msg_path: MODE must be embedded, distributed or floor" >&2; exit 2 ;;
esac
wait_port "$CLIENT" "the client port"

pid_args=(); for p in "${SERVER_PIDS[@]}"; do pid_args+=(--server-pid "$p"); done
tag=${TAG:-$MODE}
if [ "$MODE" = floor ] && [ "${FLOOR_FSYNC:-1}" = 0 ] && [ -z "${TAG:-}" ]; then tag+=-nofsync; fi
read -r -a extra <<<"$PAIRS_ARGS"
if [ "$RECEIPTS" = 0 ]; then pid_args+=(--no-receipts); tag+=-noreceipts; fi
hard=$(( $(secs "$WARMUP") + $(secs "$DURATION") + 90 ))
run_pairs() { # name, user prefix, extra args...
  local name=$1 prefix=$2; shift 2
  echo "msg_path: $name ($MODE) ..." >&2
  timeout $(( hard + 30 )) "$LOADTEST_BIN" pairs --addr "127.0.0.1:$CLIENT" --key "$KEY" \
    --pairs "$PAIRS" --body-bytes "$BODY" --warmup "$WARMUP" --duration "$DURATION" \
    --user-prefix "$prefix" --max-duration "${hard}s" --quiet "${pid_args[@]}" "${extra[@]}" "$@" \
    --json "$OUT/$tag-$name.json" >"$OUT/$tag-$name.txt" \
    || echo "msg_path: the $name run failed" >&2
}
run_pairs rate ra --rate "$RATE"
run_pairs saturation sa --rate 0 --window "$WINDOW"

{
  echo "machine: $(nproc) cores, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "setup: $setup; server pids ${SERVER_PIDS[*]}; gateway.max_frames_per_sec=$FRAME_LIMIT;" \
       "receipts $([ "$RECEIPTS" = 0 ] && echo off || echo on)"
  echo "--- $RATE msg/s, $PAIRS pairs ---"; head -n -1 "$OUT/$tag-rate.txt" 2>/dev/null || true
  echo "--- saturation, $WINDOW in flight per pair ---"
  head -n -1 "$OUT/$tag-saturation.txt" 2>/dev/null || true
  python3 - "$OUT/$tag-rate.json" "$OUT/$tag-saturation.json" <<'EOF' || true
import json, sys
r, s = (json.load(open(p)) for p in sys.argv[1:3])
ms = lambda us: us / 1000
d, c = r["deliver_latency_us"], r["cpu"]
print("--- summary (the issue's table) ---")
print(f"{r['target_rate']:.0f} msg/s: send->deliver p50 / p99 {ms(d['p50']):.2f} / {ms(d['p99']):.2f} ms"
      f" (send->ack p99 {ms(r['ack_latency_us']['p99']):.2f} ms),"
      f" server CPU-s per 100k {c['server_cpu_secs_per_100k'] or 0:.1f},"
      f" machine {c['machine_busy_fraction'] or 0:.0%} busy"
      + ("" if r["kept_up"] else " [load generator fell behind its schedule]"))
print(f"saturation ({s['window']} in flight per pair): persisted {s['persisted_per_sec']:.0f} msg/s,"
      f" delivered {s['delivered_per_sec']:.0f} msg/s,"
      f" server CPU-s per 100k {s['cpu']['server_cpu_secs_per_100k'] or 0:.1f},"
      f" load generator {s['cpu']['loadgen_cpu_secs_per_100k'] or 0:.1f}")
EOF
} | tee "$OUT/$tag-summary.txt"
