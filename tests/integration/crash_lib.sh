# shellcheck shell=bash
# tests/integration/crash_lib.sh - what the crash loops share (test_crash.sh, test_crash_calls.sh,
# test_crash_deliveries.sh). Source it after lib.sh, with `work` set and BROKER the broker binary;
# the script defines track(), which puts the processes alive now into `pids`.
# Sets `uri` (a free loopback port, kept across restarts), `broker_pid` and `starts`.
# CRASH_LOG_LEVEL (default warn) is the broker's --log-level, e.g. info to see each connection go.

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
uri=tcp://127.0.0.1:$port
broker_pid="" starts=0

# start_broker: a broker on the same port and data directory; waits for its "ready" line.
start_broker() {
  starts=$((starts + 1))
  # shellcheck disable=SC2154 # work: the sourcing script
  local out=$work/broker-$starts.out
  "$BROKER" --listen "$uri" --insecure-plain-identities --data "$work/data" --log-level "${CRASH_LOG_LEVEL:-warn}" \
    >"$out" 2>>"$work/broker.log" &
  broker_pid=$!
  track
  for _ in $(seq 300); do
    grep -qx ready "$out" 2>/dev/null && return 0
    if ! kill -0 "$broker_pid" 2>/dev/null; then
      wait "$broker_pid"
      echo "broker start $starts exited ($?) before it was ready"
      tail -n 5 "$work/broker.log"
      return 1
    fi
    sleep 0.05
  done
  echo "broker start $starts not ready within 15 s"
  return 1
}

# keep_on_failure: a failed run (any run with CRASH_KEEP=1) leaves its logs beside the work directory
# shellcheck disable=SC2154 # failed: lib.sh
keep_on_failure() { [ "$failed" = 0 ] && [ "${CRASH_KEEP:-0}" != 1 ] || { cp -r "$work" "$work.kept" 2>/dev/null && echo "kept: $work.kept"; }; }

crash_broker() {
  kill -KILL "$broker_pid" 2>/dev/null
  wait "$broker_pid" 2>/dev/null
  broker_pid=""
  track
}

# kill_wait PID: SIGKILL and reap one process of ours
kill_wait() {
  kill -KILL "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}

# rand_sleep MIN_MS MAX_MS: a random pause
rand_sleep() {
  sleep "$(awk -v r=$RANDOM -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (a + r % (b - a + 1)) / 1000 }')"
}

# broker_trouble: the broker's own account of trouble (a crash of its own is not a kill of ours)
broker_trouble() {
  if grep -qE 'level=(fatal|crit)|AddressSanitizer|runtime error' "$work/broker.log"; then
    bad "the broker logged: $(grep -E 'level=(fatal|crit)|AddressSanitizer|runtime error' "$work/broker.log" | head -n 3)"
  else
    ok "the broker logged nothing fatal ($(grep -c 'level=error' "$work/broker.log") error line(s))"
  fi
}
