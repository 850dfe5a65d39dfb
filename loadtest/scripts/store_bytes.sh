#!/usr/bin/env bash
# Store Redis memory per persisted message (Redis store backend, 1:1 messages from `tern bench`).
#
# Starts in a temp dir on free loopback ports: presence Redis, store Redis (appendonly yes,
# appendfsync always), one `tern dispatch`, one `tern gateway`; runs
# `tern bench --pairs P --duration D --rate R` (100-byte bodies) and prints the store Redis
# used_memory and key count before/after, and used_memory per acknowledged message.
# Bounded: every step has a timeout; the EXIT trap stops every process this script started.
#
#   loadtest/scripts/store_bytes.sh [path/to/tern] [rate] [duration]
set -euo pipefail
TERN=${1:-target/release/tern}
RATE=${2:-5000}
DUR=${3:-5s}
TMP=$(mktemp -d /tmp/tern-storebytes-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
P=$(port); S=$(port)
redis-server --port "$P" --bind 127.0.0.1 --save "" --appendonly no --daemonize no --dir "$TMP" >/dev/null &
PIDS+=($!)
mkdir "$TMP/store"
redis-server --port "$S" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always --daemonize no --dir "$TMP/store" >/dev/null &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$P" ping 2>/dev/null | grep -q PONG && redis-cli -p "$S" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
KEY=$(head -c 32 /dev/urandom | base64)
SECRET=$(head -c 32 /dev/urandom | base64)
C=(--set "cluster.presence_redis=redis://127.0.0.1:$P/" --set "auth.hs256_key=$KEY" --set "cluster.secret=$SECRET" --set server.log=warn --data-dir "$TMP")
"$TERN" dispatch --id w1 --link-listen 127.0.0.1:0 --http-listen "" --set store.backend=redis \
  --set "store.redis_url=redis://127.0.0.1:$S/" "${C[@]}" >"$TMP/d.out" 2>"$TMP/d.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q link= "$TMP/d.out" 2>/dev/null && break; sleep 0.1; done
LINK=$(sed -n 's/.*link=\([^ ]*\).*/\1/p' "$TMP/d.out" | head -1)
"$TERN" gateway --id g1 --listen 127.0.0.1:0 --http-listen "" --set "cluster.dispatch_workers=$LINK" "${C[@]}" >"$TMP/g.out" 2>"$TMP/g.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q client= "$TMP/g.out" 2>/dev/null && break; sleep 0.1; done
GW=$(sed -n 's/.*client=\([^ ]*\).*/\1/p' "$TMP/g.out" | head -1)
sleep 1
mem() { redis-cli -p "$S" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p'; }
M0=$(mem); K0=$(redis-cli -p "$S" dbsize)
timeout 120 "$TERN" bench --addr "$GW" --pairs 50 --duration "$DUR" --rate "$RATE" --set "auth.hs256_key=$KEY" | tee "$TMP/bench.out"
M1=$(mem); K1=$(redis-cli -p "$S" dbsize)
AOF=$(du -sb "$TMP/store" | cut -f1)
echo "store used_memory: $M0 -> $M1; keys: $K0 -> $K1; AOF dir bytes: $AOF"
