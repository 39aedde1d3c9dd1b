#!/usr/bin/env bash
# fsync and write errors in the store, injected by an LD_PRELOAD shim (tests/tools/faultfs.c)
# into the real broker and switched on and off while it runs: while the store cannot write, the
# broker answers SEND with UNAVAILABLE and acknowledges nothing, /readyz is not ready and the log
# names the store's file and the error; when the fault clears it recovers by itself (no restart):
# SENDs are accepted again and /readyz is ready. Afterwards nothing that was accepted is lost,
# invented, stored twice or damaged: the consumer checks every payload, and --export (with the
# broker stopped) verifies the SHA-256 of every stored record.
#
#   test_store_faults.sh BROKER_BIN MBLOAD_BIN LIBFAULTFS [FIRST]
#
# FIRST is the first episode's fault: fsync (default; the WAL's frames are written, their fsync
# fails, so the failed turn may be found in the file at the recovery) or write (nothing of the
# failing turn reaches the file).
#
# Two senders: one to a recipient that consumes (with acknowledgements, so the failed turns
# undo ACKs too and the recovery finds deliveries in flight) and one to a recipient that stays
# offline (its messages are checked in the export). Fault episodes: fsync fails (EIO), then
# writes fail as well, then clear; later "fsync after=3" (fails after three more fsyncs), clear.
set -uo pipefail
BROKER=$1
MBLOAD=$2
FAULTFS=$3
FIRST=${4:-fsync}
case "$FIRST" in fsync) want_err="fsync.*Input/output error" ;; write) want_err="write failed" ;;
  *) echo "not ok - FIRST must be fsync or write, not '$FIRST'"; exit 2 ;; esac
work=$(mktemp -d /tmp/faults-store-XXXXXX)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
data=$work/data
ctl=$work/fault
mkdir -p "$data"
: >"$ctl"

# wait_ready WANT SECONDS: polls /readyz until its status is WANT; 0 when it was
wait_ready() {
  for _ in $(seq $(($2 * 10))); do
    http_status /readyz >"$work/ready"
    [ "$(head -n 1 "$work/ready")" = "$1" ] && return 0
    sleep 0.1
  done
  return 1
}
lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

# the broker, with the shim: only calls on files under $data can fail
mkfifo "$work/broker.out"
FAULTFS_DIR=$data FAULTFS_CONTROL=$ctl FAULTFS_LOG=$work/injected LD_PRELOAD=$FAULTFS \
  ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
  "$BROKER" --listen 'tcp://127.0.0.1:*' --insecure-plain-identities --data "$data" \
  --metrics 127.0.0.1:0 --log-level info --min-free-bytes 0 \
  >"$work/broker.out" 2>"$work/broker.log" &
broker_pid=$!
pids+=("$broker_pid")
await_broker "$work/broker.out" && [ -n "$metrics" ] ||
  { echo "not ok - broker did not start"; cat "$work/broker.log"; exit 1; }
http_status /readyz >"$work/ready0"
expect "/readyz ready before any fault" 0 0 "$work/ready0" "200"

send() { # send NAME TO COUNT [mbload options]: in the background, logs under $work/NAME.*
  local name=$1 to=$2 count=$3
  shift 3
  "$MBLOAD" send --broker "$uri" --as "bund.$name" --to "$to" --count "$count" --size 1024 \
    --window 8 --accepted-log "$work/$name.accepted" --attempted-log "$work/$name.attempted" \
    --seconds 90 --drain-seconds 30 "$@" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  eval "${name}_pid=$!"
}

# before any fault: 200 to the consumer's mailbox, 100 to the offline one
send a land.fault.empfang 200
send c land.fault.offline 100
wait "$a_pid" && wait "$c_pid" &&
  [ "$(lines "$work/a.accepted")" = 200 ] && [ "$(lines "$work/c.accepted")" = 100 ] &&
  ok "300 messages accepted before the fault" ||
  bad "before the fault: $(cat "$work/a.out" "$work/c.out")"

# the consumer takes and acknowledges everything for land.fault.empfang from now on
"$MBLOAD" recv --broker "$uri" --as land.fault.empfang --credit 20 --ack --size 1024 \
  --count 900 --idle-ms 60000 --seconds 120 --received-log "$work/received" >"$work/recv.out" 2>"$work/recv.err" &
recv_pid=$!
pids+=("$recv_pid")
sleep 0.5

# ---- episode 1: fsync (or write) fails with EIO ----
echo "$FIRST" >"$ctl"
send b land.fault.empfang 400
send d land.fault.offline 100
if wait_for "$work/b.err" "first UNAVAILABLE" 20; then
  ok "SEND answered UNAVAILABLE while $FIRST fails ($(grep -o 'first UNAVAILABLE.*' "$work/b.err" | head -c 300))"
else
  bad "no UNAVAILABLE within 20 s while $FIRST fails: $(tail -n 3 "$work/b.err")"
fi
acc1=$(($(lines "$work/b.accepted") + $(lines "$work/d.accepted")))
wait_ready 503 5
http_status /readyz >"$work/ready1"
if [ "$(head -n 1 "$work/ready1")" = 503 ] && grep -q "amtsbote.db" "$work/ready1"; then
  ok "/readyz not ready, naming the store: $(sed -n 2,4p "$work/ready1" | tr '\n' ' ' | head -c 300)"
else
  bad "/readyz while $FIRST fails: $(tr '\n' ' ' <"$work/ready1")"
fi
if grep "store_commit_failed" "$work/broker.log" | grep -q "$data/amtsbote.db.*$want_err"; then
  ok "the log names the store file and the error: $(grep -m 1 store_commit_failed "$work/broker.log" | head -c 300)"
else
  bad "no store_commit_failed naming $data/amtsbote.db and the $FIRST error: $(grep -m 3 store_ "$work/broker.log")"
fi
http_status /metrics >"$work/metrics1"
grep -q "^amtsbote_store_failed 1" "$work/metrics1" && ok "/metrics: amtsbote_store_failed 1" ||
  bad "/metrics while the store fails: $(grep amtsbote_store_failed "$work/metrics1")"
# the probe keeps failing while the fault lasts; then writes fail too
wait_for "$work/broker.log" "store_probe_failed" 5 &&
  ok "the store is probed while it fails: $(grep -m 1 store_probe_failed "$work/broker.log" | head -c 300)" ||
  bad "no store_probe_failed in the log"
echo "all" >"$ctl"
sleep 1.5
acc2=$(($(lines "$work/b.accepted") + $(lines "$work/d.accepted")))
[ "$acc2" = 0 ] && [ "$acc1" = 0 ] &&
  ok "nothing accepted while the store cannot write ($(grep -c . "$work/injected") calls failed)" ||
  bad "$acc1 then $acc2 messages accepted while the store could not write"
kill -0 "$broker_pid" 2>/dev/null && ok "the broker still runs" ||
  { bad "the broker exited: $(tail -n 5 "$work/broker.log")"; finish; exit 1; }

# ---- the fault clears: recovery without a restart ----
: >"$ctl"
if wait_ready 200 20; then
  ok "/readyz ready again after the fault cleared"
else
  bad "/readyz not ready 20 s after the fault cleared: $(tr '\n' ' ' <"$work/ready")"
fi
grep -q "event=store_recovered" "$work/broker.log" &&
  ok "the log says the store recovered: $(grep -m 1 store_recovered "$work/broker.log" | head -c 300)" ||
  bad "no store_recovered in the log: $(grep store_ "$work/broker.log" | tail -n 3)"
if wait_for "$work/b.accepted" . 20; then
  ok "SEND accepted again after the recovery"
else
  bad "nothing accepted 20 s after the fault cleared: $(tail -n 3 "$work/b.err")"
fi

# the senders finish: every refused SEND retried with the same id is accepted once
wait "$b_pid"; b_rc=$?
wait "$d_pid"; d_rc=$?
[ "$b_rc" = 0 ] && [ "$d_rc" = 0 ] && [ "$(lines "$work/b.accepted")" = 400 ] &&
  [ "$(lines "$work/d.accepted")" = 100 ] &&
  ok "every message of the senders was accepted in the end (retried with the same ids)" ||
  bad "senders: exit $b_rc/$d_rc: $(cat "$work/b.out" "$work/d.out")"

# ---- episode 2: fsync fails after three more calls, while a sender runs ----
echo "fsync after=3" >"$ctl"
send e land.fault.empfang 300
wait_for "$work/e.err" "first UNAVAILABLE" 20
wait_ready 503 5
sleep 0.5 # answers that left before the failure reach the sender's log
acc3=$(lines "$work/e.accepted")
sleep 1.5
acc4=$(lines "$work/e.accepted")
http_status /readyz >"$work/ready3"
if [ "$acc3" = "$acc4" ] && [ "$acc4" -lt 300 ] && [ "$(head -n 1 "$work/ready3")" = 503 ]; then
  ok "fsync failing after 3 calls: acceptance stops ($acc4 of 300 accepted), /readyz 503"
else
  bad "second fault: accepted $acc3 then $acc4 of 300, /readyz $(head -n 1 "$work/ready3")"
fi
: >"$ctl"
wait_ready 200 20 && ok "/readyz ready again after the second fault" ||
  bad "/readyz not ready after the second fault: $(tr '\n' ' ' <"$work/ready")"
[ "$(grep -c "event=store_recovered" "$work/broker.log")" -ge 2 ] &&
  ok "recovered twice without a restart" || bad "not two store_recovered in the log"
wait "$e_pid" && [ "$(lines "$work/e.accepted")" = 300 ] &&
  ok "all 300 accepted after the second recovery" || bad "sender e: $(cat "$work/e.out")"

# ---- everything accepted arrives intact ----
wait "$recv_pid"; recv_rc=$?
cat "$work/recv.out"
[ "$recv_rc" = 0 ] && ok "every delivery intact (payloads checked)" ||
  bad "recv: exit $recv_rc: $(grep -m 3 -i corrupt "$work/recv.err") $(tail -n 2 "$work/recv.err")"
sort -u "$work/a.accepted" "$work/b.accepted" "$work/e.accepted" >"$work/accepted.u"
sort -u "$work/a.attempted" "$work/b.attempted" "$work/e.attempted" >"$work/attempted.u"
awk '$6 == "new" || $6 == "dup" { print $3 }' "$work/received" | sort -u >"$work/received.u"
lost=$(comm -23 "$work/accepted.u" "$work/received.u" | wc -l)
invented=$(comm -13 "$work/attempted.u" "$work/received.u" | wc -l)
[ "$lost" = 0 ] && ok "every accepted message delivered ($(wc -l <"$work/received.u") distinct)" ||
  bad "$lost accepted message(s) not delivered"
[ "$invented" = 0 ] && ok "nothing delivered that was not sent" || bad "$invented invented message(s)"
twice=$(awk '$6 == "new" || $6 == "dup" { print $3, $5 }' "$work/received" | sort -u |
  awk '{ n[$1]++ } END { c = 0; for (k in n) if (n[k] > 1) c++; print c }')
[ "$twice" = 0 ] && ok "no message stored twice (one sequence number per id)" ||
  bad "$twice message(s) stored twice"

http_status /metrics >"$work/metrics2"
grep -q "^amtsbote_store_failed 0" "$work/metrics2" && ok "/metrics: amtsbote_store_failed 0 after the recovery" ||
  bad "/metrics after the recovery: $(grep amtsbote_store_failed "$work/metrics2")"
# a SEND refused in a turn whose WAL frames reached the file is found there at the recovery; its
# retry is answered from the dedup index (as is any resend after a time-out)
echo "# $(grep -o '^amtsbote_messages_duplicate_total [0-9]*' "$work/metrics2") (retries answered from the dedup index)"

# ---- the store itself: stop the broker, export, compare ----
kill -TERM "$broker_pid"
wait "$broker_pid"
stop_rc=$?
[ "$stop_rc" = 0 ] && ok "the broker stopped cleanly" || bad "the broker exited $stop_rc: $(tail -n 3 "$work/broker.log")"
"$BROKER" --data "$data" --export "$work/export" >"$work/export.out" 2>&1
expect "--export verifies every record's SHA-256" 0 $? "$work/export.out" ", 0 damaged"
python3 - "$work/export" "$work/c.accepted" "$work/d.accepted" "$work/accepted.u" <<'PY' >"$work/check.out"
import hashlib, json, os, sys
exp, c_acc, d_acc, a_acc = sys.argv[1:5]
offline = set(open(c_acc).read().split()) | set(open(d_acc).read().split())
consumed = set(open(a_acc).read().split())
mail = [json.loads(l) for l in open(os.path.join(exp, "mail.jsonl"))]
msgs = [m for m in mail if m["kind"] == "message"]
bad = []
ids = [m["message_id"] for m in msgs]
if sorted(ids) != sorted(offline):
    bad.append("waiting messages %d, accepted for the offline recipient %d" % (len(ids), len(offline)))
for m in msgs:
    p = open(os.path.join(exp, m["payload_file"]), "rb").read()
    if hashlib.sha256(p).hexdigest() != m["payload_sha256"] or p[:16].hex() != m["message_id"]:
        bad.append("payload of %s" % m["message_id"])
sent = [json.loads(l) for l in open(os.path.join(exp, "sent.jsonl"))]
acked = {s["message_id"] for s in sent if s["state"] == "acknowledged"}
if acked != consumed:
    bad.append("acknowledged %d, accepted for the consumer %d" % (len(acked), len(consumed)))
print("; ".join(bad) if bad else "ok %d waiting, %d acknowledged" % (len(msgs), len(acked)))
PY
grep -q "^ok" "$work/check.out" &&
  ok "the export holds exactly what was accepted: $(cat "$work/check.out")" ||
  bad "the export: $(cat "$work/check.out")"
# on a failure: what the store said, for the reader of the CI log
[ "$failed" = 0 ] || grep -E "event=(store_|sqlite_)" "$work/broker.log" | sed 's/^/# /'
finish
