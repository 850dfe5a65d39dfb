#!/usr/bin/env bash
# The group chat benchmark (issue 11): GROUP_COUNT groups of SIZE members (default 20 x 100, every
# member one raw connection of `tern-loadtest pairs --group-size`), every member sending its
# share of RATE msg/s to its group and receiving the others' messages, with receipts like a
# real client (PROTOCOL.md section 11): per member, DELIVERED and READ (the chat is open) for
# the highest seq seen, each kind at most one in flight and one per RECEIPT_INTERVAL. In groups
# of at most `dispatch.receipt_push_max_members` (100) every moved watermark is pushed to every
# member; those pushes are counted. Two runs against a server started here (msg_path.sh does
# the servers): the fixed rate RATE (open loop) and saturation (WINDOW sends in flight per
# member). Each reports send->ack, send->deliver (every delivery, and the last member per
# message) p50/p99/p99.9, deliveries/s, receipts/s, and the server's CPU seconds per 100k
# messages and per 100k deliveries (/proc, every server process).
#
#   loadtest/scripts/group_chat.sh                     # tern serve (redb, fsync on)
#   MODE=distributed loadtest/scripts/group_chat.sh    # 2 gateways, 2 workers, presence + store Redis
#   GROUP_COUNT=10 SIZE=100 RATE=200 DURATION=10s loadtest/scripts/group_chat.sh
#
# Settings (environment): MODE GROUP_COUNT SIZE RATE WINDOW RECEIPT_INTERVAL READ (1; 0 = DELIVERED
# only) BODY WARMUP DURATION GATEWAYS WORKERS OUT TERN_BIN LOADTEST_BIN (see msg_path.sh).
# Results: OUT/<mode>-group-{rate,saturation}.{txt,json}, OUT/<mode>-group-summary.txt (the tables), OUT/<mode>-group-figures.txt. Bounded:
# every run has --max-duration and a timeout; every process started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

export MODE=${MODE:-embedded}
GROUP_COUNT=${GROUP_COUNT:-20}
SIZE=${SIZE:-100}
export RATE=${RATE:-2000}
export WINDOW=${WINDOW:-1}
RECEIPT_INTERVAL=${RECEIPT_INTERVAL:-1s}
READ=${READ:-1}
export OUT=${OUT:-target/group_chat}
export PAIRS=$GROUP_COUNT TAG=$MODE-group
PAIRS_ARGS="--group-size $SIZE --receipt-interval $RECEIPT_INTERVAL --login-timeout 60s"
if [ "$READ" = 0 ]; then PAIRS_ARGS+=" --no-read"; fi
export PAIRS_ARGS
# Every member logs in at once from one address (the default allows 1,000 pending per source).
export SERVER_SETS="gateway.max_pending_logins_per_source=100000 gateway.max_connections_per_source=100000"

# 2 x GROUP_COUNT x SIZE sockets (client and server side) need more than the usual 1024 fds.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
loadtest/scripts/msg_path.sh

python3 - "$OUT/$TAG-rate.json" "$OUT/$TAG-saturation.json" <<'PY' | tee "$OUT/$TAG-figures.txt"
import json, os, sys
ms = lambda us: us / 1000
print(f"machine: {os.cpu_count()} cores, load average {open('/proc/loadavg').read().split()[:3]}")
for path in sys.argv[1:3]:
    try:
        r = json.load(open(path))
    except (OSError, ValueError) as e:
        print(f"{path}: no report ({e})")
        continue
    c, a, d, l = r["cpu"], r["ack_latency_us"], r["deliver_latency_us"], r["deliver_last_latency_us"] or {}
    load = f"{r['target_rate']:.0f} msg/s" if r["mode"] == "rate" else f"saturation ({r['window']} in flight per member)"
    print(f"--- {load}, {r['pairs']} groups x {r['group_size']}, receipts"
          f" {'DELIVERED+READ' if r['read_receipts'] else 'DELIVERED'} every {r['receipt_interval_secs']} s ---")
    print(f"  sent / persisted {r['sent_per_sec']:.0f} / {r['persisted_per_sec']:.0f} msg/s,"
          f" deliveries {r['delivered_per_sec']:.0f}/s, receipts {r['receipts_per_sec']:.0f}/s,"
          f" receipt pushes {r['receipt_pushes_per_sec']:.0f}/s")
    print(f"  send->ack p50/p99/p99.9 {ms(a['p50']):.2f} / {ms(a['p99']):.2f} / {ms(a['p999']):.2f} ms")
    print(f"  send->deliver (all) p50/p99/p99.9 {ms(d['p50']):.2f} / {ms(d['p99']):.2f} / {ms(d['p999']):.2f} ms")
    if l:
        print(f"  send->last member p50/p99/p99.9 {ms(l['p50']):.2f} / {ms(l['p99']):.2f} / {ms(l['p999']):.2f} ms (n={l['n']})")
    print(f"  server CPU-s per 100k msgs {c['server_cpu_secs_per_100k'] or 0:.1f},"
          f" per 100k deliveries {c['server_cpu_secs_per_100k_deliveries'] or 0:.2f}"
          f" ({c['server_cpu_secs']:.1f} CPU-s over {r['window_secs']:.1f} s);"
          f" load generator {c['loadgen_cpu_secs']:.1f} CPU-s; machine {c['machine_busy_fraction'] or 0:.0%} busy")
    flags = [k for k, bad in [("client fell behind its schedule", not r["kept_up"]),
                              ("drain ran out", not r["drained"]),
                              (f"undelivered {r['undelivered']}", r["undelivered"]),
                              (f"failures {r['failures']}", r["failures"]),
                              (f"send errors {r['send_errors']}", r["send_errors"]),
                              (f"receipt errors {r['receipt_errors']}", r["receipt_errors"])] if bad]
    if flags:
        print("  WARNING: " + "; ".join(flags))
PY
