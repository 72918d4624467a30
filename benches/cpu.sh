#!/usr/bin/env bash
# CPU per request, and probes under a 100m CPU limit, against one local TLS + AUTH cluster:
# 1. CPU per request: /readyz of the release binary beside a hyper 1 hello-world built at
#    opt-level 3 (its own target dir). Both servers are pinned to CPU 1 and wrk -t1 -c8 to
#    CPU 0, runs alternate, and each run reads the server's CPU time (utime + stime) before and
#    after: microseconds of CPU per request, whoever is the bottleneck. Median of $RUNS runs of
#    $DUR; the ratio is hello-world's CPU per request over redis-probe's (1.00 = as cheap),
#    taken per pair of neighbouring runs, median;
# 2. the binary in a cgroup limited to 10 % of a core (v1 cpu.cfs_quota_us, or v2 cpu.max;
#    it finds the limit and paces /metrics to 100 scrapes/s),
#    probed as the kubelet does (a new connection, Connection: close, 1 s timeout) 10 times a
#    second: idle, then while wrk hammers /metrics. Prints p50, p99, max and failures.
#
#   sudo benches/cpu.sh        # root: it makes and removes a cgroup
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
DUR=${DUR:-10s}
RUNS=${RUNS:-3}
PROBES=${PROBES:-300}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is needed: apt-get install curl" >&2; exit 1; }
# SKIP_BUILD=1 uses the binaries already built.
if [ -z "${SKIP_BUILD:-}" ]; then
  scripts/install-deps
  # The binary on its own: built with the examples, cargo would give it the dev-dependencies'
  # features (tokio's test-util and process), and it would not be the binary that ships.
  cargo build -q --release --bin redis-probe
  cargo build -q --release --example local_cluster
  CARGO_TARGET_DIR=${O3_TARGET:-target/o3} CARGO_PROFILE_RELEASE_OPT_LEVEL=3 \
    cargo build -q --release --example hello_hyper
fi
hello_bin=${O3_TARGET:-target/o3}/release/examples/hello_hyper

work=$(mktemp -d)
pids=()
cg=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$cg" ] && [ -d "$cg" ]; then
    # Move anything left back to the root group before removing ours.
    while read -r p; do echo "$p" > "$(dirname "$cg")/cgroup.procs" 2>/dev/null || true; done < "$cg/cgroup.procs" 2>/dev/null
    rmdir "$cg" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

target/release/examples/local_cluster --cluster-only > "$work/cluster.log" 2>&1 &
pids+=($!)
until_true 120 "the local cluster" grep -q "Cluster only" "$work/cluster.log"
envf=$(grep -o '/tmp/[^ ]*redis-probe.env' "$work/cluster.log" | head -1)

median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
[ "$(nproc)" -ge 2 ] || { echo "two CPUs are needed (servers on one, wrk on the other)" >&2; exit 1; }
# "req/s cpu_us_per_request" of one wrk run against the server $1 (a pid) at $2.
cpu_per_request() {
  local pid=$1 url=$2 t0 t1
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  WRK="taskset -c 0 wrk" wrk_checked -t1 -c8 -d"$DUR" "$url" > "$work/wrk.run"
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  awk -v ticks=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" \
    '/requests in/{n=$1} /Requests\/sec/{r=$2} END{printf "%s %.2f\n", r, ticks / hz * 1e6 / n}' "$work/wrk.run"
}

# 1. CPU per request against the hello-world.
env -i $(cat "$envf") PROBE_LISTEN=127.0.0.1:18081 PROBE_LOG_LEVEL=warn taskset -c 1 target/release/redis-probe > "$work/probe.log" 2>&1 &
probe=$!; pids+=($probe)
taskset -c 1 "$hello_bin" 127.0.0.1:18090 > /dev/null 2>&1 &
hello=$!; pids+=($hello)
ready localhost:18081/readyz
: > "$work/hello"; : > "$work/readyz"
for _ in $(seq 1 "$RUNS"); do
  cpu_per_request "$hello" http://127.0.0.1:18090/ >> "$work/hello"
  cpu_per_request "$probe" http://127.0.0.1:18081/readyz >> "$work/readyz"
done
col() { awk -v c="$1" '{print $c}' "$2" | median; }
hr=$(col 1 "$work/hello"); hc=$(col 2 "$work/hello"); rr=$(col 1 "$work/readyz"); rc=$(col 2 "$work/readyz")
echo "machine: $(nproc) cores; release binary $(stat -c %s target/release/redis-probe) bytes"
echo "runs (req/s, CPU us per request): hello-world $(paste -sd';' "$work/hello"); /readyz $(paste -sd';' "$work/readyz")"
printf '\n| wrk -t1 -c8 on CPU 0, server on CPU 1, median of %s x %s | req/s | CPU us per request | vs hello-world |\n|---|---|---|---|\n' "$RUNS" "$DUR"
printf '| hyper hello-world, opt-level 3 | %s | %s | 1.00 |\n' "$hr" "$hc"
# The ratio of each pair of runs next to each other (the machine's speed drifts), median.
ratio=$(paste -d' ' "$work/hello" "$work/readyz" | awk '{printf "%.3f\n", $2 / $4}' | median)
printf '| redis-probe /readyz, release profile | %s | %s | %.2f (median of the paired runs) |\n' "$rr" "$rc" "$ratio"

# 2. The same binary under a 100m limit.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  cg=/sys/fs/cgroup/redis-probe-bench-$$; mkdir "$cg"; echo "10000 100000" > "$cg/cpu.max"
else
  cg=/sys/fs/cgroup/cpu/redis-probe-bench-$$; mkdir "$cg"
  echo 100000 > "$cg/cpu.cfs_period_us"; echo 10000 > "$cg/cpu.cfs_quota_us"
fi
echo "$probe" > "$cg/cgroup.procs"
# The sidecar reads its limit every 5 s (redis_probe_cpu_limit_cores) and paces /metrics to it.
for _ in $(seq 1 100); do
  curl -s localhost:18081/metrics | grep -q '^redis_probe_cpu_limit_cores 0.1$' && break; sleep 0.2
done
curl -s localhost:18081/metrics | grep -q '^redis_probe_cpu_limit_cores 0.1$' ||
  { echo "the sidecar did not find its 100m limit" >&2; exit 1; }
# Times of $PROBES kubelet-style probes, 10 a second: "ms" lines, or "fail".
probes() {
  for _ in $(seq 1 "$PROBES"); do
    out=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' -H 'Connection: close' -H 'User-Agent: kube-probe/1.33' --max-time 1 "http://127.0.0.1:18081$1" || true)
    case "$out" in
      "200 "*) awk -v t="${out#200 }" 'BEGIN{printf "%.2f\n", t*1000}' ;;
      *) echo fail ;;
    esac
    sleep 0.1
  done
}
summary() {
  local f=$1 fails ok
  fails=$(grep -c fail "$f" || true); grep -v fail "$f" | sort -n > "$f.ok"; ok=$(wc -l < "$f.ok")
  at() { sed -n "$(awk -v n="$ok" -v q="$1" 'BEGIN{i=int(n*q); if (i<1) i=1; print i}')p" "$f.ok"; }
  echo "$((ok + fails)) | $fails | $(at 0.5) | $(at 0.99) | $(tail -1 "$f.ok")"
}
probes /readyz > "$work/idle"
taskset -c 0 wrk -t2 -c8 -d$((PROBES / 10 + 5))s http://127.0.0.1:18081/metrics > "$work/wrk.out" &
wrkpid=$!; pids+=($wrkpid)
sleep 1
cpu0=$(awk '{print $14 + $15}' "/proc/$probe/stat"); t0=$(date +%s.%N)
probes /readyz > "$work/hammered"
cpu1=$(awk '{print $14 + $15}' "/proc/$probe/stat"); t1=$(date +%s.%N)
wait "$wrkpid" || true
wrk_verdict "$work/wrk.out"
scrapes=$(awk '/Requests\/sec/{print $2}' "$work/wrk.out")
share=$(awk -v c=$((cpu1 - cpu0)) -v hz="$(getconf CLK_TCK)" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", c / hz / (b - a) / 0.1 * 100}')
printf '\n| 100m CPU limit, /readyz probes (new connection, 1 s timeout) | probes | failed | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n'
printf '| idle | %s |\n' "$(summary "$work/idle")"
printf '| wrk -t2 -c8 on /metrics (%s scrapes/s served; the sidecar used %s %% of its limit) | %s |\n' "$scrapes" "$share" "$(summary "$work/hammered")"
