#!/usr/bin/env bash
# The density run: N concurrent logged-in TCP connections spread over several gateway processes
# sharing one port (SO_REUSEPORT: server.share_port=true on every gateway), held with heartbeats,
# with a delivery probe during the hold.
#
# Starts, in a scratch directory on free loopback ports: a presence Redis, a store Redis
# (appendonly, fsync always), one `tern dispatch` and G `tern gateway` processes on one client
# port. Then a `tern-loadtest swarm` of P bot processes (each on its own 127.0.0.x source
# addresses) ramps to N connections at R logins/s and holds them; meanwhile `tern-loadtest probe`
# sends messages to random bots and the bots time each delivery. Prints and writes:
#   - logins/s and login latency (swarm report), connection failures
#   - gateway user-space memory per idle logged-in connection: sum over gateways of
#     (VmRSS after the ramp - VmRSS before) / connections logged in
#   - kernel TCP memory (/proc/net/sockstat) and slab
#   - delivery latency p50/p99/p999 of the probe messages to idle bots
#
# Everything stops by itself (the swarm's --max-duration, `timeout` on the probe) and every
# process is killed on exit. Needs ~1.2 GiB RAM per 100k connections in all (kernel included).
#
#   loadtest/scripts/density.sh                       # 100k connections, 7 gateways, 8 bot procs
#   CONNS=20000 GATEWAYS=2 BOT_PROCS=2 HOLD=20s loadtest/scripts/density.sh   # a quick one
#   QUIC_PERCENT=100 CONNS=10000 GATEWAYS=1 BOT_PROCS=1 loadtest/scripts/density.sh   # all QUIC
#   QUIC_PERCENT=50 loadtest/scripts/density.sh      # a mixed swarm: every other bot on QUIC
#   GROUP=1 CONNS=10000 GATEWAYS=2 BOT_PROCS=2 PROBE_RATE=10 loadtest/scripts/density.sh
#                                   # fan-out: every probe goes to one group of all the bots
#
# QUIC bots use UDP at the same address and port; the gateways share the certificate the first
# one generates in the scratch data directory, which the bots trust (--ca). A QUIC connection
# costs the gateway no file descriptor (all ride each I/O thread's UDP socket), so only the TCP
# share counts against the file limit.
#
# Settings (environment): CONNS GATEWAYS BOT_PROCS RATE (logins/s in all) HOLD HEARTBEAT
# PROBES (messages) PROBE_RATE (messages/s, default 20) GROUP (1: the probe sends to one group
# of every bot; reports the time until the last member has each message, deliveries/s and
# server CPU per 1,000 deliveries) IO_THREADS (per gateway) QUIC_PERCENT (0-100, default 0)
# BOT_ENGINE (auto, mio or tokio: `swarm --engine`; auto = mio, one epoll loop per bot process,
# unless bots use QUIC) BOT_SCHED (batch, the default: the bot processes run under SCHED_BATCH,
# `chrt --batch 0`, so a bot woken by a push does not preempt the gateway writing the next one
# and reads many at once; normal: the default policy, as before) PIN_IO (1: every gateway I/O
# thread pinned to its own core, `server.io_cpus`, as one runs one gateway per core; 0, the
# default: the scheduler places them) OUT (result directory)
# TERN_BIN LOADTEST_BIN.
set -euo pipefail
cd "$(dirname "$0")/../.."

CONNS=${CONNS:-100000}
GATEWAYS=${GATEWAYS:-7}
BOT_PROCS=${BOT_PROCS:-8}
RATE=${RATE:-20000}
HOLD=${HOLD:-60s}
HEARTBEAT=${HEARTBEAT:-30s}
PROBES=${PROBES:-200}
IO_THREADS=${IO_THREADS:-1}
QUIC_PERCENT=${QUIC_PERCENT:-0}
PROBE_RATE=${PROBE_RATE:-20}
GROUP=${GROUP:-0}
BOT_ENGINE=${BOT_ENGINE:-auto}
BOT_SCHED=${BOT_SCHED:-batch}
PIN_IO=${PIN_IO:-0}
OUT=${OUT:-target/density}

if [ -z "${TERN_BIN:-}" ] || [ -z "${LOADTEST_BIN:-}" ]; then
  cargo build --release --locked -p tern -p tern-loadtest
fi
TERN_BIN=${TERN_BIN:-target/release/tern}
LOADTEST_BIN=${LOADTEST_BIN:-target/release/tern-loadtest}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Each process may hold at most the hard file limit (20000 on the development machine).
ulimit -n "$(ulimit -Hn)"
per_gw=$(( CONNS * (100 - QUIC_PERCENT) / 100 / GATEWAYS ))
per_bot=$(( CONNS / BOT_PROCS ))
fd_limit=$(ulimit -n)
if [ $(( per_gw * 105 / 100 + 200 )) -gt "$fd_limit" ] || [ $(( per_bot + 200 )) -gt "$fd_limit" ]; then
  echo "density: $per_gw connections per gateway or $per_bot per bot process do not fit the" \
       "file limit $fd_limit (SO_REUSEPORT spreads unevenly by a few %): raise GATEWAYS/BOT_PROCS" >&2
  exit 2
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port, what
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "density: $2 did not come up on port $1" >&2; exit 1
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { # pids...: user+system clock ticks so far, summed
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat") ))
  done
  echo "$t"
}
steal_ticks() { # the machine's steal time so far (/proc/stat: the hypervisor ran others on our cores)
  awk '$1 == "cpu" {print $9}' /proc/stat
}
metric() { # http port, metric name
  curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'
}

KEY=$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')
PRESENCE=$(free_port); STORE=$(free_port); LINK=$(free_port); CLIENT=$(free_port)
redis-server --port "$PRESENCE" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK" --daemonize no >"$WORK/presence.log" 2>&1 & PIDS+=($!)
redis-server --port "$STORE" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always \
  --dir "$WORK" --daemonize no >"$WORK/store.log" 2>&1 & PIDS+=($!)
wait_port "$PRESENCE" "presence Redis"; wait_port "$STORE" "store Redis"

SECRET=$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')
common=(--set "auth.hs256_key=$KEY" --set "cluster.secret=$SECRET"
        --set "cluster.presence_redis=redis://127.0.0.1:$PRESENCE/"
        --set "server.log=warn" --set "server.data_dir=$WORK")
"$TERN_BIN" dispatch "${common[@]}" --set "cluster.link_listen=127.0.0.1:$LINK" \
  --set store.backend=redis --set "store.redis_url=redis://127.0.0.1:$STORE/" \
  --set "dispatch.max_group_members=$(( CONNS + 10 ))" \
  --set server.http_listen= >"$WORK/dispatch.log" 2>&1 & PIDS+=($!)
wait_port "$LINK" "tern dispatch"

GW_PIDS=(); GW_HTTP=()
for g in $(seq 1 "$GATEWAYS"); do
  http=$(free_port)
  # PIN_IO=1: gateway g's I/O thread t on CPU ((g - 1) * IO_THREADS + t) mod cores.
  cpus=""
  if [ "$PIN_IO" = 1 ]; then
    for t in $(seq 0 $(( IO_THREADS - 1 ))); do
      cpus+="${cpus:+,}$(( ((g - 1) * IO_THREADS + t) % $(nproc) ))"
    done
  fi
  "$TERN_BIN" gateway "${common[@]}" --set "server.listen=127.0.0.1:$CLIENT" \
    --set "server.http_listen=127.0.0.1:$http" --set "server.io_threads=$IO_THREADS" \
    --set "server.io_cpus=$cpus" \
    --set "cluster.dispatch_workers=127.0.0.1:$LINK" --set "cluster.node_id=gw$g" \
    --set server.share_port=true --set "gateway.max_pending_logins=$CONNS" \
    --set "gateway.max_pending_logins_per_source=$CONNS" \
    --set "gateway.max_connections_per_source=$CONNS" --set "gateway.heartbeat_interval=$HEARTBEAT" \
    --set "gateway.quic_max_handshakes=$CONNS" --set "gateway.quic_max_handshakes_per_source=$CONNS" \
    >"$WORK/gw$g.log" 2>&1 & PIDS+=($!); GW_PIDS+=($!); GW_HTTP+=("$http")
  wait_port "$http" "tern gateway $g"
done
wait_port "$CLIENT" "the gateways' client port"
sleep 1

rss_before=0
for p in "${GW_PIDS[@]}"; do rss_before=$(( rss_before + $(rss_kib "$p") )); done
cpu0_gw=$(cpu_ticks "${GW_PIDS[@]}"); cpu0_redis=$(cpu_ticks "${PIDS[0]}")
sock_before=$(awk '/^TCP:/ {print $NF}' /proc/net/sockstat)
slab_before=$(awk '/^Slab:/ {print $2}' /proc/meminfo)

quic_args=()
if [ "$QUIC_PERCENT" -gt 0 ]; then
  quic_args=(--quic-percent "$QUIC_PERCENT" --ca "$WORK/tls/cert.pem")
fi
hold_s=${HOLD%s}
ramp_s=$(( CONNS / RATE + 1 ))
pid_args=(); for p in "${GW_PIDS[@]}"; do pid_args+=(--gateway-pid "$p"); done
echo "density: $CONNS connections ($QUIC_PERCENT % QUIC), $GATEWAYS gateways x $IO_THREADS" \
     "I/O thread(s), $BOT_PROCS bot processes ($BOT_ENGINE engine, $BOT_SCHED policy), $RATE logins/s," \
     "hold $HOLD" >&2
sched=(); [ "$BOT_SCHED" = batch ] && sched=(chrt --batch 0)   # inherited by the bot processes
"${sched[@]}" "$LOADTEST_BIN" swarm --addr "127.0.0.1:$CLIENT" --key "$KEY" --procs "$BOT_PROCS" \
  --count-per-proc "$per_bot" --rate $(( RATE / BOT_PROCS )) --hold "$HOLD" \
  --heartbeat "$HEARTBEAT" --user-prefix dn --engine "$BOT_ENGINE" --max-duration $(( ramp_s + hold_s + 120 ))s \
  --json "$OUT/swarm.json" "${pid_args[@]}" "${quic_args[@]}" >"$OUT/swarm.txt" & SWARM=$!
PIDS+=($SWARM)

# Wait for the ramp: every connection logged in (or the ramp time and then some).
conns_now() {
  local n=0
  for h in "${GW_HTTP[@]}"; do n=$(( n + $(metric "$h" tern_gateway_connections_open || echo 0) )); done
  echo "$n"
}
sleep "$ramp_s"
for _ in $(seq 1 60); do
  [ "$(conns_now)" -ge $(( per_bot * BOT_PROCS )) ] && break
  sleep 1
done
ramp_end=$(date +%s.%N)
cpu1_gw=$(cpu_ticks "${GW_PIDS[@]}"); cpu1_redis=$(cpu_ticks "${PIDS[0]}")
cpu1_bots=$(cpu_ticks $(pgrep -P "$SWARM" || true))
sleep 2
rss_after=0; per_gw_line=""
for i in "${!GW_PIDS[@]}"; do
  r=$(rss_kib "${GW_PIDS[$i]}"); rss_after=$(( rss_after + r ))
  per_gw_line+=" gw$((i + 1))=$(metric "${GW_HTTP[$i]}" tern_gateway_connections_open)"
done
held=$(conns_now)
sock_after=$(awk '/^TCP:/ {print $NF}' /proc/net/sockstat)
slab_after=$(awk '/^Slab:/ {print $2}' /proc/meminfo)

# The probe: messages to random bots (GROUP=1: to one group of all of them) while they are held
# idle. Every server process's CPU is read around it.
group_args=(); [ "$GROUP" = 1 ] && group_args=(--group)
SERVER_PIDS=("${PIDS[@]}")
frames0=0
for h in "${GW_HTTP[@]}"; do frames0=$(( frames0 + $(metric "$h" tern_gateway_frames_out_total || echo 0) )); done
BOT_PIDS=($(pgrep -P "$SWARM" || true))
cpu_probe0=$(cpu_ticks "${SERVER_PIDS[@]}"); cpu_gw_probe0=$(cpu_ticks "${GW_PIDS[@]}"); cpu_bots0=$(cpu_ticks "${BOT_PIDS[@]}")
steal0=$(steal_ticks)
timeout $(( hold_s + 30 )) "$LOADTEST_BIN" probe --addr "127.0.0.1:$CLIENT" --key "$KEY" \
  --user-prefix dn --procs "$BOT_PROCS" --users "$per_bot" --count "$PROBES" --rate "$PROBE_RATE" \
  --quiet "${group_args[@]}" --json "$OUT/probe.json" >"$OUT/probe.txt" \
  || echo "density: the probe failed" >&2
if [ "$GROUP" = 1 ]; then
  # The probe ends at its last ack; the fan-out goes on. Count the server's CPU until every
  # gateway has handed out every delivery (frames out; nothing left queued), at most 120 s.
  want=$(( frames0 + PROBES * per_bot * BOT_PROCS ))
  for _ in $(seq 1 600); do
    out=0; queued=0
    for h in "${GW_HTTP[@]}"; do
      out=$(( out + $(metric "$h" tern_gateway_frames_out_total || echo 0) ))
      queued=$(( queued + $(metric "$h" tern_gateway_outbound_queued_bytes || echo 0) ))
    done
    [ "$out" -ge "$want" ] && [ "$queued" -eq 0 ] && break
    sleep 0.2
  done
fi
cpu_probe1=$(cpu_ticks "${SERVER_PIDS[@]}"); cpu_gw_probe1=$(cpu_ticks "${GW_PIDS[@]}"); steal1=$(steal_ticks)
# The bots may still be reading what the gateways wrote last: one more second for them.
sleep 1; cpu_bots1=$(cpu_ticks "${BOT_PIDS[@]}")

held_end=$(conns_now)
rss_end=0
for p in "${GW_PIDS[@]}"; do rss_end=$(( rss_end + $(rss_kib "$p") )); done
wait "$SWARM" || echo "density: the swarm exited with an error" >&2
page_kib=$(( $(getconf PAGESIZE) / 1024 ))
{
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
  echo "transport: $QUIC_PERCENT % of the bots on QUIC, the rest on TCP"
  echo "connections logged in after the ramp: $held (per gateway:$per_gw_line); after the probe: $held_end"
  echo "gateway user-space RSS: before $((rss_before / 1024)) MiB, after $((rss_after / 1024)) MiB," \
       "per connection $(( (rss_after - rss_before) * 1024 / (held > 0 ? held : 1) )) B;" \
       "after the probe $((rss_end / 1024)) MiB, $(( (rss_end - rss_before) * 1024 / (held_end > 0 ? held_end : 1) )) B per connection"
  retries=0; refused=0
  for h in "${GW_HTTP[@]}"; do
    r=$(metric "$h" tern_gateway_quic_retries_total); retries=$(( retries + ${r:-0} ))
    r=$(metric "$h" tern_gateway_quic_handshakes_refused_total); refused=$(( refused + ${r:-0} ))
  done
  echo "QUIC handshakes: $retries sent through a Retry, $refused refused (gateway metrics)"
  echo "kernel TCP memory (sockstat, both ends): +$(( (sock_after - sock_before) * page_kib / 1024 )) MiB;" \
       "slab +$(( (slab_after - slab_before) / 1024 )) MiB"
  tck=$(getconf CLK_TCK)
  secs() { awk -v t="$1" -v h="$tck" 'BEGIN { printf "%.1f", t / h }'; }
  echo "CPU seconds from start to ramp end: gateways $(secs $(( cpu1_gw - cpu0_gw )))," \
       "presence Redis $(secs $(( cpu1_redis - cpu0_redis ))), bots $(secs "$cpu1_bots");" \
       "gateway CPU per login $(( (cpu1_gw - cpu0_gw) * 1000000 / tck / (held > 0 ? held : 1) )) us"
  probe_secs=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["duration_secs"])' "$OUT/probe.json" 2>/dev/null || echo 0)
  echo "server CPU during the probe (gateways, dispatch, both Redis): $(secs $(( cpu_probe1 - cpu_probe0 ))) s over ${probe_secs} s," \
       "of it the gateways $(secs $(( cpu_gw_probe1 - cpu_gw_probe0 ))) s"
  # A VM's cores are shared with other guests: time the hypervisor gave away shows up as steal
  # and makes every figure of the run slower (compare runs only with little steal).
  echo "host steal time during the probe: $(secs $(( steal1 - steal0 ))) s over all $(nproc) cores"
  # Bot CPU per Deliver frame received (probes, and the group's own system messages when
  # GROUP=1: the probe adds the members in chunks and each chunk's notice goes to the group).
  python3 - "$OUT/swarm.json" "$(( cpu_bots1 - cpu_bots0 ))" "$tck" "$BOT_ENGINE" "$BOT_SCHED" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
n = d.get("deliveries", 0)
cpu = int(sys.argv[2]) / int(sys.argv[3])
per = f" = {cpu * 1e6 / n:.2f} us per delivery ({n:,} Deliver frames)" if n else ""
print(f"bot CPU during the probe ({sys.argv[4]} engine, {sys.argv[5]} policy, every bot process): {cpu:.2f} s{per}")
PY
  if [ "$GROUP" = 1 ]; then
    # Throughput from the bots' own stamps: first probe sent -> last member received the last.
    python3 - "$OUT/swarm.json" "$(( cpu_probe1 - cpu_probe0 ))" "$tck" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
last = {int(k) // 1000: v for k, v in d.get("probe_last_us", {}).items()}
n = d.get("delivery_latency", {}).get("n", 0)
if last and n:
    span = (max(s + l for s, l in last.items()) - min(last)) / 1e6
    cpu = int(sys.argv[2]) / int(sys.argv[3])
    print(f"group fan-out: {n} probe deliveries in {span:.2f} s (first send -> last receipt) ="
          f" {n / span:,.0f} deliveries/s; server CPU {cpu:.1f} s = {cpu * 1e6 / n:.2f} ms per 1,000 deliveries")
PY
  fi
  echo "--- swarm ---"; cat "$OUT/swarm.txt"
  echo "--- probe ---"; cat "$OUT/probe.txt" 2>/dev/null || true
} | tee "$OUT/summary.txt"
