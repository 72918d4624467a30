#!/usr/bin/env bash
# Load and peer comparison, in one run on one machine against one local TLS + AUTH cluster:
# - wrk on redis-probe's /readyz and /metrics, and on a bare hyper hello-world (the baseline);
# - redis_exporter (Debian prometheus-redis-exporter) scraped the same way;
# - the cost of a `redis-cli --tls ping` exec probe;
# - RSS, CPU per request, and new Redis connections per scrape (INFO stats
#   total_connections_received summed over the nodes, before and after).
#
#   benches/load.sh            # 10 s per wrk run, 3 runs each, medians reported
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
DUR=${DUR:-10s}
RUNS=${RUNS:-3}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
command -v prometheus-redis-exporter >/dev/null || { echo "apt-get install prometheus-redis-exporter" >&2; exit 1; }
scripts/install-deps
# The binary on its own, so it is the one that ships (built with the examples it would get the
# dev-dependencies' tokio features).
cargo build -q --release --bin redis-probe
cargo build -q --release --example hello_hyper --example local_cluster

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

target/release/examples/local_cluster --cluster-only > "$work/cluster.log" 2>&1 &
pids+=($!)
until_true 120 "the local cluster" grep -q "Cluster only" "$work/cluster.log"
envf=$(grep -o '/tmp/[^ ]*redis-probe.env' "$work/cluster.log" | head -1)
set -a; . "$envf"; set +a
first=${REDIS_ADDRESS}
ports=$(grep -o 'Cluster up: .*' "$work/cluster.log" | tr ' ' '\n' | grep -o ':[0-9]*$' | tr -d ':')
cli() { redis-cli --tls --cacert "$REDIS_TLS_CA_FILE" -a "$REDIS_PASSWORD" --no-auth-warning -h 127.0.0.1 -p "$1" "${@:2}"; }
nodes=$(echo "$ports" | wc -w)
# Each call opens one redis-cli connection per node, which the counter includes: callers
# subtract $nodes for the call that ends a measurement.
received() { local t=0; for p in $ports; do t=$((t + $(cli "$p" INFO stats | tr -d '\r' | awk -F: '/^total_connections_received/{print $2}'))); done; echo $t; }
# Redis CPU seconds (user + sys) summed over the nodes.
redis_cpu() { local t=0; for p in $ports; do t=$(cli "$p" INFO cpu | tr -d '\r' | awk -F: -v t="$t" '/^used_cpu_(sys|user):/{t+=$2} END{print t}'); done; echo $t; }
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }   # clock ticks (1/100 s)

PROBE_LISTEN=127.0.0.1:18081 PROBE_LOG_LEVEL=warn target/release/redis-probe > "$work/probe.log" 2>&1 &
probe=$!; pids+=($probe)
target/release/examples/hello_hyper 127.0.0.1:18090 &
hello=$!; pids+=($hello)
prometheus-redis-exporter -redis.addr "rediss://$first" -redis.password "$REDIS_PASSWORD" \
  -tls-ca-cert-file "$REDIS_TLS_CA_FILE" -is-cluster -web.listen-address 127.0.0.1:19121 > "$work/exporter.log" 2>&1 &
exporter=$!; pids+=($exporter)
ready localhost:18081/readyz
sleep 6

median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
# wrk: requests/s, p50 ms, p99 ms
bench() {
  local url=$1 rps=() p50=() p99=()
  for _ in $(seq 1 "$RUNS"); do
    out=$(wrk_checked -t2 -c4 -d"$DUR" --latency "$url")
    rps+=("$(echo "$out" | awk '/Requests\/sec/{print $2}')")
    p50+=("$(echo "$out" | awk '$1=="50%"{print $2}')")
    p99+=("$(echo "$out" | awk '$1=="99%"{print $2}')")
  done
  to_ms() { sed -E 's/([0-9.]+)us/\1 0.001/; s/([0-9.]+)ms/\1 1/; s/([0-9.]+)s$/\1 1000/' | awk '{printf "%.3f\n", $1*$2}'; }
  echo "$(printf '%s\n' "${rps[@]}" | median) $(printf '%s\n' "${p50[@]}" | to_ms | median) $(printf '%s\n' "${p99[@]}" | to_ms | median)"
}

echo "machine: $(nproc) cores, $(awk '/model name/{$1=$2=$3=""; print; exit}' /proc/cpuinfo)"
rss_probe_idle=$(rss $probe); rss_exp_idle=$(rss $exporter)
bench http://127.0.0.1:18090/ > "$work/bench"; read -r h_rps h50 h99 < "$work/bench"
c0=$(cpu $probe); r0=$(received); rc0=$(redis_cpu)
bench http://127.0.0.1:18081/readyz > "$work/bench"; read -r r_rps r50 r99 < "$work/bench"
bench http://127.0.0.1:18081/metrics > "$work/bench"; read -r m_rps m50 m99 < "$work/bench"
c1=$(cpu $probe); r1=$(received); rc1=$(redis_cpu)
rss_probe_load=$(rss $probe)
e0=$(cpu $exporter); x0=$(received); ec0=$(redis_cpu)
DUR=${EXPORTER_DUR:-5s} bench http://127.0.0.1:19121/metrics > "$work/bench"; read -r e_rps e50 e99 < "$work/bench"
e1=$(cpu $exporter); x1=$(received); ec1=$(redis_cpu)
rss_exp_load=$(rss $exporter)
probe_reqs=$(awk -v a="$r_rps" -v b="$m_rps" -v d="${DUR%s}" -v n="$RUNS" 'BEGIN{print (a+b)*d*n}')
exp_reqs=$(awk -v a="$e_rps" -v d="${EXPORTER_DUR:-5s}" -v n="$RUNS" 'BEGIN{sub("s","",d); print a*d*n}')

# redis-cli --tls ping, as an exec probe would run it.
t0=$(date +%s.%N); x2=$(received)
for _ in $(seq 1 50); do cli "${first##*:}" PING >/dev/null; done
t1=$(date +%s.%N); x3=$(received)
cli_ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b-a)*1000/50}')

printf '\n| server | endpoint | req/s | p50 ms | p99 ms | vs hello-world req/s |\n|---|---|---|---|---|---|\n'
printf '| hyper hello-world | / | %s | %s | %s | 1.00 |\n' "$h_rps" "$h50" "$h99"
printf '| redis-probe | /readyz | %s | %s | %s | %.2f |\n' "$r_rps" "$r50" "$r99" "$(awk -v a="$r_rps" -v b="$h_rps" 'BEGIN{print a/b}')"
printf '| redis-probe | /metrics | %s | %s | %s | %.2f |\n' "$m_rps" "$m50" "$m99" "$(awk -v a="$m_rps" -v b="$h_rps" 'BEGIN{print a/b}')"
printf '| redis_exporter | /metrics | %s | %s | %s | %.3f |\n' "$e_rps" "$e50" "$e99" "$(awk -v a="$e_rps" -v b="$h_rps" 'BEGIN{print a/b}')"
printf '\n| | redis-probe | redis_exporter | redis-cli --tls ping |\n|---|---|---|---|\n'
printf '| RSS idle / after load (KiB) | %s / %s | %s / %s | - |\n' "$rss_probe_idle" "$rss_probe_load" "$rss_exp_idle" "$rss_exp_load"
printf '| CPU per request (us) | %.1f | %.1f | - |\n' "$(awk -v c="$((c1-c0))" -v n="$probe_reqs" 'BEGIN{print c*10000/n}')" "$(awk -v c="$((e1-e0))" -v n="$exp_reqs" 'BEGIN{print c*10000/n}')"
# For redis-probe the Redis CPU in its window is its background loop's, spread over the requests.
printf '| Redis CPU per request (us) | %.2f | %.1f | - |\n' "$(awk -v a="$rc0" -v b="$rc1" -v n="$probe_reqs" 'BEGIN{print (b-a)*1e6/n}')" "$(awk -v a="$ec0" -v b="$ec1" -v n="$exp_reqs" 'BEGIN{print (b-a)*1e6/n}')"
printf '| new Redis connections per request | %.4f | %.2f | %.2f |\n' "$(awk -v c="$((r1-r0-nodes))" -v n="$probe_reqs" 'BEGIN{print c/n}')" "$(awk -v c="$((x1-x0-nodes))" -v n="$exp_reqs" 'BEGIN{print c/n}')" "$(awk -v c="$((x3-x2-nodes))" 'BEGIN{print c/50}')"
printf '| /metrics throughput vs redis_exporter | %.0fx | 1x | - |\n' "$(awk -v a="$m_rps" -v b="$e_rps" 'BEGIN{print a/b}')"
printf '| wall time per probe (ms) | %s (p50 of /readyz) | - | %s |\n' "$r50" "$cli_ms"
