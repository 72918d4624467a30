#!/usr/bin/env bash
# benches/image_start.sh ENV_FILE [RUNS]
#
# Time from `podman run` to the first 200 from /readyz, for the release image, against the
# cluster whose settings ENV_FILE holds (scripts/run-local --cluster-only prints it; make its
# directory readable by 65532). Builds the image first (scripts/image, storage of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
env_file=$1
runs=${2:-8}
root=$(mktemp -d)
P=(podman --root "$root" --runroot "$root/run" --storage-driver vfs)
trap '"${P[@]}" rm -f --all >/dev/null 2>&1; rm -rf "$root"' EXIT
scripts/image --root "$root" >/dev/null
set -a
. "$env_file"
set +a
export PROBE_LISTEN=127.0.0.1:18081
dir=$(dirname "$env_file")
for run in $(seq "$runs"); do
  start=$(date +%s%N)
  "${P[@]}" run -d --rm --name "start$run" --runtime runc --ulimit nofile=4096:4096 \
    --ulimit nproc=4096:4096 --network host --read-only --user 65532:65532 --cap-drop ALL \
    --security-opt no-new-privileges -v "$dir:$dir:ro" --env 'REDIS_*' --env 'PROBE_*' \
    "localhost/redis-probe:$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)" >/dev/null
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$PROBE_LISTEN/readyz")" = 200 ]; do
    sleep 0.01
  done
  echo "run $run: $(( ($(date +%s%N) - start) / 1000000 )) ms"
  "${P[@]}" stop -t 5 "start$run" >/dev/null
  sleep 1
done
