#!/bin/bash
# The distributed mode on one host: presence Redis + store Redis (AOF always) + 2 `tern dispatch`
# + 2 `tern gateway`, driven by `tern bench` through both gateways. Prints the bench result and
# the CPU seconds of every server process (from /proc), and per 100k messages.
#
#   loadtest/scripts/distributed.sh [TERN_BINARY] [RATE] [SECONDS]
#   STRACE=1 loadtest/scripts/distributed.sh ...   # also: write syscalls of worker 1 by peer
#
# Ports 26379/26380 (Redis), 27401-27402 (gateways), 27501-27502 (links), 27601-27604 (HTTP).
set -euo pipefail
BIN=$(realpath "${1:-target/release/tern}"); RATE=${2:-2000}; SECS=${3:-10}
D=$(mktemp -d /tmp/tern-distributed.XXXXXX); cd "$D"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    redis-cli -p 26379 shutdown nosave >/dev/null 2>&1 || true
    redis-cli -p 26380 shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT
redis-server --port 26379 --save "" --appendonly no --daemonize yes --dir "$D" --pidfile "$D/r1.pid" --logfile "$D/r1.log"
redis-server --port 26380 --save "" --appendonly yes --appendfsync always --daemonize yes --dir "$D" --pidfile "$D/r2.pid" --logfile "$D/r2.log"
until redis-cli -p 26380 ping >/dev/null 2>&1 && redis-cli -p 26379 ping >/dev/null 2>&1; do sleep 0.1; done
KEY=$(head -c32 /dev/urandom | base64); SEC=$(head -c32 /dev/urandom | base64)
C=(--set "cluster.secret=$SEC" --set cluster.presence_redis=redis://127.0.0.1:26379/ --set "auth.hs256_key=$KEY")
S=(--set store.backend=redis --set store.redis_url=redis://127.0.0.1:26380/)
"$BIN" dispatch --id w1 --http-listen 127.0.0.1:27601 --link-listen 127.0.0.1:27501 "${S[@]}" "${C[@]}" >w1.log 2>&1 & PIDS+=($!)
"$BIN" dispatch --id w2 --http-listen 127.0.0.1:27602 --link-listen 127.0.0.1:27502 "${S[@]}" "${C[@]}" >w2.log 2>&1 & PIDS+=($!)
until curl -sf 127.0.0.1:27601/readyz >/dev/null && curl -sf 127.0.0.1:27602/readyz >/dev/null; do sleep 0.1; done
"$BIN" gateway --id g1 --http-listen 127.0.0.1:27603 --listen 127.0.0.1:27401 "${C[@]}" >g1.log 2>&1 & PIDS+=($!)
"$BIN" gateway --id g2 --http-listen 127.0.0.1:27604 --listen 127.0.0.1:27402 "${C[@]}" >g2.log 2>&1 & PIDS+=($!)
until curl -sf 127.0.0.1:27603/readyz >/dev/null && curl -sf 127.0.0.1:27604/readyz >/dev/null; do sleep 0.1; done
ALL=("${PIDS[@]}" "$(cat r1.pid)" "$(cat r2.pid)")
cpu() { for p in "${ALL[@]}"; do awk '{print $14 + $15}' "/proc/$p/stat"; done; }
if [ "${STRACE:-0}" = 1 ]; then
    strace -f -yy -e trace=sendto,writev,write -o "$D/w1.trace" -p "${PIDS[0]}" & ST=$!
    sleep 0.5
fi
mapfile -t C0 < <(cpu)
"$BIN" bench --addr 127.0.0.1:27401,127.0.0.1:27402 --pairs 100 --duration "${SECS}s" --rate "$RATE" --set "auth.hs256_key=$KEY" | tee bench.out
mapfile -t C1 < <(cpu)
[ "${STRACE:-0}" = 1 ] && kill -INT "$ST" && wait "$ST" 2>/dev/null || true
HZ=$(getconf CLK_TCK); ACKED=$(grep -o '"acked":[0-9]*' bench.out | cut -d: -f2)
TOTAL=0
for i in "${!ALL[@]}"; do
    name=(g1 g2 w1 w2 presence-redis store-redis); t=$(( C1[i] - C0[i] )); TOTAL=$(( TOTAL + t ))
    printf '%-15s %6.2f CPU-s\n' "${name[$i]}" "$(echo "$t / $HZ" | bc -l)"
done
printf 'all servers     %6.2f CPU-s = %.1f CPU-s per 100k messages\n' "$(echo "$TOTAL / $HZ" | bc -l)" "$(echo "$TOTAL / $HZ * 100000 / $ACKED" | bc -l)"
curl -s 127.0.0.1:27601/metrics | grep -E '^tern_dispatch_(commit_batches|route_pushes_sent|route_link_batches)_total' || true
if [ "${STRACE:-0}" = 1 ]; then
    echo "worker 1 writes on gateway links: $(grep -cE '(sendto|writev|write)\([0-9]+<TCP:\[[0-9.]+:27501->' w1.trace)"
fi
