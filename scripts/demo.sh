#!/usr/bin/env bash
# Amtsbote in one command: installs what is missing, builds, makes a development PKI, starts a
# broker with the embedded configuration below (mutual TLS), lets a municipality
# (kommune.09162000.meldeamt) offer the registration service and a ministry (bund.bmi) call it,
# each known to the broker by its certificate alone, prints the exchange and a short throughput
# and latency measurement, and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ab_install_deps
ab_build build

work=$(mktemp -d /tmp/amtsbote-demo-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# A development PKI: a root and an issuing CA, the broker's certificate, and one certificate
# per participant with its address in a SAN URI (certs/README.md: how to use a real PKI).
echo "==> making a development PKI (certs/pki.sh) in $work/pki"
pki=$work/pki
bash certs/pki.sh init "$pki" >/dev/null
bash certs/pki.sh broker "$pki" broker >/dev/null
for p in bund.bmi kommune.09162000.meldeamt bund.bench kommune.bench.worker; do
  bash certs/pki.sh issue "$pki" "$p" >/dev/null
done
echo "    participants: bund.bmi, kommune.09162000.meldeamt (and two for the measurement)"

# The embedded default: a broker on loopback with mutual TLS only.
cat >"$work/broker.yaml" <<YAML
listen:
  - tls://127.0.0.1:*
data: $work/data
tls_cert: $pki/broker.crt
tls_key: $pki/broker.key
tls_ca: $pki/ca/chain.pem
tls_crl: $pki/ca/crl.pem
log_level: info
YAML

echo "==> starting amtsbote-broker (config: $work/broker.yaml)"
mkfifo "$work/broker.out"
build/amtsbote-broker --config "$work/broker.yaml" >"$work/broker.out" 2>"$work/broker.log" &
pids+=($!)
exec 3<"$work/broker.out"
uri=""
while IFS= read -r -t 10 line <&3; do
  case "$line" in
    "listening on tls://"*) uri=${line#listening on } ;;
    ready) break ;;
  esac
done
[ -n "$uri" ] || { echo "demo: the broker did not start; its log:" >&2; cat "$work/broker.log" >&2; exit 1; }
echo "    broker ready on $uri"

# The municipality's registration office: a legacy case system reached through a command.
cat >"$work/meldeamt.sh" <<'SH'
#!/bin/sh
# Reads the request on stdin, answers on stdout; the broker says who asks and why.
request=$(cat)
echo "Meldebescheinigung for [$request], issued by kommune.09162000.meldeamt to $AMTSBOTE_CALLER (purpose: ${AMTSBOTE_PURPOSE:-none})"
SH
chmod +x "$work/meldeamt.sh"

echo "==> kommune.09162000.meldeamt offers meldewesen.v1.Melderegister"
mkfifo "$work/provider.out"
# as_ PARTICIPANT: the CLI's TLS options for that participant's certificate
as_() { echo "--cert $pki/$1.crt --key $pki/$1.key --ca $pki/ca/chain.pem"; }
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ kommune.09162000.meldeamt) \
  serve meldewesen.v1.Melderegister --exec "$work/meldeamt.sh" >"$work/provider.out" 2>"$work/provider.log" &
pids+=($!)
exec 4<"$work/provider.out"
read -r -t 10 ready <&4 || { echo "demo: the provider did not start:" >&2; cat "$work/provider.log" >&2; exit 1; }
echo "    $ready"

echo "==> bund.bmi calls meldewesen.v1.Melderegister/Meldebescheinigung"
request="Familienname=Mustermann; Vorname=Erika; Geburtsdatum=1964-08-12"
echo "    request: $request"
# shellcheck disable=SC2046
reply=$(build/amtsbote --broker "$uri" $(as_ bund.bmi) call meldewesen.v1.Melderegister/Meldebescheinigung \
  --purpose "BMG §34" --data "$request")
echo "    reply:   $reply"

echo "==> a service nobody offers gives a clear error"
set +e
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ bund.bmi) call personenstand.v1.Register/Geburtsurkunde --data x 2>"$work/err.txt"
code=$?
set -e
echo "    exit code $code: $(cat "$work/err.txt")"

echo "==> what the broker offers now (amtsbote services)"
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ bund.bmi) services | sed 's/^/    /'

if [ -x build/bench/bench_calls ]; then
  echo "==> a short measurement through the broker (an echo provider, 100 B payloads, 1 s each)"
  # fields of bench_calls' result line, by name
  field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
  lat=$(build/bench/bench_calls --mode amtsbote --broker "$uri" --pki "$pki" --latency --size 100 --seconds 1 | grep '^result')
  echo "    latency, 1 call in flight:   p50 $(echo "$lat" | field p50_us) µs, p99 $(echo "$lat" | field p99_us) µs"
  thr=$(build/bench/bench_calls --mode amtsbote --broker "$uri" --pki "$pki" --inflight 100 --size 100 --seconds 1 | grep '^result')
  echo "    throughput, 100 in flight:   $(echo "$thr" | field calls_per_s) calls/s ($(echo "$thr" | field errors) errors)"
  echo "    (bench/run.sh compares these with raw ZeroMQ on this machine)"
fi

echo "==> what the broker logged (metadata only, never payloads)"
grep -E 'event=(tls_session|offer|provider_gone)' "$work/broker.log" | sed 's/^/    /' | head -n 12
echo "==> done; stopping everything the demo started"
