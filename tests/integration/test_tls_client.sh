#!/usr/bin/env bash
# Integration test of mutual TLS on the client side, without stunnel: the CLI (libamtsbote's
# tls:// relay) calls a provider that is itself connected over tls://, each known by its
# certificate alone; a broker certificate that the client must not trust (another CA, another
# host name), a refused client certificate, a missing option and a wrong key passphrase fail
# with exit codes and reasons; a profile file gives the CLI its defaults; `amtsbote tunnel` lets
# a hand-written pyzmq DEALER call the provider, and one that writes another participant's
# address into its headers is still seen as itself.
#   test_tls_client.sh BROKER_BIN CLI_BIN PKI_SH
set -uo pipefail
BROKER=$1
CLI=$2
PKI=$3
PY=/usr/bin/python3
HERE=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/amtsbote-tlsc-XXXXXX)
pids=()
passed=0
failed=0
cleanup() {
  # brokers are started inside $(...): their pids come back through a file
  [ -f "$work/broker.pids" ] && while read -r p; do pids+=("$p"); done <"$work/broker.pids"
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null; done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
# neither the caller's environment nor a profile of the user running the test may leak in
unset AMTSBOTE_PROFILE AMTSBOTE_BROKER AMTSBOTE_AS AMTSBOTE_CERT AMTSBOTE_KEY AMTSBOTE_CA AMTSBOTE_CRL
export XDG_CONFIG_HOME=$work/xdg
ok() { passed=$((passed + 1)); echo "ok - $1"; }
bad() { failed=$((failed + 1)); echo "not ok - $1"; }

"$PY" -c 'import zmq' 2>/dev/null || { echo "pyzmq is missing (Debian package python3-zmq)"; exit 1; }

# --- the PKI: a broker for 127.0.0.1, one for another name, two participants, the bad ones,
# --- and another CA that has nothing to do with the brokers
pki=$work/pki
bash "$PKI" init "$pki" >/dev/null &&
  bash "$PKI" broker "$pki" broker >/dev/null &&
  bash "$PKI" broker "$pki" other --dns other.example --ip 10.9.9.9 >/dev/null &&
  bash "$PKI" issue "$pki" bund.bmi >/dev/null &&
  bash "$PKI" issue "$pki" kommune.09162000.meldeamt >/dev/null &&
  bash "$PKI" issue "$pki" land.nw.im >/dev/null &&
  bash "$PKI" bad "$pki" >/dev/null &&
  bash "$PKI" init "$work/elsewhere" >/dev/null || { echo "pki.sh failed"; exit 1; }

# start_broker NAME CERT: a broker with one tls listener; prints its tls://HOST:PORT
start_broker() {
  local name=$1 cert=$2 line addr=""
  mkfifo "$work/$name.out"
  "$BROKER" --listen 'tls://127.0.0.1:*' --tls-cert "$pki/$cert.crt" --tls-key "$pki/$cert.key" \
    --tls-ca "$pki/ca/chain.pem" --tls-crl "$pki/ca/crl.pem" \
    --data "$work/$name.data" --log-level debug >"$work/$name.out" 2>"$work/$name.log" &
  echo $! >>"$work/broker.pids"
  exec {fd}<"$work/$name.out"
  while IFS= read -r -t 10 line <&$fd; do
    case "$line" in
      "listening on tls://"*) addr=${line#listening on } ;;
      ready) break ;;
    esac
  done
  echo "$addr"
}
tls=$(start_broker broker broker)
[ -n "$tls" ] || { echo "broker did not start"; cat "$work/broker.log"; exit 1; }
port=${tls##*:}

bmi=(--cert "$pki/bund.bmi.crt" --key "$pki/bund.bmi.key" --ca "$pki/ca/chain.pem")
mun=(--cert "$pki/kommune.09162000.meldeamt.crt" --key "$pki/kommune.09162000.meldeamt.key"
  --ca "$pki/ca/chain.pem" --crl "$pki/ca/crl.pem")
svc=meldewesen.v1.Melderegister

# --- provider and caller, both over tls:// through the library
mkfifo "$work/serve.out"
"$CLI" --broker "$tls" "${mun[@]}" serve "$svc" --exec 'cat >/dev/null; echo $AMTSBOTE_CALLER' \
  >"$work/serve.out" 2>"$work/serve.err" &
pids+=($!)
read -r -t 10 ready <"$work/serve.out"
[ "$ready" = "ready: serving $svc as kommune.09162000.meldeamt" ] &&
  ok "provider over tls:// known by its certificate" || bad "provider: '$ready' $(cat "$work/serve.err")"
out=$("$CLI" --broker "$tls" "${bmi[@]}" call "$svc/Meldebescheinigung" --data x 2>&1)
[ "$out" = "bund.bmi" ] && ok "call over tls://; the caller is bund.bmi, from its certificate" || bad "call: $out"
out=$(AMTSBOTE_CERT=$pki/bund.bmi.crt AMTSBOTE_KEY=$pki/bund.bmi.key AMTSBOTE_CA=$pki/ca/chain.pem \
  "$CLI" --broker "$tls" call "$svc/Meldebescheinigung" --data x 2>&1)
[ "$out" = "bund.bmi" ] && ok "TLS files from AMTSBOTE_CERT, AMTSBOTE_KEY, AMTSBOTE_CA" || bad "env: $out"

# --- a profile: defaults from a file, relative names against its directory, the weakest source
mkdir -p "$work/prof"
cli_abs=$(readlink -f "$CLI") # the first two calls run elsewhere, to show where paths are resolved
cat >"$work/prof/profile" <<EOF
# bund.bmi at the test broker

AMTSBOTE_BROKER=$tls
  AMTSBOTE_CERT = ../pki/bund.bmi.crt
AMTSBOTE_KEY=../pki/bund.bmi.key
AMTSBOTE_CA="../pki/ca/chain.pem"
EOF
out=$(cd / && "$cli_abs" --profile "$work/prof/profile" call "$svc/Meldebescheinigung" --data x 2>&1)
[ "$out" = "bund.bmi" ] && ok "profile: broker, cert, key and ca from --profile, paths relative to it" ||
  bad "profile: $out"
out=$(cd / && AMTSBOTE_PROFILE=$work/prof/profile "$cli_abs" call "$svc/Meldebescheinigung" --data x 2>&1)
[ "$out" = "bund.bmi" ] && ok "profile from AMTSBOTE_PROFILE" || bad "AMTSBOTE_PROFILE: $out"
mkdir -p "$XDG_CONFIG_HOME/amtsbote"
sed "s#\.\./pki/#$pki/#" "$work/prof/profile" >"$XDG_CONFIG_HOME/amtsbote/profile"
out=$("$CLI" call "$svc/Meldebescheinigung" --data x 2>&1)
[ "$out" = "bund.bmi" ] && ok "default profile in \$XDG_CONFIG_HOME/amtsbote/profile" || bad "default profile: $out"
rm -f "$XDG_CONFIG_HOME/amtsbote/profile"
nw=(--cert "$pki/land.nw.im.crt" --key "$pki/land.nw.im.key")
out=$("$CLI" --profile "$work/prof/profile" "${nw[@]}" call "$svc/Meldebescheinigung" --data x 2>&1)
[ "$out" = "land.nw.im" ] && ok "--cert/--key override the profile" || bad "flag over profile: $out"
out=$(AMTSBOTE_CERT=$pki/land.nw.im.crt AMTSBOTE_KEY=$pki/land.nw.im.key \
  "$CLI" --profile "$work/prof/profile" call "$svc/Meldebescheinigung" --data x 2>&1)
[ "$out" = "land.nw.im" ] && ok "AMTSBOTE_CERT/AMTSBOTE_KEY override the profile" || bad "env over profile: $out"
out=$(AMTSBOTE_CERT=$pki/land.nw.im.crt AMTSBOTE_KEY=$pki/land.nw.im.key \
  "$CLI" --profile "$work/prof/profile" "${bmi[@]}" call "$svc/Meldebescheinigung" --data x 2>&1)
[ "$out" = "bund.bmi" ] && ok "flags override the environment and the profile" || bad "flag over env: $out"
printf '# a typo\nAMTSBOTE_BROKER=%s\nAMTSBOTE_CERTT=bund.bmi.crt\n' "$tls" >"$work/prof/typo"
out=$("$CLI" --profile "$work/prof/typo" "${bmi[@]}" call "$svc/M" --data x 2>&1)
code=$?
[ $code = 2 ] && [[ $out == *"$work/prof/typo:3: unknown key 'AMTSBOTE_CERTT'"* ]] &&
  ok "profile with an unknown key: exit 2 naming file:line" || bad "unknown key: exit $code: $out"
printf 'AMTSBOTE_CA=x\n\nAMTSBOTE_CERT\n' >"$work/prof/noeq"
out=$(AMTSBOTE_PROFILE=$work/prof/noeq "$CLI" "${bmi[@]}" call "$svc/M" --data x 2>&1)
code=$?
[ $code = 2 ] && [[ $out == *"$work/prof/noeq:3: expected KEY=VALUE"* ]] &&
  ok "profile line without '=': exit 2 naming file:line" || bad "no '=': exit $code: $out"
out=$("$CLI" --profile "$work/prof/none" "${bmi[@]}" call "$svc/M" --data x 2>&1)
code=$?
[ $code = 2 ] && [[ $out == *"cannot read the profile '$work/prof/none'"* ]] &&
  ok "--profile of a missing file: exit 2 naming it" || bad "missing --profile: exit $code: $out"
# (a missing default profile is fine: every other call here runs without one)

# --- a large payload both ways through two relays and the gateway (flow control on every hop)
mkfifo "$work/echo.out"
"$CLI" --broker "$tls" "${mun[@]}" serve test.v1.Echo --echo >"$work/echo.out" 2>"$work/echo.err" &
pids+=($!)
read -r -t 10 ready <"$work/echo.out"
head -c 4000000 /dev/urandom >"$work/big"
"$CLI" --broker "$tls" "${bmi[@]}" call test.v1.Echo/Echo --file "$work/big" >"$work/big.out" 2>"$work/big.err"
cmp -s "$work/big" "$work/big.out" && ok "4 MB echoed over tls:// unchanged" ||
  bad "large echo: $(cat "$work/big.err") ($(stat -c %s "$work/big.out") bytes back)"

# --- an encrypted key with its passphrase file, and with a wrong one
printf 'geheim\n' >"$work/pass"
printf 'falsch\n' >"$work/wrong"
openssl pkey -in "$pki/bund.bmi.key" -aes256 -passout pass:geheim -out "$work/enc.key" 2>/dev/null
out=$("$CLI" --broker "$tls" --cert "$pki/bund.bmi.crt" --key "$work/enc.key" \
  --key-passphrase-file "$work/pass" --ca "$pki/ca/chain.pem" call "$svc/M" --data x 2>&1)
[ "$out" = "bund.bmi" ] && ok "encrypted key with --key-passphrase-file" || bad "passphrase: $out"
out=$("$CLI" --broker "$tls" --cert "$pki/bund.bmi.crt" --key "$work/enc.key" \
  --key-passphrase-file "$work/wrong" --ca "$pki/ca/chain.pem" call "$svc/M" --data x 2>&1 </dev/null)
code=$?
[ $code = 1 ] && [[ $out == *"enc.key: cannot use this private key with the passphrase given"* ]] &&
  ok "wrong passphrase: exit 1 naming the key file" || bad "wrong passphrase: exit $code: $out"
out=$("$CLI" --broker "$tls" --cert "$pki/bund.bmi.crt" --key "$work/enc.key" \
  --ca "$pki/ca/chain.pem" call "$svc/M" --data x 2>&1 </dev/null)
code=$?
[ $code = 1 ] && [[ $out == *"enc.key: cannot use this private key"* ]] &&
  ok "encrypted key without a passphrase: exit 1, no prompt" || bad "no passphrase: exit $code: $out"

# --- usage errors: missing files, --as over tls://, TLS options for a plain broker
out=$("$CLI" --broker "$tls" --cert "$pki/bund.bmi.crt" call "$svc/M" --data x 2>&1)
code=$?
[ $code = 2 ] && [[ $out == *"needs --key FILE"*"--ca FILE"* ]] &&
  ok "missing --key and --ca: usage error naming both" || bad "missing: exit $code: $out"
out=$("$CLI" --broker "$tls" "${bmi[@]}" --as bund.bmi call "$svc/M" --data x 2>&1)
[ $? = 2 ] && [[ $out == *"--as is for plain listeners"* ]] && ok "--as refused over tls://" || bad "--as: $out"
out=$("$CLI" --broker tcp://127.0.0.1:1 "${bmi[@]}" call "$svc/M" --data x 2>&1)
[ $? = 2 ] && [[ $out == *"are for a tls:// broker"* ]] && ok "TLS options refused for a plain broker" ||
  bad "plain + tls options: $out"
out=$("$CLI" --broker "$tls" --cert "$work/none.crt" --key "$pki/bund.bmi.key" \
  --ca "$pki/ca/chain.pem" call "$svc/M" --data x 2>&1)
[ $? = 1 ] && [[ $out == *"none.crt: cannot use this certificate file"* ]] &&
  ok "unreadable certificate file named" || bad "missing cert file: $out"

# --- the broker's certificate is not trusted: another CA, another host name
out=$("$CLI" --broker "$tls" --cert "$pki/bund.bmi.crt" --key "$pki/bund.bmi.key" \
  --ca "$work/elsewhere/ca/chain.pem" --timeout 3000 call "$svc/M" --data x 2>&1)
code=$?
[ $code = 3 ] && [[ $out == *"REFUSED: the broker's certificate: "*"certificate"* ]] &&
  ok "broker's certificate from another CA refused: ${out#amtsbote: }" || bad "wrong CA: exit $code: $out"
other=$(start_broker other other)
[ -n "$other" ] || bad "second broker did not start"
out=$("$CLI" --broker "$other" "${bmi[@]}" --timeout 3000 call "$svc/M" --data x 2>&1)
code=$?
[ $code = 3 ] && [[ $out == *"the broker's certificate: "*"mismatch"* ]] &&
  ok "broker's certificate for another host refused: ${out#amtsbote: }" || bad "host mismatch: exit $code: $out"
grep -q "event=tls_session participant=bund.bmi" "$work/other.log" && bad "a session with the wrong broker" ||
  ok "no session with the broker of the wrong name"

# --- the broker refuses the client's certificate
for name in expired revoked no-san-uri; do
  out=$("$CLI" --broker "$tls" --cert "$pki/bad/$name.crt" --key "$pki/bad/$name.key" \
    --ca "$pki/ca/chain.pem" --timeout 3000 call "$svc/M" --data x 2>&1)
  code=$?
  [ $code = 3 ] && [[ $out == *"REFUSED: the broker refused this client's certificate: "* ]] &&
    ok "$name client certificate: ${out#amtsbote: }" || bad "$name: exit $code: $out"
done
[[ $("$CLI" --broker "$tls" --cert "$pki/bad/expired.crt" --key "$pki/bad/expired.key" \
  --ca "$pki/ca/chain.pem" call "$svc/M" --data x 2>&1) == *"certificate expired"* ]] &&
  ok "expired: the reason is the broker's alert" || bad "expired: no reason"

# --- nobody listening
out=$("$CLI" --broker "tls://127.0.0.1:1" "${bmi[@]}" --timeout 1000 call "$svc/M" --data x 2>&1)
code=$?
[ $code = 3 ] && [[ $out == *"connection refused"* ]] && ok "no broker: exit 3, connection refused" ||
  bad "no broker: exit $code: $out"

# --- amtsbote tunnel + a pyzmq DEALER writing the protocol by hand
out=$("$CLI" --broker "$tls" "${bmi[@]}" tunnel --listen tcp://0.0.0.0:0 2>&1)
[ $? = 2 ] && [[ $out == *"loopback"* ]] && ok "tunnel refuses a non-loopback address" || bad "tunnel 0.0.0.0: $out"
mkfifo "$work/tunnel.out"
"$CLI" --broker "$tls" "${bmi[@]}" tunnel --listen tcp://127.0.0.1:0 >"$work/tunnel.out" 2>"$work/tunnel.err" &
tunnel_pid=$!
pids+=($tunnel_pid)
read -r -t 10 ready <"$work/tunnel.out"
local_ep=$(echo "$ready" | sed -n 's/^ready: tunnel \(tcp:\/\/127\.0\.0\.1:[0-9]*\) -> .*/\1/p')
[[ $ready == "ready: tunnel tcp://127.0.0.1:"*" -> $tls as bund.bmi" ]] && ok "tunnel ready: $ready" ||
  bad "tunnel: '$ready' $(cat "$work/tunnel.err")"
out=$("$PY" "$HERE/tls_client_dealer.py" "$local_ep" "$svc/Meldebescheinigung" anfrage 5000 2>&1)
[ "$out" = $'hello: bund.bmi\nreply: bund.bmi' ] && ok "pyzmq DEALER through the tunnel: HELLO and a REPLY" ||
  bad "pyzmq: $out"
# a valid certificate that writes another participant's address into its headers is still itself
out=$("$PY" "$HERE/tls_client_dealer.py" --sender land.by.stmi "$local_ep" "$svc/Meldebescheinigung" \
  anfrage 5000 2>&1)
[ "$out" = $'forged sender: land.by.stmi\nhello: bund.bmi\nreply: bund.bmi' ] &&
  ok "a DEALER that sets sender=land.by.stmi is still bund.bmi to the broker and the provider" ||
  bad "forged sender: $out"
sleep 0.3
grep -q "event=connected" "$work/tunnel.err" && grep -q "event=closed" "$work/tunnel.err" &&
  ok "tunnel logs connected and closed" || bad "tunnel log: $(cat "$work/tunnel.err")"
grep -q "anfrage\|bund.bmi" "$work/tunnel.err" && bad "payload in the tunnel's log" || ok "no payloads in the tunnel's log"
kill -TERM $tunnel_pid
wait $tunnel_pid
code=$?
[ $code = 0 ] && ok "tunnel stops on SIGTERM with exit 0" || bad "tunnel exit $code"

# a tunnel that cannot trust the broker: the DEALER gets nothing, the log says why
mkfifo "$work/tunnel2.out"
"$CLI" --broker "$other" "${bmi[@]}" tunnel >"$work/tunnel2.out" 2>"$work/tunnel2.err" &
tunnel_pid=$!
pids+=($tunnel_pid)
read -r -t 10 ready <"$work/tunnel2.out"
local_ep=$(echo "$ready" | sed -n 's/^ready: tunnel \(tcp:\/\/[0-9.]*:[0-9]*\) -> .*/\1/p')
"$PY" "$HERE/tls_client_dealer.py" "$local_ep" "$svc/M" x 1000 >/dev/null 2>&1
[ $? != 0 ] && grep -q 'event=refused reason="the broker.s certificate: .*mismatch' "$work/tunnel2.err" &&
  ok "tunnel to a broker of another name: refused and logged" || bad "tunnel2: $(head -n 3 "$work/tunnel2.err")"
kill -TERM $tunnel_pid
wait $tunnel_pid

# --- the provider is still there, and nothing of the payloads reached the broker's log
out=$("$CLI" --broker "$tls" "${bmi[@]}" call "$svc/Meldebescheinigung" --data x 2>&1)
[ "$out" = "bund.bmi" ] && ok "still served after all that" || bad "at the end: $out"
grep -q "anfrage" "$work/broker.log" && bad "payload in the broker log" || ok "no payloads in the broker log"
grep -q "land\.by\.stmi" "$work/broker.log" "$work/serve.err" && bad "the forged sender got somewhere" ||
  ok "the forged sender appears nowhere in the broker's or the provider's log"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
