#!/usr/bin/env bash
# Amtsbote in one command: installs what is missing, builds, makes a development PKI, starts a
# broker with the embedded configuration below (mutual TLS), lets a ministry (bund.bmi) publish
# the registration offices' interface (proto/examples/meldewesen/v1/meldewesen.proto), a
# municipality (kommune.09162000.meldeamt) offer it from a shell script that speaks JSON, and the
# ministry call it with JSON, each known to the broker by its certificate alone, under an access
# policy, with an audit log and metrics; sends a request by store-and-forward to two
# registration offices (one offline) with receipts and a timeline, and an event to a durable
# subscriber that was away; shows a request
# and an interface change the broker refuses, a short throughput and latency measurement, and
# stops everything it started.
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
for p in bund.bmi kommune.09162000.meldeamt kommune.09184119.meldeamt bund.bench kommune.bench.worker; do
  bash certs/pki.sh issue "$pki" "$p" >/dev/null
done
echo "    participants: bund.bmi, kommune.09162000.meldeamt, kommune.09184119.meldeamt (and two for the measurement)"

# Who may do what: the ministries may ask the registration offices, for a legal basis; the
# registration offices offer the register; bund.bmi publishes the interface (examples/policy.yaml
# explains the format). Everything else is denied.
cat >"$work/policy.yaml" <<'YAML'
groups:
  bund: ["bund.*"]
  meldeaemter: ["kommune.????????.meldeamt"]
rules:
  - name: melde-auskunft
    who: "@bund"
    action: call
    resource: "meldewesen.v1.Melderegister/*"
    purposes: ["BMG §34", "BMG §45"]
  - name: melderegister-anbieten
    who: "@meldeaemter"
    action: offer
    resource: "meldewesen.v1.Melderegister/*"
  - name: anfragen-an-meldeaemter
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
  - name: meldewesen-veroeffentlichen
    who: bund.bmi
    action: schema-push
    resource: "meldewesen.*"
  - name: betrieb
    who: bund.bmi
    action: admin
    resource: "*"
  - name: messung
    who: bund.bench
    action: call
    resource: "bench.v1.*"
  - name: messung-anbieten
    who: kommune.bench.worker
    action: offer
    resource: "bench.v1.*"
YAML

# The embedded default: a broker on loopback with mutual TLS only, the access policy above, an
# audit log of every decision and metrics for the operator.
cat >"$work/broker.yaml" <<YAML
listen:
  - tls://127.0.0.1:*
data: $work/data
tls_cert: $pki/broker.crt
tls_key: $pki/broker.key
tls_ca: $pki/ca/chain.pem
tls_crl: $pki/ca/crl.pem
log_level: info
policy: $work/policy.yaml
audit_dir: $work/audit
metrics: 127.0.0.1:0
YAML

echo "==> starting amtsbote-broker (config: $work/broker.yaml)"
mkfifo "$work/broker.out"
build/amtsbote-broker --config "$work/broker.yaml" >"$work/broker.out" 2>"$work/broker.log" &
pids+=($!)
exec 3<"$work/broker.out"
uri="" metrics=""
while IFS= read -r -t 10 line <&3; do
  case "$line" in
    "listening on tls://"*) uri=${line#listening on } ;;
    "metrics on http://"*) metrics=${line#metrics on http://} ;;
    ready) break ;;
  esac
done
[ -n "$uri" ] || { echo "demo: the broker did not start; its log:" >&2; cat "$work/broker.log" >&2; exit 1; }
echo "    broker ready on $uri"

# as_ PARTICIPANT: the CLI's TLS options for that participant's certificate
as_() { echo "--cert $pki/$1.crt --key $pki/$1.key --ca $pki/ca/chain.pem"; }

echo "==> bund.bmi publishes the interface meldewesen.v1 (amtsbote schema push)"
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ bund.bmi) schema push \
  proto/examples/meldewesen/v1/meldewesen.proto --proto-path proto/examples | sed 's/^/    /'

# The municipality's registration office: a legacy case system reached through a command. The
# request arrives as JSON on stdin, the answer leaves as JSON on stdout; the broker checks both
# against the published interface.
cat >"$work/meldeamt.sh" <<'SH'
#!/bin/sh
request=$(cat)
name=$(printf '%s' "$request" | sed -n 's/.*"familienname": *"\([^"]*\)".*/\1/p')
cat <<JSON
{"aktenzeichen": "MB-09162000-2026-0001",
 "name": {"familienname": "$name", "vornamen": ["Erika"]},
 "geburtsdatum": {"jahr": 1964, "monat": 8, "tag": 12},
 "aktuelleWohnung": {"anschrift": {"strasse": "Marienplatz", "hausnummer": "8",
   "postleitzahl": "80331", "wohnort": "München", "gemeindeschluessel": "09162000"},
   "status": "HAUPTWOHNUNG", "einzug": {"jahr": 2019, "monat": 5, "tag": 1}},
 "ausstellendeBehoerde": "Landeshauptstadt München, Meldebehörde",
 "vermerke": {"auskunftssperre": "keine", "zweck": "$AMTSBOTE_PURPOSE"},
 "gefunden": true}
JSON
SH
chmod +x "$work/meldeamt.sh"

echo "==> kommune.09162000.meldeamt offers meldewesen.v1.Melderegister"
mkfifo "$work/provider.out"
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ kommune.09162000.meldeamt) \
  serve meldewesen.v1.Melderegister --exec "$work/meldeamt.sh" >"$work/provider.out" 2>"$work/provider.log" &
pids+=($!)
exec 4<"$work/provider.out"
read -r -t 10 ready <&4 || { echo "demo: the provider did not start:" >&2; cat "$work/provider.log" >&2; exit 1; }
echo "    $ready"

echo "==> bund.bmi calls meldewesen.v1.Melderegister/Meldebescheinigung (JSON in, JSON out)"
request='{"name": {"familienname": "Mustermann", "vornamen": ["Erika"]}, "geburtsdatum": {"jahr": 1964, "monat": 8, "tag": 12}, "geburtsort": "Berlin", "art": "EINFACH"}'
echo "    request: $request"
echo "    reply:"
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ bund.bmi) call meldewesen.v1.Melderegister/Meldebescheinigung \
  --purpose "BMG §34" --data "$request" | sed 's/^/      /'

echo "==> a request that does not fit the interface is refused, naming the field"
set +e
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ bund.bmi) call meldewesen.v1.Melderegister/Meldebescheinigung \
  --data '{"geburtsdatum": {"jahr": "neunzehnhundert"}}' 2>"$work/err.txt"
echo "    exit code $?: $(cat "$work/err.txt")"
set -e

echo "==> a breaking change to the published interface is refused with the rule it breaks"
mkdir -p "$work/v2/meldewesen/v1"
sed 's|  string postleitzahl = 3;|  uint32 postleitzahl = 3;|' proto/examples/meldewesen/v1/meldewesen.proto \
  >"$work/v2/meldewesen/v1/meldewesen.proto"
set +e
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ bund.bmi) schema check \
  "$work/v2/meldewesen/v1/meldewesen.proto" --proto-path "$work/v2" >"$work/check.txt" 2>&1
echo "    exit code $?:"
set -e
sed 's/^/      /' "$work/check.txt"

echo "==> a call without a legal basis is refused by the policy, naming the rule"
set +e
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ bund.bmi) call meldewesen.v1.Melderegister/Meldebescheinigung \
  --data "$request" 2>"$work/err.txt" >/dev/null
echo "    exit code $?: $(cat "$work/err.txt")"
set -e

echo "==> a service the policy does not name is denied by default, with a clear error"
set +e
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ bund.bmi) call personenstand.v1.Register/Geburtsurkunde --data x 2>"$work/err.txt"
code=$?
set -e
echo "    exit code $code: $(cat "$work/err.txt")"

echo "==> store-and-forward: bund.bmi sends a request to two registration offices; one is offline"
mreq='{"name": {"familienname": "Mustermann", "vornamen": ["Erika"]}, "geburtsdatum": {"jahr": 1964, "monat": 8, "tag": 12}, "anlass": "Rentenantrag", "art": "ERWEITERT"}'
ids=()
for to in kommune.09162000.meldeamt kommune.09184119.meldeamt; do
  # shellcheck disable=SC2046
  out=$(build/amtsbote --broker "$uri" $(as_ bund.bmi) send "$to" --schema meldewesen.v1.MeldebescheinigungAnfrage \
    --ttl 7d --purpose "BMG §34" "$mreq")
  echo "    to $to: $out (on the broker's disk before this answer)"
  ids+=("${out#accepted }")
done
echo "==> kommune.09162000.meldeamt takes its mailbox (amtsbote inbox --ack)"
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ kommune.09162000.meldeamt) inbox --ack --wait 1s >"$work/inbox.txt" 2>/dev/null
head -n 8 "$work/inbox.txt" | sed 's/^/    /'
echo "    ..."
echo "==> bund.bmi asks where its messages are (amtsbote status)"
for id in "${ids[@]}"; do
  # shellcheck disable=SC2046
  build/amtsbote --broker "$uri" $(as_ bund.bmi) status "$id" | sed -n '2,4p;7,$p' | sed 's/^/    /'
done
echo "==> later, kommune.09184119.meldeamt comes online and finds the request waiting"
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ kommune.09184119.meldeamt) inbox --ack --wait 1s >"$work/inbox2.txt" 2>/dev/null
head -n 1 "$work/inbox2.txt" | sed 's/^/    /'
echo "==> bund.bmi's own mailbox holds the receipts (the Laufzettel)"
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ bund.bmi) inbox --ack --wait 1s 2>/dev/null | sed 's/^/    /'

echo "==> events: bund.bmi follows moves with a durable subscription, then goes offline"
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ bund.bmi) subscribe 'meldewesen.umzug.>' --durable umzuege --wait 200ms 2>&1 | sed 's/^/    /'
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ kommune.09162000.meldeamt) publish meldewesen.umzug.09162000 \
  --schema meldewesen.v1.UmzugGemeldet '{"vorgangId": "U-2026-4711", "einzug": {"jahr": 2026, "monat": 11, "tag": 1}}' | sed 's/^/    kommune.09162000.meldeamt: /'
echo "    bund.bmi comes back and gets what was published meanwhile:"
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ bund.bmi) subscribe 'meldewesen.umzug.>' --durable umzuege --ack --wait 1s 2>/dev/null | sed 's/^/    /'

echo "==> what the broker offers now (amtsbote services, amtsbote schema list)"
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ bund.bmi) services | sed 's/^/    /'
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ bund.bmi) schema list | sed 's/^/    /'

if [ -x build/bench/bench_calls ]; then
  echo "==> a short measurement through the broker (an echo provider, 100 B payloads, 1 s each)"
  # fields of bench_calls' result line, by name
  field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
  lat=$(build/bench/bench_calls --mode amtsbote --broker "$uri" --pki "$pki" --latency --size 100 --seconds 1 | grep '^result')
  echo "    latency, 1 call in flight:   p50 $(echo "$lat" | field p50_us) µs, p99 $(echo "$lat" | field p99_us) µs"
  thr=$(build/bench/bench_calls --mode amtsbote --broker "$uri" --pki "$pki" --inflight 100 --size 100 --seconds 1 | grep '^result')
  echo "    throughput, 100 in flight:   $(echo "$thr" | field calls_per_s) calls/s ($(echo "$thr" | field errors) errors)"
  echo "    (bench/run.sh compares Amtsbote with raw ZeroMQ, NATS, Mosquitto and RabbitMQ on this machine)"
fi

echo "==> what the broker logged (metadata only, never payloads)"
# (awk reads to the end: `head` would leave its writer a SIGPIPE, which pipefail makes fatal)
grep -E 'event=(tls_session|offer|schema_pushed|call_refused|provider_gone|subscription_created)' "$work/broker.log" | awk 'NR <= 12 { print "    " $0 }'
echo "==> what the operator sees: /metrics (a few lines) and the audit log"
/usr/bin/python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://$metrics', timeout=5).read().decode())" |
  grep -E '^amtsbote_(service_calls_total|policy_denials_total|tls_handshakes_accepted_total|messages_accepted_total|messages_acknowledged_total|store_commit_duration_seconds_count)' | awk 'NR <= 9 { print "    " $0 }'
# shellcheck disable=SC2046
build/amtsbote --broker "$uri" $(as_ bund.bmi) services >/dev/null 2>&1 || true
build/amtsbote audit query "$work/audit" --participant bund.bmi 2>/dev/null | awk 'NR <= 3 { print "    " $0 }'
echo "    $(build/amtsbote audit verify "$work/audit" 2>&1 | awk 'NR == 1')"
echo "==> done; stopping everything the demo started"
