# Shared by the bench scripts (sourced): waits that fail after their deadline, and a wrk run
# that fails when any answer was not 2xx, so no figure comes from a broken run.

# until_true SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds; exits 1
# naming WHAT after SECONDS.
until_true() {
  local limit=$1 what=$2 end
  shift 2
  end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$end" ]; then
      echo "bench: $what not seen in ${limit}s" >&2
      exit 1
    fi
    sleep 0.2
  done
}

# ready URL: waits (60 s at most) until URL answers 200.
ready() { until_true 60 "200 from $1" curl -sf -o /dev/null "$1"; }

# wrk_checked ARGS...: wrk's output, or exit 1 when it reports non-2xx answers or timeouts.
# $WRK, when set, is the command (e.g. "taskset -c 0 wrk").
wrk_checked() {
  local out
  out=$(${WRK:-wrk} "$@")
  if echo "$out" | grep -q "Non-2xx or 3xx responses"; then
    echo "bench: non-2xx answers in wrk $*:" >&2
    echo "$out" >&2
    exit 1
  fi
  if echo "$out" | grep -q "Socket errors:.*timeout [1-9]"; then
    echo "bench: timeouts in wrk $*:" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "$out"
}

# wrk_verdict FILE: exit 1 when the wrk output in FILE reports non-2xx answers.
wrk_verdict() {
  if grep -q "Non-2xx or 3xx responses" "$1"; then
    echo "bench: non-2xx answers:" >&2
    cat "$1" >&2
    exit 1
  fi
}
