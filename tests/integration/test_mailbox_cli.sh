#!/usr/bin/env bash
# Mailboxes and events through the real broker and the amtsbote CLI: send -> inbox --ack ->
# receipt in the sender's inbox -> status; a retry with the same message id; JSON through a
# registered schema; payload files; EXPIRED and FAILED receipts; MAILBOX_FULL; publish and
# subscribe, ephemeral and durable (resumed after a disconnect, then deleted); and every bad
# input with its exit code and a message that names the cause.
#   test_mailbox_cli.sh BROKER_BIN CLI_BIN PROTO_DIR
set -uo pipefail
BROKER=$1
CLI=$2
PROTO=$3
work=$(mktemp -d /tmp/amtsbote-mailbox-XXXXXX)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mkfifo "$work/broker.out"
"$BROKER" --listen 'tcp://127.0.0.1:*' --insecure-plain-identities --data "$work/data" \
  --heartbeat-ms 200 --heartbeat-timeout-ms 600 --ack-timeout-ms 10000 --max-deliveries 2 \
  --mailbox-max-messages 20 >"$work/broker.out" 2>"$work/broker.log" &
pids+=($!)
exec 3<"$work/broker.out"
uri=""
while IFS= read -r -t 10 line <&3; do
  case "$line" in
    "listening on tcp://"*) uri=${line#listening on } ;;
    ready) break ;;
  esac
done
[ -n "$uri" ] || { echo "broker did not start"; cat "$work/broker.log"; exit 1; }

# (background processes run "$CLI" itself: $! of a function is a subshell's)
as() { local who=$1; shift; "$CLI" --broker "$uri" --as "$who" "$@"; }
BMI=bund.bmi
AMT=kommune.09162000.meldeamt
out=$work/out
err=$work/err

# ---- usage and bad input: exit code and a message naming the cause, nothing sent ----
for c in send inbox status publish subscribe unsubscribe; do
  "$CLI" "$c" --help >"$out" 2>&1; expect "$c --help" 0 $? "$out" "Usage: amtsbote [GLOBAL OPTIONS] $c"
done
"$CLI" --help >"$out" 2>&1; expect "--help lists send and inbox" 0 $? "$out" "send RECIPIENT" "$out" "inbox [--ack]"
as $BMI send >"$out" 2>"$err"; expect "send without a recipient" 2 $? "$err" "send: to whom?"
as $BMI send 'Kommune X' hallo >"$out" 2>"$err"
expect "send to a bad recipient address" 8 $? "$err" "INVALID_ARGUMENT: recipient: participant address 'Kommune X'"
as $BMI send $AMT hallo --frobnicate >"$out" 2>"$err"
expect "send with an unknown flag" 2 $? "$err" "send: unknown option '--frobnicate'"
as $BMI send $AMT hallo --ttl >"$out" 2>"$err"; expect "send --ttl without a value" 2 $? "$err" "--ttl needs a duration"
for ttl in 90 5x 1.5s -3s 0s 50d; do
  as $BMI send $AMT hallo --ttl "$ttl" >"$out" 2>"$err"
  expect "send --ttl $ttl" 2 $? "$err" "--ttl needs a duration such as 90s" "$err" "'$ttl'"
done
for id in 1234 0192f1c8a3e07b4c9d2e5f6a7b8c9d0z 0192f1c8-a3e0-7b4c-9d2e-5f6a7b8c9d0e; do
  as $BMI send $AMT hallo --message-id "$id" >"$out" 2>"$err"
  expect "send --message-id $id" 2 $? "$err" "--message-id needs 32 hex digits" "$err" "'$id'"
done
as $BMI send $AMT a b >"$out" 2>"$err"; expect "send with two payloads" 2 $? "$err" "unexpected argument 'b'"
as $BMI status >"$out" 2>"$err"; expect "status without an id" 2 $? "$err" "which MESSAGE_ID"
as $BMI status xyz >"$out" 2>"$err"; expect "status with a bad id" 2 $? "$err" "32 hex digits" "$err" "'xyz'"
as $BMI status 0192f1c8a3e07b4c9d2e5f6a7b8c9d0e --what >"$out" 2>"$err"; expect "status unknown flag" 2 $? "$err" "unknown option '--what'"
as $AMT inbox extra >"$out" 2>"$err"; expect "inbox takes no argument" 2 $? "$err" "unexpected argument 'extra'"
as $AMT inbox --count 0 >"$out" 2>"$err"; expect "inbox --count 0" 2 $? "$err" "--count needs a number of 1 or more"
as $AMT inbox --credit 100000 >"$out" 2>"$err"; expect "inbox --credit too large" 2 $? "$err" "--credit needs a number from 1 to 10000"
as $AMT inbox --wait soon >"$out" 2>"$err"; expect "inbox --wait without a unit" 2 $? "$err" "--wait needs a duration"
as $AMT inbox --payload-dir "$work/nonexistent" >"$out" 2>"$err"
expect "inbox --payload-dir that does not exist" 1 $? "$err" "is not a writable directory"
as $AMT publish >"$out" 2>"$err"; expect "publish without a topic" 2 $? "$err" "on which TOPIC"
as $AMT publish 'meldewesen.*' x >"$out" 2>"$err"; expect "publish on a pattern" 8 $? "$err" "wildcards are for patterns"
as $AMT publish 'meldewesen..umzug' x >"$out" 2>"$err"; expect "publish on an empty segment" 8 $? "$err" "empty segment (segment 2)"
as $BMI subscribe >"$out" 2>"$err"; expect "subscribe without a pattern" 2 $? "$err" "to which PATTERN"
as $BMI subscribe 'a.>.b' >"$out" 2>"$err"; expect "subscribe to a bad pattern" 8 $? "$err" "must be the last segment"
as $BMI subscribe 'a.>' --durable 'Meine Statistik' >"$out" 2>"$err"
expect "subscribe with a bad durable name" 8 $? "$err" "durable subscription 'Meine Statistik'"
as $BMI unsubscribe >"$out" 2>"$err"; expect "unsubscribe without --durable" 2 $? "$err" "--durable NAME"
"$CLI" --broker tcp://127.0.0.1:1 --as $BMI --timeout 500 send $AMT hallo >"$out" 2>"$err"
expect "send without a broker" 3 $? "$err" "is the broker running there?"

# ---- send -> inbox -> receipt -> status ----
as $BMI send $AMT 'Guten Tag' >"$out" 2>"$err"; code=$?
expect "send accepted" 0 $code "$out" "accepted "
id=$(awk '/^accepted /{print $2}' "$out")
[[ "$id" =~ ^[0-9a-f]{32}$ ]] && ok "send prints a 32-digit message id" || bad "message id '$id'"
as $BMI status "$id" >"$out" 2>"$err"
expect "status of a waiting message" 0 $? "$out" "state     waiting" "$out" "recipient $AMT" "$out" "size      9 bytes"
as $AMT inbox --json >"$out" 2>"$err"
expect "inbox --json without --ack" 0 $? "$out" "\"kind\":\"message\"" "$out" "\"message_id\":\"$id\"" \
  "$out" "\"sender\":\"$BMI\"" "$out" "\"payload_base64\":\"R3V0ZW4gVGFn\""
as $AMT inbox --ack >"$out" 2>"$err"
expect "inbox --ack shows it again (not acknowledged before)" 0 $? "$out" "from $BMI id $id schema - 9 bytes" "$out" "R3V0ZW4gVGFn"
as $AMT inbox --wait 300ms >"$out" 2>"$err"
[ ! -s "$out" ] && ok "an acknowledged message is gone" || bad "inbox after --ack: $(cat "$out")"
as $BMI inbox --ack >"$out" 2>"$err"
expect "the sender gets a DELIVERED receipt" 0 $? "$out" "receipt " "$out" " $id to $AMT DELIVERED at 20"
as $BMI status "$id" >"$out" 2>"$err"
expect "status after the ACK" 0 $? "$out" "state     acknowledged" "$out" "accepted" "$out" "delivered" "$out" "acknowledged"
as $BMI status "$id" --json >"$out" 2>"$err"
expect "status --json" 0 $? "$out" "\"state\":\"acknowledged\"" "$out" "\"step\":\"accepted\""
as $AMT status "$id" --sender $BMI >"$out" 2>"$err"
expect "status as the recipient" 0 $? "$out" "state     acknowledged"
as bund.bmf status "$id" --sender $BMI >"$out" 2>"$err"
expect "status for someone else is refused" 8 $? "$err" "INVALID_ARGUMENT"

# ---- a retry with the same id is stored once ----
as $BMI send $AMT 'noch einmal' >"$out" 2>"$err"
id2=$(awk '/^accepted /{print $2}' "$out")
as $BMI send $AMT 'noch einmal' --message-id "$id2" >"$out" 2>"$err"
expect "send again with the same id" 0 $? "$out" "accepted $id2"
as $AMT inbox --ack --json >"$out" 2>"$err"
n=$(grep -c "\"message_id\":\"$id2\"" "$out")
[ "$n" = 1 ] && ok "the retry was stored once" || bad "retry delivered $n times: $(cat "$out")"
as $BMI inbox --ack >/dev/null 2>&1

# ---- binary payloads from stdin into --payload-dir ----
head -c 3000 /dev/urandom >"$work/blob"
as $BMI send $AMT --raw <"$work/blob" >"$out" 2>"$err"
bid=$(awk '/^accepted /{print $2}' "$out")
mkdir "$work/payloads"
as $AMT inbox --ack --payload-dir "$work/payloads" >"$out" 2>"$err"
expect "inbox --payload-dir" 0 $? "$out" "id $bid schema - 3000 bytes"
cmp -s "$work/blob" "$work/payloads/$bid.bin" && ok "the payload file has the bytes sent" || bad "payload file differs"
as $BMI inbox --ack >/dev/null 2>&1

# ---- JSON through a registered message type ----
as $BMI schema push "$PROTO/meldewesen/v1/meldewesen.proto" --proto-path "$PROTO" >"$out" 2>&1
expect "schema push" 0 $? "$out" "accepted"
as $BMI send $AMT --schema meldewesen.v1.Name '{"familienname": "Muster", "vornamen": ["Erika"]}' >"$out" 2>"$err"
expect "send JSON through --schema" 0 $? "$out" "accepted "
as $AMT inbox --ack >"$out" 2>"$err"
expect "inbox prints it as JSON" 0 $? "$out" "schema meldewesen.v1.Name" "$out" '"familienname": "Muster"'
as $BMI send $AMT --schema meldewesen.v1.Name '{"familienname": 7}' >"$out" 2>"$err"
expect "JSON that does not fit the type" 8 $? "$err" "the payload is not meldewesen.v1.Name in JSON" "$err" "familienname"
as $BMI send $AMT --schema meldewesen.v1.Name --raw 'kein protobuf' >"$out" 2>"$err"
expect "raw bytes that do not fit the registered type" 9 $? "$err" "SCHEMA_INVALID"
as $BMI inbox --ack >/dev/null 2>&1

# ---- EXPIRED and FAILED receipts ----
as $BMI send kommune.09162000.abwesend 'verfaellt' --ttl 500ms >"$out" 2>"$err"
eid=$(awk '/^accepted /{print $2}' "$out")
as $BMI send kommune.09162000.nimmt 'wird nie bestaetigt' >"$out" 2>"$err"
fid=$(awk '/^accepted /{print $2}' "$out")
# a client that leaves gives back what it did not acknowledge (CREDIT 0): delivered again at
# once, and the second time (--max-deliveries 2) it becomes a dead letter
for i in 1 2; do
  as kommune.09162000.nimmt inbox --count 1 >"$out" 2>"$err"
  expect "delivery $i without an ACK" 0 $? "$out" "id $fid"
done
grep -q "(attempt 2)" "$out" && ok "the second delivery says attempt 2" || bad "attempt: $(cat "$out")"
sleep 1 # the time to live (500 ms) of the other one ends
as $BMI inbox --ack --wait 2s >"$out" 2>"$err"
expect "EXPIRED receipt" 0 $? "$out" " $eid to kommune.09162000.abwesend EXPIRED at "
expect "FAILED receipt after max deliveries" 0 0 "$out" " $fid to kommune.09162000.nimmt FAILED at "
as kommune.09162000.nimmt inbox --wait 300ms >"$out" 2>"$err"
[ ! -s "$out" ] && ok "a dead letter is not delivered again" || bad "dead letter delivered: $(cat "$out")"

# ---- the recipient's quota: MAILBOX_FULL (exit 10), nothing else lost ----
full=0
for i in $(seq 1 20); do as $BMI send kommune.09162000.voll "nr $i" >/dev/null 2>&1 || full=$((full + 1)); done
[ $full = 0 ] && ok "20 messages fit the quota" || bad "$full of 20 refused"
as $BMI send kommune.09162000.voll 'eine zu viel' >"$out" 2>"$err"
expect "MAILBOX_FULL" 10 $? "$err" "MAILBOX_FULL"
as kommune.09162000.voll inbox --ack --credit 50 >"$out" 2>"$err"
n=$(grep -c '^message ' "$out")
[ "$n" = 20 ] && ok "the 20 accepted ones are all there" || bad "$n of 20 after MAILBOX_FULL"
as $BMI send kommune.09162000.voll 'wieder platz' >"$out" 2>"$err"
expect "room again after the ACKs" 0 $? "$out" "accepted"
as $BMI inbox --ack --credit 50 >/dev/null 2>&1

# ---- events: an ephemeral subscription sees what is published while it is there ----
as kommune.09162000.meldeamt publish meldewesen.umzug.09162000 'vorher' >"$out" 2>"$err"
expect "publish" 0 $? "$out" "published "
"$CLI" --broker "$uri" --as bund.bmi subscribe 'meldewesen.*.09162000' --count 2 --wait 10s \
  --json >"$work/sub.out" 2>"$work/sub.err" &
sub=$!
pids+=($sub)
for _ in $(seq 1 50); do grep -q '^ready: ' "$work/sub.err" && break; sleep 0.1; done
expect "subscribe says ready" 0 0 "$work/sub.err" "ready: subscribed to meldewesen.*.09162000 as bund.bmi"
as $AMT publish meldewesen.umzug.09162000 'eins' >/dev/null 2>&1
as $AMT publish meldewesen.zuzug.09162000 'zwei' >/dev/null 2>&1
as $AMT publish meldewesen.umzug.08111000 'andere gemeinde' >/dev/null 2>&1
wait $sub
expect "ephemeral subscriber got 2 events" 0 $? "$work/sub.out" '"topic":"meldewesen.umzug.09162000"' \
  "$work/sub.out" '"topic":"meldewesen.zuzug.09162000"' "$work/sub.out" '"payload_base64":"ZWlucw=="'
if grep -q 'vorher\|dm9yaGVy\|08111000' "$work/sub.out"; then bad "ephemeral subscriber saw too much"; else ok "nothing from before or elsewhere"; fi

# ---- durable: kept while away, resumed after the last acknowledged, then deleted ----
as bund.destatis subscribe 'meldewesen.umzug.>' --durable statistik --wait 200ms >"$out" 2>"$err"
expect "durable subscription created" 0 $? "$err" "as durable statistik"
for n in 1 2 3; do as $AMT publish meldewesen.umzug.0916200$n "ereignis $n" >/dev/null 2>&1; done
as bund.destatis subscribe 'meldewesen.umzug.>' --durable statistik --count 2 --ack >"$out" 2>"$err"
expect "durable: the first two" 0 $? "$out" "meldewesen.umzug.09162001 from $AMT" "$out" "meldewesen.umzug.09162002 from $AMT"
as bund.destatis subscribe 'meldewesen.umzug.>' --durable statistik --ack --json >"$out" 2>"$err"
expect "durable: resumed after the last acknowledged" 0 $? "$out" '"topic":"meldewesen.umzug.09162003"' "$out" '"subscription":"statistik"'
if grep -q '0916200[12]' "$out"; then bad "acknowledged events came again: $(cat "$out")"; else ok "acknowledged events do not come again"; fi
as bund.destatis subscribe 'meldewesen.*.>' --durable statistik >"$out" 2>"$err"
expect "a durable subscription keeps its pattern" 8 $? "$err" "has the pattern meldewesen.umzug.>"
as bund.destatis unsubscribe --durable statistik >"$out" 2>"$err"
expect "unsubscribe --durable" 0 $? "$out" "deleted durable subscription statistik"
as bund.destatis unsubscribe --durable statistik >"$out" 2>"$err"
expect "unsubscribe of one that is gone" 8 $? "$err" "no durable subscription named statistik"

# ---- inbox --follow attaches again after the broker restarts; SIGTERM ends it with 0 ----
"$CLI" --broker "$uri" --as kommune.09162000.folgt inbox --follow --ack >"$work/follow.out" \
  2>"$work/follow.err" &
follow=$!
pids+=($follow)
sleep 0.5
as $BMI send kommune.09162000.folgt 'vor dem Neustart' >/dev/null 2>&1
broker=${pids[0]}
kill "$broker"
wait "$broker" 2>/dev/null
"$BROKER" --listen "$uri" --insecure-plain-identities --data "$work/data" \
  --heartbeat-ms 200 --heartbeat-timeout-ms 600 --ack-timeout-ms 10000 --max-deliveries 2 \
  --mailbox-max-messages 20 >"$work/broker2.out" 2>>"$work/broker.log" &
pids+=($!)
for _ in $(seq 1 50); do grep -q '^ready' "$work/broker2.out" && break; sleep 0.1; done
as $BMI send kommune.09162000.folgt 'nach dem Neustart' >/dev/null 2>&1
for _ in $(seq 1 50); do [ "$(grep -c '^message ' "$work/follow.out")" -ge 2 ] && break; sleep 0.1; done
kill -TERM "$follow"
wait "$follow"
expect "inbox --follow across a broker restart" 0 $? "$work/follow.out" "dm9yIGRlbSBOZXVzdGFydA==" \
  "$work/follow.out" "bmFjaCBkZW0gTmV1c3RhcnQ="

# ---- payloads never reach the broker's log ----
if grep -q 'Guten Tag\|Muster\|ereignis' "$work/broker.log"; then bad "payload in the broker log"; else ok "no payloads in the broker log"; fi

finish
