#!/usr/bin/env bash
# 1,000 concurrent mutual-TLS clients each complete a call: 1,000 ZeroMQ DEALERs (pyzmq) through
# one `amtsbote tunnel`, so 1,000 TLS sessions at the broker's gateway at once.
#   test_tls_many.sh BROKER_BIN CLI_BIN PKI_SH DEALERS_PY [N]
set -uo pipefail
BROKER=$1
CLI=$2
PKI=$3
DEALERS=$4
N=${5:-1000}
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d /tmp/amtsbote-many-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

pki=$work/pki
bash "$PKI" init "$pki" >/dev/null && bash "$PKI" broker "$pki" broker >/dev/null &&
  bash "$PKI" issue "$pki" bund.bmi >/dev/null && bash "$PKI" issue "$pki" kommune.echo >/dev/null ||
  { echo "pki.sh failed"; exit 1; }

mkfifo "$work/broker.out"
"$BROKER" --listen 'tls://127.0.0.1:*' --tls-cert "$pki/broker.crt" --tls-key "$pki/broker.key" \
  --tls-ca "$pki/ca/chain.pem" --data "$work/data" --log-level info --max-connections-per-participant $((N + 1000)) \
  >"$work/broker.out" 2>"$work/broker.log" &
pids+=($!)
exec 3<"$work/broker.out"
tls=""
while IFS= read -r -t 10 line <&3; do
  case "$line" in
    "listening on tls://"*) tls=${line#listening on } ;;
    ready) break ;;
  esac
done
[ -n "$tls" ] || { echo "broker did not start"; cat "$work/broker.log"; exit 1; }

as() { echo "--broker $tls --cert $pki/$1.crt --key $pki/$1.key --ca $pki/ca/chain.pem"; }
mkfifo "$work/serve.out" "$work/tunnel.out"
# shellcheck disable=SC2046
"$CLI" $(as kommune.echo) serve x.v1.Echo --echo --concurrency 64 >"$work/serve.out" 2>"$work/serve.err" &
pids+=($!)
read -r -t 10 ready <"$work/serve.out" || { echo "provider did not start"; cat "$work/serve.err"; exit 1; }
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# shellcheck disable=SC2046
"$CLI" $(as bund.bmi) tunnel --listen "tcp://127.0.0.1:$port" >"$work/tunnel.out" 2>"$work/tunnel.err" &
pids+=($!)
read -r -t 10 ready <"$work/tunnel.out" || { echo "tunnel did not start"; cat "$work/tunnel.err"; exit 1; }

passed=0
failed=0
out=$(/usr/bin/python3 "$DEALERS" "tcp://127.0.0.1:$port" "$N" x.v1.Echo/Echo 90000)
code=$?
echo "$out"
if [ $code = 0 ]; then passed=$((passed + 1)); echo "ok - $N concurrent TLS clients each completed a call"; else failed=$((failed + 1)); echo "not ok - $out"; fi
sessions=$(grep -c "event=tls_session participant=bund.bmi" "$work/broker.log")
if [ "$sessions" -ge "$N" ]; then passed=$((passed + 1)); echo "ok - $sessions TLS sessions of bund.bmi at the gateway"; else failed=$((failed + 1)); echo "not ok - only $sessions TLS sessions"; fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
