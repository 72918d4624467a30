#!/usr/bin/env bash
# The sidecar's idle CPU with and without 5,000 unrelated established TCP sockets in its network
# namespace, in one run: a local cluster, the release binary counting the pod's connections every
# 2 s (PROBE_POOL_INTERVAL=2s), CPU ticks (utime + stime of /proc/<pid>/stat) over DUR seconds
# each way. The kernel filters the socket dump to the nodes' addresses (netlink sock_diag), so
# the unrelated sockets should not show.
#   benches/sockets.sh            (DUR=60 by default; SKIP_BUILD=1 to use the built binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
DUR=${DUR:-60}
[ "${SKIP_BUILD:-}" = 1 ] || { cargo build --release -q; cargo build --release -q --example local_cluster; }
work=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
target/release/examples/local_cluster --cluster-only > "$work/cluster.log" 2>&1 &
until_true 120 "the local cluster" grep -q "^Sidecar settings:" "$work/cluster.log"
envfile=$(sed -n 's/^Sidecar settings: //p' "$work/cluster.log")
env -i $(cat "$envfile") PROBE_LISTEN=127.0.0.1:18095 PROBE_POOL_INTERVAL=2s PROBE_IDLE_CANARY=0 \
  REDIS_POOL_SIZE=10 target/release/redis-probe > "$work/sidecar.log" 2>&1 &
pid=$!
ready localhost:18095/readyz
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
measure() {
  local a b; a=$(ticks); sleep "$DUR"; b=$(ticks); echo $((b - a))
}
sleep 5
none=$(measure)
python3 - "$work/ready" <<'PY' &
import socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4096)
keep = []
for _ in range(2500):
    c = socket.create_connection(srv.getsockname()); s, _ = srv.accept(); keep += [c, s]
open(sys.argv[1], "w").write("ready")
time.sleep(3600)
PY
until_true 40 "the app stand-in" test -f "$work/ready"
established=$(ss -Htn state established | wc -l)
with=$(measure)
echo "established TCP sockets in the namespace during the second window: $established"
echo "sidecar CPU over ${DUR}s, pool counted every 2 s: ${none} ticks with no unrelated sockets, ${with} ticks with 5,000"
awk -v a="$none" -v b="$with" 'BEGIN { if (a > 0) printf "ratio: %.2fx\n", b / a }'
