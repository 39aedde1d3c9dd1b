#!/usr/bin/env bash
# Integration test of mutual TLS through the real broker: a ministry calls a municipality, each
# known only by its certificate; every certificate that must fail is refused with its reason
# while the good ones keep working; no client certificate, TLS 1.2, plaintext, a stalled
# handshake and a direct connection to the internal endpoint are refused.
# The client side is stunnel (client mode) in front of the CLI until the library speaks TLS.
#   test_tls.sh BROKER_BIN CLI_BIN PKI_SH
set -uo pipefail
BROKER=$1
CLI=$2
PKI=$3
work=$(mktemp -d /tmp/amtsbote-tls-XXXXXX)
pids=()
passed=0
failed=0
cleanup() {
  # tunnels are started inside $(...): their pids come back through a file
  [ -f "$work/tunnel.pids" ] && while read -r p; do pids+=("$p"); done <"$work/tunnel.pids"
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
ok() { passed=$((passed + 1)); echo "ok - $1"; }
bad() { failed=$((failed + 1)); echo "not ok - $1"; }

command -v stunnel >/dev/null || { echo "stunnel is missing (Debian package stunnel4)"; exit 1; }

# --- the PKI
pki=$work/pki
bash "$PKI" init "$pki" >/dev/null &&
  bash "$PKI" broker "$pki" broker >/dev/null &&
  bash "$PKI" issue "$pki" bund.bmi >/dev/null &&
  bash "$PKI" issue "$pki" kommune.09162000.meldeamt >/dev/null &&
  bash "$PKI" bad "$pki" >/dev/null || { echo "pki.sh failed"; exit 1; }

# --- the broker: TLS only, a short handshake timeout
mkfifo "$work/broker.out"
"$BROKER" --listen 'tls://127.0.0.1:*' --tls-cert "$pki/broker.crt" --tls-key "$pki/broker.key" \
  --tls-ca "$pki/ca/chain.pem" --tls-crl "$pki/ca/crl.pem" --tls-handshake-timeout-ms 1000 \
  --tls-idle-timeout-ms 2500 --metrics 127.0.0.1:0 \
  --data "$work/data" --log-level debug >"$work/broker.out" 2>"$work/broker.log" &
pids+=($!)
exec 3<"$work/broker.out"
tls="" metrics=""
while IFS= read -r -t 10 line <&3; do
  case "$line" in
    "listening on tls://"*) tls=${line#listening on tls://} ;;
    "metrics on http://"*) metrics=${line#metrics on http://} ;;
    ready) break ;;
  esac
done
[ -n "$tls" ] || { echo "broker did not start"; cat "$work/broker.log"; exit 1; }
internal=$(sed -n 's/.*event=internal_endpoint uri=//p' "$work/broker.log" | head -n 1)

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# tunnel NAME CERT KEY [stunnel options...]: a client-side TLS tunnel; prints its local port
tunnel() {
  local name=$1 cert=$2 key=$3 port
  shift 3
  port=$(free_port)
  {
    echo "foreground = yes"
    echo "pid ="
    echo "[c]"
    echo "client = yes"
    echo "accept = 127.0.0.1:$port"
    echo "connect = $tls"
    [ -n "$cert" ] && echo "cert = $cert"
    [ -n "$key" ] && echo "key = $key"
    echo "CAfile = $pki/ca/chain.pem"
    echo "verifyChain = yes"
    echo "checkHost = localhost"
    for o in "$@"; do echo "$o"; done
  } >"$work/$name.conf"
  stunnel "$work/$name.conf" >"$work/$name.stunnel.log" 2>&1 &
  echo $! >>"$work/tunnel.pids"
  for _ in $(seq 50); do
    (exec 9<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  echo "$port"
}

# --- a real exchange, each side known by its certificate alone
p_mun=$(tunnel meldeamt "$pki/kommune.09162000.meldeamt.crt" "$pki/kommune.09162000.meldeamt.key")
p_bmi=$(tunnel bmi "$pki/bund.bmi.crt" "$pki/bund.bmi.key")
mkfifo "$work/serve.out"
"$CLI" --broker "tcp://127.0.0.1:$p_mun" serve meldewesen.v1.Melderegister \
  --exec 'cat >/dev/null; echo "for $AMTSBOTE_CALLER"' >"$work/serve.out" 2>"$work/serve.err" &
pids+=($!)
read -r -t 10 ready <"$work/serve.out"
case "$ready" in
  "ready: serving meldewesen.v1.Melderegister as kommune.09162000.meldeamt") ok "provider known by its certificate" ;;
  *) bad "provider: '$ready' $(cat "$work/serve.err")" ;;
esac
out=$("$CLI" --broker "tcp://127.0.0.1:$p_bmi" call meldewesen.v1.Melderegister/Meldebescheinigung --data x 2>&1)
[ "$out" = "for bund.bmi" ] && ok "call over mutual TLS; the caller is bund.bmi" || bad "call: $out"
# --as is a plain-listener feature: over TLS a claimed name changes nothing
out=$("$CLI" --broker "tcp://127.0.0.1:$p_bmi" call meldewesen.v1.Melderegister/Meldebescheinigung --data x 2>&1)
grep -q "event=tls_session participant=bund.bmi" "$work/broker.log" && ok "session logged with its participant" || bad "no tls_session line"

# --- certificates that must fail: each refused with its reason, the good ones unaffected
declare -A want=(
  [expired]="certificate has expired"
  [not-yet-valid]="certificate is not yet valid"
  [other-ca]="unable to get local issuer certificate"
  [revoked]="certificate revoked"
  [serverauth-only]="unsuitable certificate purpose"
  [no-san-uri]="no SAN URI"
  [two-san-uris]="2 SAN URIs"
  [malformed-address]="is not of the form"
  [wildcard]="is not of the form"
)
for name in expired not-yet-valid other-ca revoked serverauth-only no-san-uri two-san-uris malformed-address wildcard; do
  port=$(tunnel "bad-$name" "$pki/bad/$name.crt" "$pki/bad/$name.key")
  "$CLI" --broker "tcp://127.0.0.1:$port" --timeout 1500 call meldewesen.v1.Melderegister/Meldebescheinigung \
    --data x >"$work/out" 2>&1
  code=$?
  if [ $code = 3 ] && grep -q "event=tls_refused.*${want[$name]}" "$work/broker.log"; then
    ok "$name refused: ${want[$name]}"
  else
    bad "$name: exit $code, log: $(grep tls_refused "$work/broker.log" | tail -n 1)"
  fi
done
out=$("$CLI" --broker "tcp://127.0.0.1:$p_bmi" call meldewesen.v1.Melderegister/Meldebescheinigung --data x 2>&1)
[ "$out" = "for bund.bmi" ] && ok "good participants still served" || bad "after the bad ones: $out"

# --- no client certificate; TLS 1.2 when the broker allows 1.3 only
port=$(tunnel nocert "" "")
"$CLI" --broker "tcp://127.0.0.1:$port" --timeout 1500 call x.v1.A/B --data x >/dev/null 2>&1
[ $? = 3 ] && grep -q "event=tls_refused.*\(certificate\|handshake failed\)" "$work/broker.log" &&
  ok "no client certificate refused" || bad "no client certificate"
n_before=$(grep -c "event=tls_refused" "$work/broker.log")
port=$(tunnel tls12 "$pki/bund.bmi.crt" "$pki/bund.bmi.key" "sslVersionMax = TLSv1.2")
"$CLI" --broker "tcp://127.0.0.1:$port" --timeout 1500 call x.v1.A/B --data x >/dev/null 2>&1
[ $? = 3 ] && [ "$(grep -c "event=tls_refused" "$work/broker.log")" -gt "$n_before" ] &&
  grep -q "event=tls_refused.*unsupported protocol\|event=tls_refused.*version" "$work/broker.log" &&
  ok "TLS 1.2 refused by default" || bad "TLS 1.2: $(grep tls_refused "$work/broker.log" | tail -n 1)"

# --- plaintext to the TLS port, and a client that never completes its handshake
host=${tls%:*}
tport=${tls##*:}
( exec 9<>"/dev/tcp/$host/$tport"; printf 'GET / HTTP/1.0\r\n\r\n' >&9; timeout 3 cat <&9 >/dev/null ) 2>/dev/null
grep -q "event=tls_refused.*handshake failed" "$work/broker.log" && ok "plaintext refused" || bad "plaintext"
( exec 9<>"/dev/tcp/$host/$tport"; sleep 1.6 ) 2>/dev/null &
stall=$!
out=$("$CLI" --broker "tcp://127.0.0.1:$p_bmi" call meldewesen.v1.Melderegister/Meldebescheinigung --data x 2>&1)
[ "$out" = "for bund.bmi" ] && ok "served while another client stalls" || bad "during stall: $out"
wait $stall
grep -q "event=tls_refused.*no handshake within 1000 ms" "$work/broker.log" && ok "stalled handshake cut at the timeout" || bad "stall not cut"

# --- a session that goes quiet after its handshake is closed at the idle timeout (the others
#     keep theirs alive with ZMTP heartbeats)
sleep 4 | openssl s_client -quiet -connect "$tls" -cert "$pki/bund.bmi.crt" -key "$pki/bund.bmi.key" \
  -CAfile "$pki/ca/chain.pem" >/dev/null 2>&1 &
quiet=$!
sleep 3.5
grep -q "event=tls_session_end participant=bund.bmi.*no traffic for 2500 ms" "$work/broker.log" &&
  ok "quiet session closed at the idle timeout" || bad "idle timeout"
wait $quiet 2>/dev/null
out=$("$CLI" --broker "tcp://127.0.0.1:$p_bmi" call meldewesen.v1.Melderegister/Meldebescheinigung --data x 2>&1)
[ "$out" = "for bund.bmi" ] && ok "busy sessions are not idle" || bad "after idle: $out"

# --- a connection made directly to the internal endpoint is refused
if [ -n "$internal" ]; then
  "$CLI" --broker "$internal" --timeout 1500 call x.v1.A/B --data x >/dev/null 2>&1
  [ $? = 3 ] && grep -q "carries no TLS session" "$work/broker.log" && ok "direct connection to the internal endpoint refused" ||
    bad "internal endpoint reachable without TLS"
else
  bad "no internal endpoint in the log"
fi

# --- SIGHUP: a broken CRL keeps the old files; a revocation cuts the participant off
broker_pid=${pids[0]}
cp "$pki/ca/crl.pem" "$work/crl.good"
echo "not a CRL" >"$pki/ca/crl.pem"
kill -HUP "$broker_pid"
sleep 0.5
grep -q "event=reload result=failed reason=\"$pki/ca/crl.pem" "$work/broker.log" && ok "broken CRL on reload: old files kept, file named" || bad "broken reload: $(grep event=reload "$work/broker.log" | tail -n 1)"
out=$("$CLI" --broker "tcp://127.0.0.1:$p_bmi" call meldewesen.v1.Melderegister/Meldebescheinigung --data x 2>&1)
[ "$out" = "for bund.bmi" ] && ok "still served after a failed reload" || bad "after failed reload: $out"
cp "$work/crl.good" "$pki/ca/crl.pem"
bash "$PKI" revoke "$pki" kommune.09162000.meldeamt >/dev/null && bash "$PKI" crl "$pki" >/dev/null
kill -HUP "$broker_pid"
sleep 1
grep -q "event=reload result=ok sessions_closed=1" "$work/broker.log" && ok "reload closed the revoked session" || bad "reload: $(grep event=reload "$work/broker.log" | tail -n 1)"
grep -q "event=tls_disconnected participant=kommune.09162000.meldeamt.*certificate revoked" "$work/broker.log" && ok "revoked participant disconnected" || bad "no tls_disconnected line"
sleep 1.5
grep -q "event=tls_refused.*certificate revoked" "$work/broker.log" && ok "its reconnect is refused" || bad "reconnect not refused"
"$CLI" --broker "tcp://127.0.0.1:$p_bmi" --timeout 3000 call meldewesen.v1.Melderegister/Meldebescheinigung --data x >/dev/null 2>&1
code=$?
{ [ $code = 4 ] || [ $code = 6 ]; } && ok "its service is gone (exit $code)" || bad "call after revocation: exit $code"

# --- the refusals are counted by category in /metrics
/usr/bin/python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://$metrics', timeout=5).read().decode())" >"$work/metrics.txt" 2>&1
grep -Eq '^amtsbote_tls_handshake_failures_total\{reason="handshake"\} [1-9]' "$work/metrics.txt" &&
  grep -Eq '^amtsbote_tls_handshake_failures_total\{reason="timeout"\} [1-9]' "$work/metrics.txt" &&
  ok "refused handshakes counted by category in /metrics" ||
  bad "metrics: $(grep -E 'handshake|refused' "$work/metrics.txt" | head -5)"

# --- a broker with --tls12: TLS 1.2 with ECDHE + AES-GCM is served, a CBC suite is refused
mkfifo "$work/broker12.out"
"$BROKER" --listen 'tls://127.0.0.1:*' --tls-cert "$pki/broker.crt" --tls-key "$pki/broker.key" \
  --tls-ca "$pki/ca/chain.pem" --tls12 --data "$work/data12" \
  >"$work/broker12.out" 2>"$work/broker12.log" &
pids+=($!)
exec 4<"$work/broker12.out"
tls13=$tls
tls=""
while IFS= read -r -t 10 line <&4; do
  case "$line" in
    "listening on tls://"*) tls=${line#listening on tls://} ;;
    ready) break ;;
  esac
done
if [ -n "$tls" ]; then
  port=$(tunnel gcm12 "$pki/bund.bmi.crt" "$pki/bund.bmi.key" "sslVersionMax = TLSv1.2" \
    "ciphers = ECDHE-ECDSA-AES128-GCM-SHA256")
  "$CLI" --broker "tcp://127.0.0.1:$port" --timeout 2000 call x.v1.Nobody/Here --data x >"$work/out" 2>&1
  [ $? = 4 ] && ok "TLS 1.2 with ECDHE-ECDSA-AES128-GCM-SHA256 served with --tls12" || bad "TLS 1.2 GCM: $(cat "$work/out")"
  port=$(tunnel cbc12 "$pki/bund.bmi.crt" "$pki/bund.bmi.key" "sslVersionMax = TLSv1.2" \
    "ciphers = ECDHE-ECDSA-AES128-SHA256")
  "$CLI" --broker "tcp://127.0.0.1:$port" --timeout 1500 call x.v1.Nobody/Here --data x >/dev/null 2>&1
  [ $? = 3 ] && grep -q "event=tls_refused.*no shared cipher" "$work/broker12.log" &&
    ok "a CBC suite refused even with --tls12" || bad "CBC: $(grep tls_refused "$work/broker12.log" | tail -n 1)"
else
  bad "the --tls12 broker did not start: $(tail -n 3 "$work/broker12.log")"
fi
tls=$tls13

# --- nothing of the payloads in the log
grep -q "for bund.bmi" "$work/broker.log" && bad "payload in the broker log" || ok "no payloads in the broker log"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
