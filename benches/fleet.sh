#!/usr/bin/env bash
# Fleet simulation (examples/fleet.rs): N redis-probe processes started at once against one
# local TLS + AUTH cluster, as N pods would run them. Reports the connections and Redis CPU they
# add, the commands each node receives, PING arrivals per 100 ms with and without jitter, and the
# reconnection after a full outage with and without the open-duration backoff.
#
#   benches/fleet.sh                # N=100, 3 runs, outage held 90 s: about 25 minutes
#   benches/fleet.sh 50 1 60        # N, runs, outage hold in seconds
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps
cargo build -q --release --bin redis-probe --example fleet
exec target/release/examples/fleet "${1:-100}" "${2:-3}" "${3:-90}"
