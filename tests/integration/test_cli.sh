#!/usr/bin/env bash
# Integration test of the amtsbote CLI against the real broker: calls, serve --exec and --echo,
# the environment a command sees, and one exit code per error class.
#   test_cli.sh BROKER_BIN CLI_BIN
set -uo pipefail
BROKER=$1
CLI=$2
work=$(mktemp -d /tmp/amtsbote-cli-XXXXXX)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mkfifo "$work/broker.out"
"$BROKER" --listen 'tcp://127.0.0.1:*' --insecure-plain-identities --data "$work/data" \
  --heartbeat-ms 200 --heartbeat-timeout-ms 600 >"$work/broker.out" 2>"$work/broker.log" &
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

# serve SERVICE ARGS...: starts a provider and waits for its ready line
serve() {
  local who=$1 fifo
  shift
  fifo="$work/serve.$RANDOM"
  mkfifo "$fifo"
  "$CLI" --broker "$uri" --as "$who" serve "$@" >"$fifo" 2>>"$work/serve.log" &
  pids+=($!)
  local line=""
  read -r -t 10 line <"$fifo"
  case "$line" in ready:*) return 0 ;; esac
  echo "provider did not start: $line"; cat "$work/serve.log"
  return 1
}
call() { "$CLI" --broker "$uri" --as bund.bmi "$@"; }

# --- usage
"$CLI" --help >"$work/out" 2>&1; expect "--help" 0 $? "$work/out" "serve SERVICE"
"$CLI" >"$work/out" 2>&1; expect "no command is a usage error" 2 $?
"$CLI" --as bund.bmi call a.b/C --data x >"$work/out" 2>&1
expect "no broker named" 2 $? "$work/out" "--broker"
call frobnicate >"$work/out" 2>&1; expect "unknown command" 2 $? "$work/out" "frobnicate"
"$CLI" --broker "$uri" --as "Bund BMI" call a.b/C --data x >"$work/out" 2>&1
expect "bad participant address" 8 $? "$work/out" "participant address"

# --- echo, binary-safe, from a file and from stdin
serve kommune.echo x.v1.Echo --echo || exit 1
head -c 5000 /dev/urandom >"$work/blob"
call call x.v1.Echo/Echo --file "$work/blob" >"$work/back"; code=$?
if [ $code = 0 ] && cmp -s "$work/blob" "$work/back"; then ok "echo of 5000 random bytes"; else bad "echo ($code)"; fi
printf 'from stdin' | call call x.v1.Echo/Echo >"$work/out"; code=$?
expect "request on stdin" 0 $code "$work/out" "from stdin"

# --- exec: the environment a command sees, and its failure
cat >"$work/env.sh" <<'SH'
#!/bin/sh
cat >/dev/null
echo "method=$AMTSBOTE_METHOD caller=$AMTSBOTE_CALLER purpose=$AMTSBOTE_PURPOSE id=${#AMTSBOTE_MESSAGE_ID}"
SH
chmod +x "$work/env.sh"
serve kommune.env meldewesen.v1.Melderegister --exec "$work/env.sh" || exit 1
call call meldewesen.v1.Melderegister/Meldebescheinigung --purpose "BMG §34" --data x >"$work/out"
expect "exec environment" 0 $? "$work/out" \
  "method=meldewesen.v1.Melderegister/Meldebescheinigung caller=bund.bmi purpose=BMG §34 id=32"

serve kommune.fails x.v1.Fails/Run --exec 'echo "Aktenzeichen unbekannt" >&2; exit 3' || exit 1
call call x.v1.Fails/Run --data x >"$work/out" 2>"$work/err"
expect "command failure is PROVIDER_ERROR" 7 $? "$work/err" "PROVIDER_ERROR: "
grep -qF "Aktenzeichen unbekannt" "$work/err" && ok "command's stderr reaches the caller" || bad "stderr text: $(cat "$work/err")"

# --- a reply over the broker's max_payload: the caller learns why at once
serve kommune.big x.v1.Big/Get --exec 'cat >/dev/null; head -c 5000000 /dev/zero' || exit 1
call --timeout 20000 call x.v1.Big/Get --data x >"$work/out" 2>"$work/err"
expect "reply over max_payload" 7 $? "$work/err" "exceeds the broker's max_payload of 4194304 bytes"

# --- error classes
call call x.v1.Nobody/Home --data x >"$work/out" 2>"$work/err"
expect "unknown service" 4 $? "$work/err" "UNKNOWN_SERVICE: no provider offers x.v1.Nobody/Home"

serve kommune.slow x.v1.Slow --exec 'sleep 5' || exit 1
call --timeout 300 call x.v1.Slow/Wait --data x >"$work/out" 2>"$work/err"
expect "deadline" 5 $? "$work/err" "DEADLINE_EXCEEDED"

call call 'x.v1.Bad Name/M' --data x >"$work/out" 2>"$work/err"
expect "bad service name" 8 $? "$work/err" "INVALID_ARGUMENT"

"$CLI" --broker "$uri" --as kommune.bad serve 'kein.service/' --echo >"$work/out" 2>"$work/err"
expect "serve of a bad service name" 8 $? "$work/err" "kein.service/"

"$CLI" --broker tcp://127.0.0.1:1 --as bund.bmi --timeout 500 call x.v1.Echo/Echo --data x \
  >"$work/out" 2>"$work/err"
expect "no broker there" 3 $? "$work/err" "amtsbote: "

call call x.v1.Echo/Echo --file /nonexistent/request.bin >"$work/out" 2>"$work/err"
expect "unreadable request file" 1 $? "$work/err" "/nonexistent/request.bin"

# --- a provider that stalls past the heartbeat timeout offers again when it wakes up
serve kommune.sleepy x.v1.Sleepy --echo || exit 1
sleepy=${pids[-1]}
kill -STOP "$sleepy"
sleep 1.2
call --timeout 2000 call x.v1.Sleepy/Ping --data x >"$work/out" 2>"$work/err"
expect "stalled provider was removed" 4 $? "$work/err" "UNKNOWN_SERVICE"
kill -CONT "$sleepy"
back=1
for _ in 1 2 3 4 5 6 7 8 9 10; do
  sleep 0.3
  if call --timeout 2000 call x.v1.Sleepy/Ping --data back >"$work/out" 2>/dev/null; then back=0; break; fi
done
expect "stalled provider serves again" 0 $back "$work/out" "back"

# --- what is offered
call services >"$work/out" 2>"$work/err"
expect "services lists the offers" 0 $? "$work/out" "meldewesen.v1.Melderegister"
grep -E "^x\.v1\.Echo +1 +0  kommune\.echo$" "$work/out" >/dev/null && ok "services line for x.v1.Echo" || bad "services output: $(cat "$work/out")"
call services extra >"$work/out" 2>&1; expect "services takes no argument" 2 $?

# --- a provider killed with a call in flight
serve kommune.doomed x.v1.Doomed --exec 'sleep 30' || exit 1
doomed=${pids[-1]}
( sleep 0.5; kill -9 "$doomed" ) &
call call x.v1.Doomed/Run --data x >"$work/out" 2>"$work/err"
expect "provider killed" 6 $? "$work/err" "PROVIDER_GONE"

# --- a provider whose broker is gone stops at once on SIGINT (it waited 5 s for the WITHDRAW's
# answer and 1 s for its socket before)
mkfifo "$work/gone.out"
"$BROKER" --listen 'tcp://127.0.0.1:*' --insecure-plain-identities --data "$work/gone-data" \
  >"$work/gone.out" 2>"$work/gone.log" &
gone_broker=$!
pids+=($gone_broker)
main_uri=$uri
await_broker "$work/gone.out" || { echo "second broker did not start"; cat "$work/gone.log"; exit 1; }
gone_uri=$uri uri=$main_uri
mkfifo "$work/orphan.out"
"$CLI" --broker "$gone_uri" --as kommune.orphan serve x.v1.Orphan --echo --verbose \
  >"$work/orphan.out" 2>"$work/orphan.err" &
orphan=$!
pids+=($orphan)
line=""
read -r -t 10 line <"$work/orphan.out"
case "$line" in ready:*) ok "provider of the broker to be killed started" ;; *) bad "orphan: $line" ;; esac
kill -9 "$gone_broker"
wait "$gone_broker" 2>/dev/null
sleep 0.3
t0=$(date +%s%N)
kill -INT "$orphan"
wait "$orphan"; code=$?
elapsed_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
expect "provider without its broker exits 0 on SIGINT" 0 $code "$work/orphan.err" "connection to the broker is down"
if [ "$elapsed_ms" -lt 3000 ]; then ok "it stopped without waiting for the broker (${elapsed_ms} ms)"
else bad "provider without its broker took ${elapsed_ms} ms to stop"; fi

# --- payloads never reach the broker's log
if grep -q "Aktenzeichen\|from stdin" "$work/broker.log"; then bad "payload or error text in the broker log"; else ok "no payloads in the broker log"; fi

finish
