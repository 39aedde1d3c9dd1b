#!/usr/bin/env bash
# Calls through SIGKILLs of the provider and of the broker, through the real broker and the
# client library (callload, tests/tools/callload.c): a caller keeps WINDOW calls in flight
# (deadline DEADLINE_MS) to an echo provider that holds each call 0-20 ms; its reply is the
# request followed by "|PROVIDER", so a wrong or foreign reply cannot pass.
#
# Phase 1, ROUNDS rounds (default 12): after a random 200-600 ms, every 3rd round the broker is
# killed (SIGKILL) and restarted on the same port and data directory, otherwise the provider is
# killed and started again after a random 0-300 ms. Asserted: every call ends exactly once, within
# its deadline + MARGIN_MS, with its own reply or an error that says why; no call hangs; and
# after each round calls succeed again within the deadline + the library's 2 s grace + 2 s.
# Phase 2, ROUNDS/2 rounds: two providers, only the first is killed (and restarted after
# 300-600 ms). Asserted: the other keeps serving while it is down, and a round fails no more
# calls than were in flight (WINDOW), none with UNKNOWN_SERVICE.
#   test_crash_calls.sh BROKER_BIN CALLLOAD_BIN [ROUNDS [WINDOW]]
set -uo pipefail
BROKER=$1
CALLLOAD=$2
ROUNDS=${3:-12}
WINDOW=${4:-32}
DEADLINE_MS=1500
# the library's own time-out is the deadline + 2 s; a little more under the sanitizers
MARGIN_MS=${CRASH_MARGIN_MS:-3500}
RECOVER_MS=$((DEADLINE_MS + 2000 + 2000))
SERVICE=crash.v1.Echo/Ping
work=$(mktemp -d /tmp/amtsbote-crash-calls-XXXXXX)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
call_pid="" prov_a="" prov_b=""
# shellcheck disable=SC2034
track() {
  pids=()
  local p
  for p in "$call_pid" "$prov_a" "$prov_b" "$broker_pid"; do [ -n "$p" ] && pids+=("$p"); done
}
. "$(dirname "${BASH_SOURCE[0]}")/crash_lib.sh"
# (env execs the tool: $! is the tool itself, which the test kills; a killed tool's exit-time
# leak report is not what this test is about)
tool_asan="${ASAN_OPTIONS:-}${ASAN_OPTIONS:+:}detect_leaks=0"

nprov=0
# start_provider NAME: an echo provider; waits for its offer to be accepted; sets prov_pid
start_provider() {
  nprov=$((nprov + 1))
  local out=$work/prov-$nprov.out
  env ASAN_OPTIONS="$tool_asan" "$CALLLOAD" serve --broker "$uri" --as "$1" --service "$SERVICE" \
    --hold-ms 20 --seconds 600 >"$out" 2>"$work/prov-$nprov.err" &
  prov_pid=$!
  for _ in $(seq 200); do
    grep -qx ready "$out" 2>/dev/null && break
    sleep 0.05
  done
  grep -qx ready "$out" || bad "provider $1 (start $nprov) did not become ready: $(tail -n 2 "$work/prov-$nprov.err")"
}

# mark: the caller's counts now (a "mark" line of its stdout); sets ok_now and errs_now
nmarks=0
mark() {
  nmarks=$((nmarks + 1))
  kill -USR1 "$call_pid"
  for _ in $(seq 100); do
    [ "$(grep -c '^mark ' "$work/call.out")" -ge "$nmarks" ] && break
    sleep 0.02
  done
  local line
  line=$(grep '^mark ' "$work/call.out" | sed -n "${nmarks}p")
  ok_now=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$line")
  errs_now=$(grep -o 'err_[A-Z_]*=[0-9]*' <<<"$line" | awk -F= '{ s += $2 } END { print s + 0 }')
  last_mark=$line
}

# recovered WHAT: waits until calls succeed again, at most RECOVER_MS; counts a failure
recovery_max=0
recovered() {
  local ok0=$ok_now t0 t1
  t0=$(date +%s%N)
  while :; do
    sleep 0.05
    mark
    t1=$(date +%s%N)
    if [ "$ok_now" -gt "$ok0" ]; then
      local ms=$(((t1 - t0) / 1000000))
      [ "$ms" -gt "$recovery_max" ] && recovery_max=$ms
      return 0
    fi
    if [ $(((t1 - t0) / 1000000)) -gt "$RECOVER_MS" ]; then
      bad "round $r: no call succeeded within $RECOVER_MS ms after $1 came back: $last_mark"
      return 1
    fi
  done
}

start_broker || { bad "the first broker start"; finish; exit 1; }
start_provider land.crash.anbieter.a
prov_a=$prov_pid
track
env ASAN_OPTIONS="$tool_asan" "$CALLLOAD" call --broker "$uri" --as bund.crash.aufrufer --service "$SERVICE" \
  --window "$WINDOW" --deadline-ms "$DEADLINE_MS" --margin-ms "$MARGIN_MS" --size 300 --seconds 900 \
  >"$work/call.out" 2>"$work/call.err" &
call_pid=$!
track
for _ in $(seq 200); do grep -qx ready "$work/call.out" && break; sleep 0.05; done
grep -qx ready "$work/call.out" || { bad "the caller did not connect: $(tail -n 2 "$work/call.err")"; finish; exit 1; }
t0=$(date +%s)
kills_broker=0 kills_provider=0 start_failures=0
mark
for r in $(seq "$ROUNDS"); do
  rand_sleep 200 600
  mark
  if [ $((r % 3)) = 0 ]; then
    crash_broker
    kills_broker=$((kills_broker + 1))
    start_broker || { start_failures=$((start_failures + 1)); start_broker || break; }
    recovered "the broker" || break
  else
    kill_wait "$prov_a"
    kills_provider=$((kills_provider + 1))
    rand_sleep 0 300
    start_provider land.crash.anbieter.a
    prov_a=$prov_pid
    track
    recovered "the provider" || break
  fi
done
[ "$start_failures" = 0 ] && ok "phase 1: $kills_provider provider kills, $kills_broker broker kills; calls succeeded again after each (at most $recovery_max ms)" ||
  bad "$start_failures broker start(s) failed after a kill"

# ---- phase 2: two providers, one killed; the other serves meanwhile ------------------------
start_provider land.crash.anbieter.b
prov_b=$prov_pid
track
p2_rounds=$(((ROUNDS + 1) / 2))
p2_bad=0
# code_delta LINE0 LINE1: the errors between two marks, by code ("PROVIDER_GONE=3 ...")
code_delta() {
  awk -v a="$1" -v b="$2" 'function get(l, w, t, i, n, kv) {
      n = split(l, t, " ")
      for (i = 1; i <= n; i++) if (t[i] ~ /^err_/) { split(substr(t[i], 5), kv, "="); v[w, kv[1]] = kv[2]; seen[kv[1]] = 1 }
    }
    BEGIN { get(a, 0); get(b, 1); for (k in seen) if (v[1, k] - v[0, k] > 0) printf "%s=%d ", k, v[1, k] - v[0, k] }'
}
# the calls of phase 1 that a broker kill left without an answer end meanwhile (the library's
# time-out: deadline + 2 s), so that phase 2 counts only its own
sleep "$(awk -v d="$DEADLINE_MS" 'BEGIN { printf "%.3f", (d + 2500) / 1000 }')"
mark
p2_first=$last_mark
for r in $(seq "$p2_rounds"); do
  rand_sleep 200 500
  mark
  ok0=$ok_now errs0=$errs_now mark0=$last_mark
  kill_wait "$prov_a"
  kills_provider=$((kills_provider + 1))
  rand_sleep 300 600
  mark
  ok_down=$((ok_now - ok0))
  start_provider land.crash.anbieter.a
  prov_a=$prov_pid
  track
  # until every call that was in flight on the killed provider has ended (its deadline)
  rand_sleep "$DEADLINE_MS" "$((DEADLINE_MS + 300))"
  mark
  failed_round=$((errs_now - errs0))
  echo "phase 2 round $r: $ok_down calls served by the other provider while one was down, $failed_round failed: $(code_delta "$mark0" "$last_mark")"
  if [ "$ok_down" -le 0 ] || [ "$failed_round" -gt "$WINDOW" ]; then
    p2_bad=$((p2_bad + 1))
    bad "phase 2 round $r: $ok_down calls succeeded while one of two providers was down, $failed_round failed (at most $WINDOW were in flight): $last_mark"
  fi
done
[ "$p2_bad" = 0 ] && ok "phase 2: $p2_rounds kills of one of two providers; the other kept serving, no round failed more than the $WINDOW calls in flight"
p2_codes=$(code_delta "$p2_first" "$last_mark")
echo "phase 2 errors: ${p2_codes:-none}"
grep -qE 'UNKNOWN_SERVICE|UNAVAILABLE|TIMED_OUT' <<<"$p2_codes" &&
  bad "phase 2: calls failed with $p2_codes while a provider was offering and the broker ran (only PROVIDER_GONE or DEADLINE_EXCEEDED may come from a killed provider)"

# the caller stops making calls and waits for the outcome of those in flight
kill -TERM "$call_pid"
wait "$call_pid"
call_rc=$?
call_pid=""
track
result=$(grep '^result ' "$work/call.out")
t1=$(date +%s)
echo "$result"
grep -v '^callload: first' "$work/call.err" | head -n 5
num() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$result"; }
calls=$(num calls) okc=$(num ok)
errs=$(grep -o 'err_[A-Z_]*=[0-9]*' <<<"$result" | tr '\n' ' ')
echo "summary rounds=$((ROUNDS + p2_rounds)) kills_provider=$kills_provider kills_broker=$kills_broker calls=${calls:-?} ok=${okc:-?} ${errs}wrong=$(num wrong) late=$(num late) twice=$(num twice) hung=$(num hung) recovery_max_ms=$recovery_max seconds=$((t1 - t0))"
[ "$call_rc" = 0 ] && [ -n "$result" ] && ok "every call ended once, in time, with its own reply or an error saying why" ||
  bad "the caller (exit $call_rc): wrong=$(num wrong) (a reply not its own), late=$(num late) (beyond deadline + $MARGIN_MS ms), twice=$(num twice) (two outcomes), hung=$(num hung) (no outcome): $(grep -v '^callload: first' "$work/call.err" | head -n 3)"
[ "${okc:-0}" -gt 100 ] && ok "$okc calls succeeded across the kills" || bad "only ${okc:-0} calls succeeded"
bad_codes=$(grep -o 'err_[A-Z_]*' <<<"$result" | grep -vE 'err_(PROVIDER_GONE|DEADLINE_EXCEEDED|UNAVAILABLE|TIMED_OUT|UNKNOWN_SERVICE)$' | sort -u | tr '\n' ' ')
[ -z "$bad_codes" ] && ok "calls failed only with PROVIDER_GONE, DEADLINE_EXCEEDED, UNAVAILABLE, TIMED_OUT or UNKNOWN_SERVICE (none offering)" ||
  bad "calls failed with unexpected codes: $bad_codes"
kill -TERM "$prov_a" "$prov_b" 2>/dev/null
wait "$prov_a" "$prov_b" 2>/dev/null
prov_a="" prov_b=""
track
broker_trouble
keep_on_failure
finish
