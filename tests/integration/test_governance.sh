#!/usr/bin/env bash
# Integration test of governance through the real broker: the access policy decides calls,
# offers, schema pushes and the administrative view (FORBIDDEN naming the rule), purposes and
# clearances; SIGHUP reloads the policy and keeps the old one on an error; every decision lands
# in the hash-chained audit log, which verifies and answers a transparency query; /metrics counts
# what was sent and /readyz is ready.
#   test_governance.sh BROKER_BIN CLI_BIN PROTO_DIR [FAULTFS_LIB]
set -uo pipefail
BROKER=$1
CLI=$2
PROTO=$3
FAULTFS=${4:-}
work=$(mktemp -d /tmp/amtsbote-gov-XXXXXX)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
http_get() { # http_get PATH: prints the status line and the body of GET PATH
  /usr/bin/python3 - "$metrics" "$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen("http://" + sys.argv[1] + sys.argv[2], timeout=5) as r:
        print(r.status); sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); sys.stdout.write(e.read().decode())
PY
}

cat >"$work/policy.yaml" <<'YAML'
groups:
  bund: ["bund.*"]
  meldeaemter: ["kommune.????????.meldeamt"]
clearances:
  kommune.09162000.meldeamt: VS-NUR-FUER-DEN-DIENSTGEBRAUCH
  bund.bmi: VS-NUR-FUER-DEN-DIENSTGEBRAUCH
rules:
  - name: melde-auskunft
    who: "@bund"
    action: call
    resource: "meldewesen.v1.Melderegister/*"
    purposes: ["BMG §34"]
  - name: melderegister-anbieten
    who: "@meldeaemter"
    action: offer
    resource: "meldewesen.v1.Melderegister/*"
  - name: meldewesen-veroeffentlichen
    who: bund.bmi
    action: schema-push
    resource: "meldewesen.*"
  - name: betrieb
    who: bund.admin
    action: admin
    resource: "*"
  - name: post-an-meldeaemter
    who: "@bund"
    action: send
    resource: "kommune.*.meldeamt"
  - name: post-vom-bund
    who: "@meldeaemter"
    action: receive
    resource: "bund.*"
  - name: umzug-melden
    who: "@meldeaemter"
    action: publish
    resource: "meldewesen.umzug.*"
  - name: umzuege-verfolgen
    who: "@bund"
    action: subscribe
    resource: "meldewesen.umzug.>"
YAML

mkfifo "$work/broker.out"
"$BROKER" --listen 'tcp://127.0.0.1:*' --insecure-plain-identities --data "$work/data" \
  --policy "$work/policy.yaml" --audit-dir "$work/audit" --metrics 127.0.0.1:0 \
  >"$work/broker.out" 2>"$work/broker.log" &
broker_pid=$!
pids+=($broker_pid)
exec 3<"$work/broker.out"
uri="" metrics=""
while IFS= read -r -t 10 line <&3; do
  case "$line" in
    "listening on tcp://"*) uri=${line#listening on } ;;
    "metrics on http://"*) metrics=${line#metrics on http://}; metrics=${metrics%/metrics} ;;
    ready) break ;;
  esac
done
[ -n "$uri" ] && [ -n "$metrics" ] || { echo "broker did not start"; cat "$work/broker.log"; exit 1; }
as() { local who=$1; shift; "$CLI" --broker "$uri" --as "$who" "$@"; }
serve() {
  local who=$1 fifo="$work/serve.$RANDOM"
  shift
  mkfifo "$fifo"
  "$CLI" --broker "$uri" --as "$who" serve "$@" >"$fifo" 2>>"$work/serve.log" &
  pids+=($!)
  local l=""
  read -r -t 10 l <"$fifo"
  case "$l" in ready:*) return 0 ;; esac
  echo "provider did not start: $l $(tail -2 "$work/serve.log")"
  return 1
}

# --- schema push: allowed for bund.bmi on meldewesen.*, not for others
as land.by.stmi schema push "$PROTO/meldewesen/v1/meldewesen.proto" --proto-path "$PROTO" >"$work/out" 2>&1
expect "push without a rule refused" 9 $? "$work/out" "policy: meldewesen/v1/meldewesen.proto"
as bund.bmi schema push "$PROTO/meldewesen/v1/meldewesen.proto" --proto-path "$PROTO" >"$work/out" 2>&1
expect "push allowed by its rule" 0 $? "$work/out" "new, version 1"

# --- offers
as land.by.x serve meldewesen.v1.Melderegister --echo >"$work/out" 2>&1
expect "offer without a rule refused" 9 $? "$work/out" "FORBIDDEN"
serve kommune.09162000.meldeamt meldewesen.v1.Melderegister --raw --exec 'cat >/dev/null; printf ""' || exit 1
ok "offer allowed by its rule"

# --- calls: purpose, who, clearance
as bund.bmi call --raw meldewesen.v1.Melderegister/Meldebescheinigung --data '' >"$work/out" 2>&1
expect "call without a purpose" 9 $? "$work/out" "FORBIDDEN" "$work/out" "melde-auskunft"
as bund.bmi call --raw meldewesen.v1.Melderegister/Meldebescheinigung --purpose 'BMG §99' --data '' >"$work/out" 2>&1
expect "call with another purpose" 9 $? "$work/out" "BMG §34"
for i in 1 2 3; do
  as bund.bmi call --raw meldewesen.v1.Melderegister/Meldebescheinigung --purpose 'BMG §34' --data '' >"$work/out" 2>&1 ||
    { bad "allowed call $i: $(cat "$work/out")"; break; }
done
ok "three allowed calls"
as bund.bmi call --raw meldewesen.v1.Melderegister/Meldebescheinigung --purpose 'BMG §34' \
  --classification VS-NFD --data '' >"$work/out" 2>&1
expect "a classified call between cleared participants" 0 $?
as bund.bva call --raw meldewesen.v1.Melderegister/Meldebescheinigung --purpose 'BMG §34' \
  --classification VS-NUR-FUER-DEN-DIENSTGEBRAUCH --data '' >"$work/out" 2>&1
expect "a classified call from a participant cleared below it" 9 $? "$work/out" "FORBIDDEN"
as bund.bmi call --raw meldewesen.v1.Melderegister/Meldebescheinigung --classification GEHEIM \
  --data '' >"$work/out" 2>&1
expect "an unknown classification is a usage error" 2 $? "$work/out" "--classification"
as kommune.05315000.meldeamt call --raw meldewesen.v1.Melderegister/Meldebescheinigung --purpose 'BMG §34' --data '' >"$work/out" 2>&1
expect "a municipality may not call" 9 $? "$work/out" "FORBIDDEN"
as bund.bmi services >"$work/out" 2>&1
expect "the administrative view needs admin" 9 $? "$work/out" "FORBIDDEN"
as bund.admin services >"$work/out" 2>&1
expect "admin sees the offers" 0 $? "$work/out" "meldewesen.v1.Melderegister"

# --- mailboxes and events under the policy: send/receive, publish/subscribe, clearances
as bund.bmi send --raw kommune.09162000.meldeamt 'Anfrage' >"$work/out" 2>&1
expect "send allowed by send and receive rules" 0 $? "$work/out" "accepted"
as kommune.09162000.meldeamt send --raw bund.bmi 'Antwort' >"$work/out" 2>&1
expect "send without a send rule refused" 9 $? "$work/out" "FORBIDDEN"
as bund.bmi send --raw kommune.05315000.kasse 'x' >"$work/out" 2>&1
expect "send to a recipient outside the rule refused" 9 $? "$work/out" "FORBIDDEN"
as bund.bmi send --raw kommune.05315000.meldeamt --classification VS-NUR-FUER-DEN-DIENSTGEBRAUCH 'x' >"$work/out" 2>&1
expect "a classified message to an uncleared recipient refused" 9 $? "$work/out" "cleared for OFFEN"
as bund.bmi send --raw kommune.09162000.meldeamt --classification VS-NUR-FUER-DEN-DIENSTGEBRAUCH 'vs' >"$work/out" 2>&1
expect "a classified message to a cleared recipient" 0 $? "$work/out" "accepted"
as kommune.09162000.meldeamt inbox --ack --count 2 --wait 2s >"$work/out" 2>&1
expect "the recipient takes both" 0 $? "$work/out" "from bund.bmi"
as bund.bmi subscribe 'meldewesen.umzug.>' --durable umzuege --wait 200ms >"$work/out" 2>&1
expect "subscribe allowed by its rule" 0 $? "$work/out" "subscribed"
as kommune.09162000.meldeamt subscribe 'meldewesen.>' --wait 200ms >"$work/out" 2>&1
expect "subscribe without a rule refused" 9 $? "$work/out" "FORBIDDEN"
as kommune.09162000.meldeamt publish --raw meldewesen.umzug.09162000 'U-1' >"$work/out" 2>&1
expect "publish allowed by its rule" 0 $? "$work/out" "published"
as bund.bmi publish --raw meldewesen.umzug.09162000 'U-2' >"$work/out" 2>&1
expect "publish without a rule refused" 9 $? "$work/out" "FORBIDDEN"
as bund.bmi send --raw kommune.09162000.meldeamt 'wartet' >"$work/out" 2>&1
expect "a message that waits" 0 $? "$work/out" "accepted"

# --- metrics and health
http_get /metrics >"$work/metrics.txt"
grep -q '^amtsbote_service_calls_total{service="meldewesen.v1.Melderegister/Meldebescheinigung"} 4$' "$work/metrics.txt" &&
  ok "/metrics counts the four routed calls" || bad "/metrics: $(grep -i calls_total "$work/metrics.txt" | head -3)"
grep -q '^amtsbote_policy_denials_total{rule="melde-auskunft"} [2-9]' "$work/metrics.txt" &&
  ok "/metrics counts denials by rule" || bad "denials: $(grep denials "$work/metrics.txt" | head -3)"
grep -Eq '^amtsbote_calls_forbidden_total [1-9]' "$work/metrics.txt" && ok "/metrics counts refusals" ||
  bad "forbidden: $(grep forbidden "$work/metrics.txt" | head -3)"
grep -Eq '^amtsbote_connections_accepted_total\{transport="plain"\} [1-9]' "$work/metrics.txt" &&
  ok "/metrics counts accepted connections" || bad "connections: $(grep connections "$work/metrics.txt" | head -3)"
grep -q '^amtsbote_messages_accepted_total 3$' "$work/metrics.txt" &&
  grep -q '^amtsbote_messages_acknowledged_total 2$' "$work/metrics.txt" &&
  ok "/metrics counts accepted and acknowledged messages" ||
  bad "mailbox counters: $(grep -E 'messages_(accepted|acknowledged)' "$work/metrics.txt")"
grep -q '^amtsbote_mailbox_depth{mailbox="kommune.09162000.meldeamt"} 1$' "$work/metrics.txt" &&
  grep -q '^amtsbote_mailbox_oldest_age_seconds{mailbox="kommune.09162000.meldeamt"}' "$work/metrics.txt" &&
  ok "/metrics shows the mailbox's depth and the age of its oldest message" ||
  bad "mailbox depth: $(grep mailbox_ "$work/metrics.txt" | head -5)"
grep -Eq '^amtsbote_store_commit_duration_seconds_count [1-9]' "$work/metrics.txt" &&
  ok "/metrics has the store's commit latency" || bad "commit latency: $(grep store_commit "$work/metrics.txt" | tail -2)"
http_get /readyz >"$work/ready.txt"
head -1 "$work/ready.txt" | grep -q 200 && ok "/readyz is ready" || bad "/readyz: $(cat "$work/ready.txt")"
http_get / >"$work/page.html"
grep -q "meldewesen.v1.Melderegister" "$work/page.html" && grep -q "kommune.09162000.meldeamt" "$work/page.html" &&
  ok "the status page shows the offer and its provider" || bad "page: $(head -c 300 "$work/page.html")"
grep -A1 "kommune.09162000.meldeamt</td>" "$work/page.html" | grep -q "<td>1</td>" &&
  ok "the status page shows the mailbox backlog" || bad "page mailboxes: $(grep -i -A3 mailbox "$work/page.html" | head -8)"
http_get /healthz >"$work/health.txt"
head -1 "$work/health.txt" | grep -q 200 && ok "/healthz" || bad "/healthz: $(cat "$work/health.txt")"

# --- SIGHUP: a broken policy is refused and the old one stays; a good one takes over
cp "$work/policy.yaml" "$work/policy.good"
printf 'rules:\n  - who: "@nobody"\n    action: fly\n    resource: x\n' >"$work/policy.yaml"
kill -HUP "$broker_pid"
sleep 0.5
grep -q 'event=policy_reload result=failed reason=".*policy.yaml:[0-9]*:[0-9]*' "$work/broker.log" &&
  ok "broken policy refused with file:line:col" || bad "reload log: $(grep policy_reload "$work/broker.log")"
as bund.bmi call --raw meldewesen.v1.Melderegister/Meldebescheinigung --purpose 'BMG §34' --data '' >"$work/out" 2>&1
expect "the old policy is still in force" 0 $?
sed 's|purposes: \["BMG §34"\]|purposes: ["BMG §45"]|' "$work/policy.good" >"$work/policy.yaml"
kill -HUP "$broker_pid"
sleep 0.5
as bund.bmi call --raw meldewesen.v1.Melderegister/Meldebescheinigung --purpose 'BMG §34' --data '' >"$work/out" 2>&1
expect "the reloaded policy decides" 9 $? "$work/out" "BMG §45"

# --- the audit log: every decision, intact, queryable; payloads never in it
kill "$broker_pid"
wait "$broker_pid" 2>/dev/null
exec 3<&-
"$CLI" audit verify "$work/audit" >"$work/out" 2>&1
expect "audit log intact" 0 $? "$work/out" "intact"
"$CLI" audit query "$work/audit" --participant bund.bmi >"$work/out" 2>&1
expect "transparency query" 0 $? "$work/out" "meldewesen.v1.Melderegister/Meldebescheinigung"
grep -q "accepted bund.bmi -> kommune.09162000.meldeamt" "$work/out" &&
  ok "the audit log has the accepted message" || bad "no accepted record: $(grep -c . "$work/out") lines"
"$CLI" audit query "$work/audit" --participant kommune.09162000.meldeamt >"$work/out" 2>&1
grep -q "delivered bund.bmi -> kommune.09162000.meldeamt" "$work/out" &&
  ok "the audit log has the delivery" || bad "no delivered record: $(head -c 600 "$work/out")"
grep -Eq "(acked|acknowledged).*kommune.09162000.meldeamt" "$work/out" &&
  ok "the audit log has its acknowledgement" || bad "no ack record: $(head -c 600 "$work/out")"
grep -c '"kind":"forbidden"' "$work"/audit/audit-*.log | awk -F: '{s+=$NF} END {exit !(s >= 6)}' &&
  ok "refusals are audited" || bad "forbidden records: $(grep -c forbidden "$work"/audit/audit-*.log)"
grep -q '"kind":"call".*"purpose":"BMG §34"' "$work"/audit/audit-*.log && ok "calls are audited with their purpose" ||
  bad "no call record"
f=$(ls "$work"/audit/audit-*.log | head -1)
/usr/bin/python3 - "$f" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
i = b.find(b'"sender":"bund.bmi"')
b[i + 11] ^= 0x01
open(p, "wb").write(bytes(b))
PY
"$CLI" audit verify "$work/audit" >"$work/out" 2>&1
expect "a changed byte is found" 9 $? "$work/out" "audit-"


# --- --audit-background: answers go at once, the records follow within --audit-background-ms
"$BROKER" --listen 'tcp://127.0.0.1:*' --insecure-plain-identities --audit-dir "$work/audit-bg" \
  --audit-background --audit-background-ms 0 >"$work/out" 2>&1
expect "an interval of 0 ms is refused" 2 $? "$work/out" "audit-background-ms"
mkfifo "$work/broker2.out"
"$BROKER" --listen 'tcp://127.0.0.1:*' --insecure-plain-identities --audit-dir "$work/audit-bg" \
  --audit-background --audit-background-ms 300 >"$work/broker2.out" 2>"$work/broker2.log" &
pids+=($!)
exec 4<"$work/broker2.out"
uri=""
while IFS= read -r -t 10 line <&4; do
  case "$line" in
    "listening on tcp://"*) uri=${line#listening on } ;;
    ready) break ;;
  esac
done
[ -n "$uri" ] || { bad "background broker did not start: $(tail -3 "$work/broker2.log")"; finish; }
serve kommune.09162000.meldeamt bench.v1.Echo --echo || exit 1
as bund.bmi call --raw bench.v1.Echo/Echo --data 'x' >"$work/out" 2>&1
expect "a call answered with the audit log in the background" 0 $?
# nothing more happens on the broker: the timer writes the queued records by itself
found=0
for _ in $(seq 30); do
  if grep -q '"kind":"reply"' "$work"/audit-bg/audit-*.log 2>/dev/null; then found=1; break; fi
  sleep 0.1
done
((found)) && ok "the call's records are written within the interval, with no more traffic" ||
  bad "no reply record in the background audit log after 3 s"
"$CLI" audit verify "$work/audit-bg" >"$work/out" 2>&1
expect "the background audit log is intact" 0 $? "$work/out" "intact"

# --- --audit-background on a slow disk: every audit write takes 300 ms. Once a write has run
# for 100 ms the answers wait for it, so that a crash cannot lose more than that; nothing is
# lost and the log stays intact
if [ -n "$FAULTFS" ]; then
  mkdir -p "$work/audit-slow"
  echo "write delay=300" >"$work/slow.ctl"
  mkfifo "$work/broker3.out"
  FAULTFS_DIR="$work/audit-slow" FAULTFS_CONTROL="$work/slow.ctl" LD_PRELOAD="$FAULTFS" \
    ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
    "$BROKER" --listen 'tcp://127.0.0.1:*' --insecure-plain-identities --audit-dir "$work/audit-slow" \
    --audit-background >"$work/broker3.out" 2>"$work/broker3.log" &
  slow_pid=$!
  pids+=($slow_pid)
  if await_broker "$work/broker3.out" && serve kommune.09162000.meldeamt bench.v1.Echo --echo; then
    answered=0 longest=0
    for i in $(seq 12); do
      t0=$(date +%s%N)
      as bund.bmi call --raw bench.v1.Echo/Echo --data "slow $i" >"$work/out" 2>&1 && answered=$((answered + 1))
      ms=$((($(date +%s%N) - t0) / 1000000))
      ((ms > longest)) && longest=$ms
    done
    [ "$answered" = 12 ] && ok "12 calls answered while every audit write takes 300 ms" ||
      bad "$answered of 12 calls answered with a slow audit disk: $(cat "$work/out")"
    # without the bound every answer would leave at once (a CLI call takes ~20 ms here)
    ((longest >= 150)) && ok "answers wait for a write that runs past 100 ms (longest call $longest ms)" ||
      bad "no answer waited for the slow audit write (longest call $longest ms)"
    kill "$slow_pid"
    wait "$slow_pid" 2>/dev/null
    "$CLI" audit verify "$work/audit-slow" >"$work/out" 2>&1
    expect "the slow disk's audit log is intact" 0 $? "$work/out" "intact"
    n=$(cat "$work"/audit-slow/audit-*.log | grep -c '"kind":"reply"')
    [ "$n" = 12 ] && ok "all 12 replies are in the slow disk's audit log" ||
      bad "$n reply records in the slow disk's audit log, want 12"
  else
    bad "broker with a slow audit disk did not start or serve: $(tail -3 "$work/broker3.log")"
  fi
fi

finish
