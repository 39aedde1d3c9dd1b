#!/usr/bin/env bash
# Durable events and mailbox messages through SIGKILLs of their recipient and of the broker,
# through the real broker and the client library (callload, tests/tools/callload.c).
#
# A source publishes numbered events (STREAMS streams, one PUBLISH in flight each) on a topic and
# sends numbered messages (as many streams, one SEND in flight each, the same message id for
# every try) to a recipient; a sink, that recipient, holds a durable subscription to the topic
# and its mailbox, logs every event and message it takes (payload checked) and only then
# acknowledges it, after a random 0-30 ms (a kill finds some processed but not acknowledged).
# ROUNDS times (default 12; 20 in CTest) after a random 50-700 ms the sink is killed with
# SIGKILL and started again, and every 3rd time the broker too (restarted on the same port and
# data directory). Then the source stops, and a last sink drains what waits. Asserted, for events
# and messages alike:
#   - everything whose PUBLISH/SEND was answered as accepted was received: none lost;
#   - everything received was sent (its stamp names a try of the source): none invented;
#   - every payload intact (its stamp and the bytes generated from it);
#   - in order per stream: each number is first seen after the lower ones, but for a delivery
#     lost with a killed recipient, which comes again only once the broker noticed the connection
#     gone, possibly after newer ones (told apart by its attempt; counted, not failed); and the
#     broker's sequence numbers follow the order of acceptance;
#   - duplicates (redeliveries after a kill) are counted; a message (SEND, deduplicated by id)
#     is never stored twice, an event may be (a PUBLISH tried again after its answer was lost).
#   test_crash_deliveries.sh BROKER_BIN CALLLOAD_BIN [ROUNDS [STREAMS]]
set -uo pipefail
BROKER=$1
CALLLOAD=$2
ROUNDS=${3:-12}
STREAMS=${4:-4}
TOPIC=meldewesen.crash.09162000
RCPT=land.crash.empfang
work=$(mktemp -d /tmp/amtsbote-crash-deliveries-XXXXXX)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
src_pid="" sink_pid=""
# shellcheck disable=SC2034
track() {
  pids=()
  local p
  for p in "$src_pid" "$sink_pid" "$broker_pid"; do [ -n "$p" ] && pids+=("$p"); done
}
. "$(dirname "${BASH_SOURCE[0]}")/crash_lib.sh"
tool_asan="${ASAN_OPTIONS:-}${ASAN_OPTIONS:+:}detect_leaks=0"

nsink=0
# start_sink [IDLE_MS]: the recipient and durable subscriber; waits until it is attached
start_sink() {
  nsink=$((nsink + 1))
  local err=$work/sink-$nsink.err
  env ASAN_OPTIONS="$tool_asan" "$CALLLOAD" sink --broker "$uri" --as "$RCPT" --inbox --subscribe 'meldewesen.crash.>' \
    --durable crash --credit 50 --hold-ms 30 --idle-ms "${1:-0}" --seconds 300 --received-log "$work/received" \
    >"$work/sink-$nsink.out" 2>"$err" &
  sink_pid=$!
  track
  for _ in $(seq 300); do
    grep -q ': ready' "$err" 2>/dev/null && return 0
    kill -0 "$sink_pid" 2>/dev/null || break
    sleep 0.05
  done
  bad "sink start $nsink did not attach: $(tail -n 2 "$err")"
  return 1
}

start_broker || { bad "the first broker start"; finish; exit 1; }
# the subscription exists before the first PUBLISH: every accepted event is stored for it
start_sink || { finish; exit 1; }
env ASAN_OPTIONS="$tool_asan" "$CALLLOAD" source --broker "$uri" --as bund.crash.quelle --topic "$TOPIC" --to "$RCPT" \
  --streams "$STREAMS" --size 400 --timeout-ms 2000 --seconds 600 \
  --accepted-log "$work/accepted" --attempted-log "$work/attempted" >"$work/source.out" 2>"$work/source.err" &
src_pid=$!
track
t0=$(date +%s)
kills_sink=0 kills_broker=0 start_failures=0
for r in $(seq "$ROUNDS"); do
  rand_sleep 50 700
  kill_wait "$sink_pid"
  sink_pid=""
  kills_sink=$((kills_sink + 1))
  echo "# sink killed" >>"$work/received"
  if [ $((r % 3)) = 0 ]; then
    crash_broker
    kills_broker=$((kills_broker + 1))
    echo "# broker killed" >>"$work/received"
    start_broker || { start_failures=$((start_failures + 1)); start_broker || break; }
  else
    rand_sleep 0 300
  fi
  start_sink || break
done
[ "$start_failures" = 0 ] && ok "$kills_sink sink kills, $kills_broker of them with the broker" ||
  bad "$start_failures broker start(s) failed after a kill"

kill -TERM "$src_pid"
wait "$src_pid"
src_rc=$?
src_pid=""
kill -TERM "$sink_pid"
wait "$sink_pid"
sink_pid=""
track
# the last sink takes what waits, until nothing new comes for 6 s: what was in flight to the sink
# killed in the last round (a SIGKILL sends no detach, unlike a clean close) comes again only once
# the broker has noticed that connection gone, heartbeat_timeout_ms (3 s) plus up to half a
# heartbeat for its sweep after its last sign of life, and that can be after the sinks started
# since went quiet; a 3 s idle raced it
start_sink 6000 || { keep_on_failure; finish; exit 1; }
wait "$sink_pid"
sink_rc=$?
sink_pid=""
track
t1=$(date +%s)
cat "$work/source.out" "$work/sink-$nsink.out"
[ "$src_rc" = 0 ] && ok "the source stopped cleanly" || bad "the source exited $src_rc: $(tail -n 3 "$work/source.err")"
[ "$sink_rc" = 0 ] && ok "the last sink drained and found nothing corrupt" ||
  bad "the last sink exited $sink_rc: $(grep -h CORRUPT "$work"/sink-*.err | head -n 3)"

# ---- the logs -------------------------------------------------------------------------------
# attempted/accepted: "KIND SENDER STREAM SEQ"; received: "KIND SENDER STREAM SEQ SEQUENCE ATTEMPT ok|corrupt"
awk '$7 == "ok" { print $1, $2, $3, $4 }' "$work/received" | sort -u >"$work/received.u"
sort -u "$work/accepted" >"$work/accepted.u"
sort -u "$work/attempted" >"$work/attempted.u"
summary="summary rounds=$ROUNDS kills_sink=$kills_sink kills_broker=$kills_broker"
for kind in event mail; do
  acc=$(grep -c "^$kind " "$work/accepted.u")
  rcv=$(grep -c "^$kind " "$work/received.u")
  del=$(awk -v k=$kind '$1 == k && $7 == "ok"' "$work/received" | wc -l)
  corrupt=$(awk -v k=$kind '$1 == k && $7 != "ok"' "$work/received" | wc -l)
  lost=$(comm -23 "$work/accepted.u" "$work/received.u" | grep -c "^$kind ")
  invented=$(comm -13 "$work/attempted.u" "$work/received.u" | grep -c "^$kind ")
  # stored twice: one number under two broker sequences
  twice=$(awk -v k=$kind '$1 == k && $7 == "ok" { print $2, $3, $4, $5 }' "$work/received" | sort -u |
    awk '{ n[$1 " " $2 " " $3]++ } END { c = 0; for (x in n) if (n[x] > 1) c++; print c }')
  # order: the broker delivers a box in sequence order, and a stream's numbers were accepted in
  # order. A delivery lost with a killed recipient comes again only once the broker noticed the
  # connection gone (a failed send, or heartbeat_timeout_ms), possibly after newer ones; it
  # carries attempt 2+, or attempt 1 again when the broker was killed meanwhile (the attempt
  # of a delivery in flight is not kept across a crash). Such a late one is counted; a first
  # sight behind a newer number otherwise (attempt 1, no broker kill since the newer one, or no
  # recipient killed at all) is out of order.
  ooo=$(awk -v k=$kind '/^# sink killed/ { kills++; next } /^# broker killed/ { bk++; next }
    $1 == k && $7 == "ok" { s = $2 " " $3; key = s " " $4; if (key in seen) next; seen[key] = 1;
    if ((s in max) && $4 + 0 < max[s]) {
      if (kills > 0 && ($6 > 1 || bk > bk_at[s])) late++
      else { bad++; if (bad <= 3) printf "%s %s (attempt %s) after %s\n", s, $4, $6, max[s] > "/dev/stderr" }
    }
    if (!(s in max) || $4 + 0 > max[s]) { max[s] = $4 + 0; bk_at[s] = bk } } END { print bad + 0, late + 0 }' "$work/received" 2>"$work/ooo-$kind")
  late=${ooo#* }
  ooo=${ooo% *}
  # the broker's sequence numbers follow the order of acceptance: per stream they rise with the
  # number (the first store of each, for an event stored twice)
  seqorder=$(awk -v k=$kind '$1 == k && $7 == "ok" { key = $2 " " $3 " " $4; if (!(key in m) || $5 + 0 < m[key]) m[key] = $5 + 0 }
    END { for (x in m) print x, m[x] }' "$work/received" | sort -k1,1 -k2,2n -k3,3n |
    awk '{ s = $1 " " $2; if (s == last && $4 < prev) bad++; last = s; prev = $4 } END { print bad + 0 }')
  [ "$seqorder" = 0 ] && ok "$kind: the broker's sequence numbers follow the order of acceptance per stream" ||
    bad "$kind: $seqorder number(s) stored under a lower sequence than the number before them"
  dups=$((del - rcv))
  summary="$summary ${kind}s_accepted=$acc ${kind}s_received=$rcv ${kind}_deliveries=$del ${kind}_duplicates=$dups ${kind}s_stored_twice=$twice ${kind}_redelivered_after_newer=$late"
  [ "$acc" -gt 100 ] && ok "$kind: $acc accepted across the kills" || bad "$kind: only $acc accepted"
  [ "$lost" = 0 ] && ok "$kind: none accepted was lost" ||
    bad "$kind: $lost accepted but never received, e.g. $(comm -23 "$work/accepted.u" "$work/received.u" | grep "^$kind " | head -n 3 | tr '\n' ';')"
  [ "$invented" = 0 ] && ok "$kind: none invented" ||
    bad "$kind: $invented received but never sent, e.g. $(comm -13 "$work/attempted.u" "$work/received.u" | grep "^$kind " | head -n 3 | tr '\n' ';')"
  [ "$corrupt" = 0 ] && ok "$kind: no corrupt payload" || bad "$kind: $corrupt corrupt deliveries"
  [ "$ooo" = 0 ] && ok "$kind: in order per stream" || bad "$kind: $ooo out of order, e.g. $(head -n 3 "$work/ooo-$kind" | tr '\n' ';')"
done
mail_twice=$(sed -n 's/.* mails_stored_twice=\([0-9]*\).*/\1/p' <<<"$summary")
[ "$mail_twice" = 0 ] && ok "mail: no message stored twice (SEND is deduplicated by message id)" ||
  bad "mail: $mail_twice message(s) stored twice under different sequences"
echo "$summary seconds=$((t1 - t0))"
broker_trouble
keep_on_failure
finish
