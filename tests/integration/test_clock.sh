#!/usr/bin/env bash
# Clock steps under the real broker: it runs under libfaketime with an offset read from a file at
# every clock reading (FAKETIME_TIMESTAMP_FILE, FAKETIME_NO_CACHE=1), so the test steps the
# broker's wall clock while it runs, as an NTP step would. The monotonic clock is left alone
# (FAKETIME_DONT_FAKE_MONOTONIC=1): a step of the wall clock does not move it.
#
# What must hold (README "Time"):
# - forward: a mailbox message whose time to live has passed expires (EXPIRED receipt to its
#   sender), one whose time has not stays; a call in flight is not cut short (deadlines run on
#   the monotonic clock);
# - backward: nothing expires early; a delivery not acknowledged is delivered again after
#   ack_timeout_ms, not after the step's length; new messages are delivered at once; a consumer
#   is not dropped for missed heartbeats; a call's deadline still ends it on time;
# - certificates are checked against the broker's (wall) clock: a client certificate not yet
#   valid is refused naming the reason, and accepted once the clock has passed its start; one
#   whose validity ended is refused as expired.
#   test_clock.sh BROKER_BIN CLI_BIN MBLOAD_BIN PKI_SH
set -uo pipefail
BROKER=$1
CLI=$2
MBLOAD=$3
PKI=$4
work=$(mktemp -d /tmp/faults-clock-XXXXXX)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FAKETIME_LIB=""
for f in /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 /usr/lib/*/faketime/libfaketimeMT.so.1 \
  /usr/lib/faketime/libfaketimeMT.so.1; do
  [ -f "$f" ] && { FAKETIME_LIB=$f; break; }
done
if [ -z "$FAKETIME_LIB" ]; then
  echo "not ok - libfaketime is missing (Debian package faketime; scripts/deps.sh installs it)"
  exit 1
fi
clock=$work/clock
echo "+0" >"$clock"
step() { echo "$1" >"$clock"; } # step +2h | -2h | +2d: the broker's offset from the real time

# start NAME ARGS...: a broker under libfaketime; sets $uri
start() {
  local name=$1
  shift
  mkfifo "$work/$name.out"
  FAKETIME_TIMESTAMP_FILE=$clock FAKETIME_NO_CACHE=1 FAKETIME_DONT_FAKE_MONOTONIC=1 \
    LD_PRELOAD=$FAKETIME_LIB ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
    "$BROKER" "$@" --data "$work/$name.data" --log-level info >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  await_broker "$work/$name.out" ||
    { echo "not ok - broker $name did not start: $(tail -n 5 "$work/$name.log")"; exit 1; }
}

# ================= mailboxes and calls =================
start mail --listen 'tcp://127.0.0.1:*' --insecure-plain-identities --ack-timeout-ms 1000
as() { local who=$1; shift; "$CLI" --broker "$uri" --as "$who" "$@"; }
S=bund.zeit
OFF=land.zeit.abwesend
RCPT=land.zeit.empfang
out=$work/out err=$work/err
now_ms() { date +%s%3N; }

as $S send $OFF 'eine Stunde' --ttl 1h >"$out" 2>"$err"
id1=$(awk '/^accepted /{print $2}' "$out")
as $S send $OFF 'drei Stunden' --ttl 3h >"$out" 2>"$err"
id3=$(awk '/^accepted /{print $2}' "$out")
[ -n "$id1" ] && [ -n "$id3" ] && ok "two messages accepted (time to live 1 h and 3 h)" ||
  bad "send: $(cat "$out" "$err")"

# a provider that takes 3 s, and a call with a 6 s deadline in flight across the forward step
mkfifo "$work/serve.out"
"$CLI" --broker "$uri" --as land.zeit.amt serve zeit.v1.Uhr --exec 'sleep 3; cat' \
  >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
pids+=("$serve_pid")
read -r -t 10 ready <"$work/serve.out"
case "$ready" in "ready: "*) ok "provider ready" ;; *) bad "provider: '$ready' $(cat "$work/serve.err")" ;; esac
t0=$(now_ms)
as $S --timeout 6000 call zeit.v1.Uhr/Jetzt --data tick >"$work/call1.out" 2>"$work/call1.err" &
call_pid=$!
sleep 1
step "+2h"
wait "$call_pid"
call_rc=$?
t1=$(now_ms)
[ "$call_rc" = 0 ] && [ "$(cat "$work/call1.out")" = tick ] &&
  ok "a call in flight across a 2 h forward step is answered ($((t1 - t0)) ms)" ||
  bad "call across the forward step: exit $call_rc: $(cat "$work/call1.out" "$work/call1.err")"

# the 1 h message expires (the broker looks at expiries at least once a second)
expired=0
for _ in $(seq 50); do
  as $S status "$id1" >"$out" 2>"$err"
  grep -q "state     expired" "$out" && { expired=1; break; }
  sleep 0.1
done
[ "$expired" = 1 ] && ok "after +2 h the message with 1 h to live expired" ||
  bad "not expired after +2 h: $(cat "$out" "$err")"
as $S status "$id3" >"$out" 2>"$err"
expect "the message with 3 h to live still waits" 0 $? "$out" "state     waiting"
as $S inbox --ack >"$out" 2>"$err"
expect "the sender gets the EXPIRED receipt" 0 $? "$out" " $id1 to $OFF EXPIRED"

# ---- backward: from +2 h to -2 h ----
# a consumer that never acknowledges: what it gets is delivered again after ack_timeout_ms
"$MBLOAD" recv --broker "$uri" --as $RCPT --credit 5 --seconds 12 --idle-ms 12000 \
  --received-log "$work/received" >"$work/recv.out" 2>"$work/recv.err" &
recv_pid=$!
pids+=("$recv_pid")
sleep 0.5
as $S send $RCPT 'ohne Quittung' >"$out" 2>"$err"
rid=$(awk '/^accepted /{print $2}' "$out")
wait_for "$work/received" " $rid 1 " 5 && ok "delivered (attempt 1)" || bad "no first delivery of $rid: $(cat "$work/recv.err")"
t0=$(now_ms)
step "-2h"
wait_for "$work/received" " $rid 2 " 6
got2=$?
t1=$(now_ms)
[ "$got2" = 0 ] &&
  ok "after a 4 h backward step the unacknowledged delivery comes again ($((t1 - t0)) ms; ack_timeout_ms 1000)" ||
  bad "no redelivery within 6 s of the backward step (the acknowledgement timer must not follow the wall clock)"
as $S send $RCPT 'nach dem Sprung' >"$out" 2>"$err"
nid=$(awk '/^accepted /{print $2}' "$out")
wait_for "$work/received" " $nid 1 " 5 && ok "a new message is delivered at once after the backward step" || bad "$nid not delivered within 5 s"
as $S status "$id3" >"$out" 2>"$err"
expect "nothing expires early after the backward step" 0 $? "$out" "state     waiting"
# a call's deadline after the backward step: 1.5 s against a provider that takes 3 s
t0=$(now_ms)
as $S --timeout 1500 call zeit.v1.Uhr/Jetzt --data tock >"$work/call2.out" 2>"$work/call2.err"
call_rc=$?
t1=$(now_ms)
if [ "$call_rc" != 0 ] && grep -q "DEADLINE_EXCEEDED" "$work/call2.err" && [ $((t1 - t0)) -lt 5000 ]; then
  ok "after the backward step a call's deadline still ends it on time ($((t1 - t0)) ms for 1500)"
else
  bad "call after the backward step: exit $call_rc in $((t1 - t0)) ms: $(cat "$work/call2.out" "$work/call2.err")"
fi
sleep 3 # heartbeats keep running on the monotonic clock: the consumer is not dropped
grep -q "event=consumer_gone participant=$RCPT.*missed heartbeats" "$work/mail.log" &&
  bad "the consumer was dropped for missed heartbeats: $(grep -m 1 consumer_gone "$work/mail.log")" ||
  ok "no consumer dropped for missed heartbeats across both steps"
kill "$recv_pid" 2>/dev/null
# the provider: SIGTERM, and SIGKILL should it still run after 5 s
kill "$serve_pid" 2>/dev/null
for _ in $(seq 50); do kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$serve_pid" 2>/dev/null && { echo "# amtsbote serve still ran 5 s after SIGTERM: killed"; kill -9 "$serve_pid"; }

# ================= certificates against the broker's clock =================
step "+0"
pki=$work/pki
bash "$PKI" init "$pki" >/dev/null &&
  bash "$PKI" broker "$pki" broker >/dev/null &&
  bash "$PKI" issue "$pki" bund.zeit >/dev/null &&
  bash "$PKI" issue "$pki" land.zeit.kurz --days 1 >/dev/null &&
  bash "$PKI" bad "$pki" >/dev/null || { bad "pki.sh failed"; finish; exit 1; }
start tls --listen 'tls://127.0.0.1:*' --tls-cert "$pki/broker.crt" --tls-key "$pki/broker.key" \
  --tls-ca "$pki/ca/chain.pem" --tls-handshake-timeout-ms 2000
tls=$uri
# try NAME CERT_BASE: a call over tls:// with that client certificate (the client's own clock is
# the real one); the broker's log tells whether the handshake was refused and why
try() {
  local name=$1 base=$2
  "$CLI" --broker "$tls" --cert "$base.crt" --key "$base.key" --ca "$pki/ca/chain.pem" \
    --timeout 2000 call zeit.v1.Uhr/Jetzt --data x >"$work/$name.out" 2>&1
  echo $? >"$work/$name.rc"
}
refused_since() { # refused_since N TEXT: a tls_refused line after the first N lines with TEXT
  tail -n +"$(($1 + 1))" "$work/tls.log" | grep "event=tls_refused" | grep -q -- "$2"
}
session_for() { grep -q "event=tls_session participant=$1" "$work/tls.log"; }

n=$(wc -l <"$work/tls.log")
try notyet0 "$pki/bad/not-yet-valid"
refused_since "$n" "certificate is not yet valid (the peer's certificate CN=test.not-yet-valid, valid 20" &&
  ok "a certificate whose validity starts tomorrow is refused: $(grep tls_refused "$work/tls.log" | tail -n 1 | grep -o 'reason="[^"]*"')" ||
  bad "not-yet-valid: $(cat "$work/notyet0.out") log: $(grep tls_refused "$work/tls.log" | tail -n 1)"
try kurz0 "$pki/land.zeit.kurz"
session_for land.zeit.kurz && ok "a certificate valid for one day is accepted today" ||
  bad "land.zeit.kurz refused today: $(grep tls_refused "$work/tls.log" | tail -n 1)"

step "+2d"
n=$(wc -l <"$work/tls.log")
try kurz2 "$pki/land.zeit.kurz"
refused_since "$n" "certificate has expired (the peer's certificate CN=land.zeit.kurz, valid 20" &&
  ok "two days later (broker's clock) the one-day certificate is refused as expired" ||
  bad "one-day certificate at +2 d: $(cat "$work/kurz2.out") log: $(grep tls_refused "$work/tls.log" | tail -n 1)"
try notyet2 "$pki/bad/not-yet-valid"
session_for test.not-yet-valid && ok "two days later the certificate that started tomorrow is accepted" ||
  bad "not-yet-valid at +2 d: $(grep tls_refused "$work/tls.log" | tail -n 1)"
try zeit2 "$pki/bund.zeit"
session_for bund.zeit && ok "a certificate valid for a year is accepted at +2 d" ||
  bad "bund.zeit at +2 d: $(grep tls_refused "$work/tls.log" | tail -n 1)"
finish
