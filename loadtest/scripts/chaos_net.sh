#!/usr/bin/env bash
# The network chaos suite at a larger scale (issue 10): runs `server/tests/e2e/net_chaos.rs`
# (QUIC through the UDP chaos proxy: 10 % loss, duplicates, reordering, 100-300 ms delay
# spikes, NAT rebinding every 2 s, client-side `network_changed()`; TCP through the chaos
# proxy: resets and blackholes) with more users and messages, over several seeds.
#
#   loadtest/scripts/chaos_net.sh                    # CHAOS_SCALE=10, seeds 1..5
#   CHAOS_SCALE=30 SEEDS="7 8" loadtest/scripts/chaos_net.sh
#   FILTER=quic loadtest/scripts/chaos_net.sh        # only the QUIC run
#
# CHAOS_SCALE=n runs 2+n users with two devices each and 300*n acked messages under chaos
# (CI runs n=1, seed 7). Each run prints the proxy's report of what it injected; a failure
# stops the script with the seed that failed (replay it with SEEDS=<seed>).
set -euo pipefail
cd "$(dirname "$0")/../.."

export CHAOS_SCALE=${CHAOS_SCALE:-10}
SEEDS=${SEEDS:-"1 2 3 4 5"}
FILTER=${FILTER:-}

for seed in $SEEDS; do
    echo "== CHAOS_SCALE=$CHAOS_SCALE CHAOS_SEED=$seed"
    CHAOS_SEED=$seed nice -n 19 cargo nextest run --build-jobs 1 \
        -p tern-gateway -p tern-proto -p tern -p tern-sdk -p tern-testkit \
        -E "binary(e2e) & test(net_chaos) & test(/${FILTER}/)" --no-capture \
        || { echo "FAILED with CHAOS_SEED=$seed"; exit 1; }
done
