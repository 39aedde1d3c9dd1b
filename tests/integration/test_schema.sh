#!/usr/bin/env bash
# Integration test of the schema registry through the real broker and CLI: push, check, list,
# show; every compatibility refusal reaches the publisher with its rule and field; calls and
# replies are validated and refused with the field path; JSON both ways through `call` and
# `serve --exec`; the registry survives a restart; a damaged record stops the broker with its
# name; require_schema.
#   test_schema.sh BROKER_BIN CLI_BIN PROTO_DIR
set -uo pipefail
BROKER=$1
CLI=$2
PROTO=$3
work=$(mktemp -d /tmp/amtsbote-schema-XXXXXX)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

broker_pid=""
uri=""
# start_broker DATA_DIR [FLAGS...]: starts a broker, sets uri and broker_pid
start_broker() {
  local data=$1
  shift
  rm -f "$work/broker.out"
  mkfifo "$work/broker.out"
  "$BROKER" --listen 'tcp://127.0.0.1:*' --insecure-plain-identities --data "$data" "$@" \
    >"$work/broker.out" 2>>"$work/broker.log" &
  broker_pid=$!
  pids+=($broker_pid)
  exec 3<"$work/broker.out"
  uri=""
  local line
  while IFS= read -r -t 10 line <&3; do
    case "$line" in
      "listening on tcp://"*) uri=${line#listening on } ;;
      ready) break ;;
    esac
  done
  [ -n "$uri" ] || { echo "broker did not start"; tail -5 "$work/broker.log"; exit 1; }
}
stop_broker() { kill "$broker_pid"; wait "$broker_pid" 2>/dev/null; exec 3<&-; }

# serve WHO SERVICE ARGS...: starts a provider, waits for its ready line, sets serve_pid
serve_pid=""
serve() {
  local who=$1 fifo
  shift
  fifo="$work/serve.$RANDOM"
  mkfifo "$fifo"
  "$CLI" --broker "$uri" --as "$who" serve "$@" >"$fifo" 2>>"$work/serve.log" &
  serve_pid=$!
  pids+=($serve_pid)
  local line=""
  read -r -t 10 line <"$fifo"
  case "$line" in ready:*) echo "$line" >"$work/ready"; return 0 ;; esac
  echo "provider did not start: $line"; tail -3 "$work/serve.log"
  return 1
}
as() { local who=$1; shift; "$CLI" --broker "$uri" --as "$who" "$@"; }

# the interface in versions: v1 as published, v2 with an addition, and breaking variants
mkdir -p "$work/v2/meldewesen/v1" "$work/bad/meldewesen/v1" "$work/other/andere/v1"
orig="$PROTO/meldewesen/v1/meldewesen.proto"
sed 's|  bytes signatur = 13; // detached signature of the issuing office|&\n  string hinweis = 14;|' \
  "$orig" >"$work/v2/meldewesen/v1/meldewesen.proto"
grep -q 'hinweis = 14' "$work/v2/meldewesen/v1/meldewesen.proto" || { echo "v2 not made"; exit 1; }
variant() { # variant NAME SED_EXPR: a breaking copy of v2
  mkdir -p "$work/$1/meldewesen/v1"
  sed "$2" "$work/v2/meldewesen/v1/meldewesen.proto" >"$work/$1/meldewesen/v1/meldewesen.proto"
  cmp -s "$work/$1/meldewesen/v1/meldewesen.proto" "$work/v2/meldewesen/v1/meldewesen.proto" &&
    { echo "variant $1 unchanged"; exit 1; }
}
variant retyped 's|  string postleitzahl = 3;|  uint32 postleitzahl = 3;|'
variant removed 's|  string zusatz = 6;||'
variant reserved 's|  string zusatz = 6;|  reserved 6; reserved "zusatz";|'
variant method 's|rpc Meldebescheinigung(MeldebescheinigungAnfrage)|rpc Meldebescheinigung(Name)|'
variant enumnum 's|  NEBENWOHNUNG = 2;|  NEBENWOHNUNG = 4;|'
cat >"$work/other/andere/v1/x.proto" <<'P'
syntax = "proto3";
package meldewesen.v1;
message Datum { string text = 1; }
P
protoc --include_imports --descriptor_set_out="$work/v1.pb" --proto_path="$PROTO" \
  --proto_path=/usr/include meldewesen/v1/meldewesen.proto || { echo "protoc failed"; exit 1; }

start_broker "$work/data"

# --- push, list, show
as bund.bmi schema list >"$work/out" 2>&1
expect "empty registry" 0 $? "$work/out" "no interface is registered"
as bund.bmi schema push "$work/v1.pb" >"$work/out" 2>&1
expect "push a descriptor set" 0 $? "$work/out" "meldewesen/v1/meldewesen.proto: new, version 1" \
  "$work/out" "accepted: 1 file registered as bund.bmi"
as bund.bmi schema push "$orig" --proto-path "$PROTO" >"$work/out" 2>&1
expect "push the same .proto again" 0 $? "$work/out" "unchanged, version 1"
as bund.bmi schema check "$work/v2/meldewesen/v1/meldewesen.proto" --proto-path "$work/v2" >"$work/out" 2>&1
expect "check an addition" 0 $? "$work/out" "updated, version 2 (not stored: check)" "$work/out" "compatible"
as bund.bmi schema list >"$work/out" 2>&1
grep -E '^meldewesen/v1/meldewesen.proto +1 +bund.bmi' "$work/out" >/dev/null && ok "check stored nothing" || bad "list after check: $(cat "$work/out")"
as bund.bmi schema push "$work/v2/meldewesen/v1/meldewesen.proto" --proto-path "$work/v2" >"$work/out" 2>&1
expect "push an addition" 0 $? "$work/out" "updated, version 2"
as kommune.09162000 schema show meldewesen.v1.Melderegister/Meldebescheinigung >"$work/out" 2>&1
expect "show by method" 0 $? "$work/out" "version:   2" "$work/out" "pushed at: $(date -u +%Y-%m-%d)T" "$work/out" \
  "meldewesen.v1.Melderegister/Meldebescheinigung(meldewesen.v1.MeldebescheinigungAnfrage) returns (meldewesen.v1.Meldebescheinigung)" \
  "$work/out" "message meldewesen.v1.Anschrift"
grep -q "VermerkeEntry" "$work/out" && bad "show lists a map entry as a message" || ok "map entries are not listed"
as kommune.09162000 schema show meldewesen/v1/meldewesen.proto --version 1 --descriptor-set "$work/got.pb" >"$work/out" 2>&1
expect "show version 1" 0 $? "$work/out" "version:   1"
cmp -s "$work/got.pb" "$work/v1.pb" && ok "version 1's descriptor set comes back as pushed" || bad "descriptor set of version 1 differs"
as kommune.09162000 schema show meldewesen.v1.Nichts >"$work/out" 2>&1
expect "show of an unknown name" 8 $? "$work/out" "no registered file defines meldewesen.v1.Nichts"
as kommune.09162000 schema show meldewesen.v1.Datum --version 9 >"$work/out" 2>&1
expect "show of a missing version" 8 $? "$work/out" "has no version 9"

# --- every breaking change is refused with its rule and the element at fault; nothing stored
refuse() { # refuse NAME VARIANT RULE ELEMENT [AS]
  as "${5:-bund.bmi}" schema push "$work/$2/meldewesen/v1/meldewesen.proto" --proto-path "$work/$2" >"$work/out" 2>&1
  expect "$1 refused" 9 $? "$work/out" "$3: $4" "$work/out" "nothing was stored"
}
refuse "retyped field" retyped field-type-changed "meldewesen.v1.Anschrift.postleitzahl (field 3)"
refuse "removed field" removed field-removed-not-reserved "meldewesen.v1.Anschrift.zusatz (field 6)"
refuse "changed method" method method-signature-changed "meldewesen.v1.Melderegister.Meldebescheinigung"
refuse "enum value renumbered" enumnum enum-value-number-changed "meldewesen.v1.Wohnungsstatus.NEBENWOHNUNG"
as bund.bmi schema check "$work/retyped/meldewesen/v1/meldewesen.proto" --proto-path "$work/retyped" >"$work/out" 2>&1
expect "check prints what would break" 9 $? "$work/out" "would be refused" "$work/out" "field-type-changed"
as bund.bmi schema push "$work/reserved/meldewesen/v1/meldewesen.proto" --proto-path "$work/reserved" >"$work/out" 2>&1
expect "removed and reserved is allowed" 0 $? "$work/out" "updated, version 3"
refuse "another publisher" v2 not-publisher "meldewesen/v1/meldewesen.proto" land.by.stmi
as land.by.stmi schema push "$work/other/andere/v1/x.proto" --proto-path "$work/other" >"$work/out" 2>&1
expect "a name of another file" 9 $? "$work/out" "name-taken: meldewesen.v1.Datum"
head -c 300 /dev/urandom >"$work/garbage.pb"
as bund.bmi schema push "$work/garbage.pb" >"$work/out" 2>&1
expect "garbage instead of a set" 9 $? "$work/out" "the descriptor set does not load"
printf 'syntax = "proto3";\nmessage {\n' >"$work/broken.proto"
as bund.bmi schema push "$work/broken.proto" --proto-path "$work" >"$work/out" 2>&1
expect "a .proto that does not compile" 8 $? "$work/out" "protoc could not compile"
as bund.bmi schema push >"$work/out" 2>&1; expect "push without a file" 2 $?
as bund.bmi schema frob >"$work/out" 2>&1; expect "unknown schema command" 2 $? "$work/out" "frob"
as bund.bmi schema list >"$work/out" 2>&1
grep -E '^meldewesen/v1/meldewesen.proto +3 ' "$work/out" >/dev/null && ok "refusals stored nothing" || bad "list: $(cat "$work/out")"

# --- JSON both ways: call and serve --exec through the registered interface
cat >"$work/mb.sh" <<'SH'
#!/bin/sh
# a registration office as a shell script: the request arrives as JSON, and it is told so
[ "$AMTSBOTE_FORMAT" = json ] || { echo "AMTSBOTE_FORMAT is '$AMTSBOTE_FORMAT'" >&2; exit 3; }
grep -q '"familienname": *"Muster"' || { echo "unexpected request" >&2; exit 2; }
cat <<JSON
{"aktenzeichen": "MB-1", "name": {"familienname": "Muster", "vornamen": ["Erika"]},
 "aktuelleWohnung": {"anschrift": {"postleitzahl": "51147", "wohnort": "Köln"}, "status": "HAUPTWOHNUNG"},
 "ausgestellt": "2026-11-27T10:00:00Z", "gefunden": true, "vermerke": {"sperre": "nein"}, "signatur": "AAEC"}
JSON
SH
chmod +x "$work/mb.sh"
serve kommune.05315000.meldeamt meldewesen.v1.Melderegister --exec "$work/mb.sh" || exit 1
grep -q "(JSON)" "$work/ready" && ok "serve knows the interface" || bad "ready line: $(cat "$work/ready")"
req='{"name": {"familienname": "Muster", "vornamen": ["Erika"]}, "geburtsdatum": {"jahr": 1964}, "art": "ERWEITERT"}'
as bund.bmi call meldewesen.v1.Melderegister/Meldebescheinigung --purpose 'BMG §34' --data "$req" >"$work/out" 2>&1
expect "JSON call and JSON reply" 0 $? "$work/out" '"aktenzeichen": "MB-1"' "$work/out" '"status": "HAUPTWOHNUNG"' \
  "$work/out" '"ausgestellt": "2026-11-27T10:00:00Z"' "$work/out" '"sperre": "nein"' "$work/out" '"gefunden": true'
as bund.bmi call meldewesen.v1.Melderegister/Meldebescheinigung --data '{"name": {"familienname": 5}}' >"$work/out" 2>&1
expect "JSON type mismatch names the field" 8 $? "$work/out" 'field `name.familienname`: expected string'
as bund.bmi call meldewesen.v1.Melderegister/Meldebescheinigung --data '{"nme": {}}' >"$work/out" 2>&1
expect "unknown JSON field" 8 $? "$work/out" 'unknown field `nme`'
as bund.bmi call meldewesen.v1.Melderegister/Meldebescheinigung --data '{"art": "SEHR"}' >"$work/out" 2>&1
expect "unknown enum name" 8 $? "$work/out" 'art'

# --- the broker validates: raw bytes that do not fit, unknown methods
printf '\012\005\012\003M\377r' | as bund.bmi call --raw meldewesen.v1.Melderegister/Meldebescheinigung >"$work/out" 2>&1
expect "invalid payload refused with its field" 9 $? "$work/out" \
  "SCHEMA_INVALID: the request is not a valid meldewesen.v1.MeldebescheinigungAnfrage: field name.familienname: string is not valid UTF-8"
printf '\012\377' | as bund.bmi call --raw meldewesen.v1.Melderegister/Meldebescheinigung >"$work/out" 2>&1
expect "truncated payload refused" 9 $? "$work/out" "runs past the end"
as bund.bmi call --raw meldewesen.v1.Melderegister/Gibtsnicht --data '' >"$work/out" 2>&1
expect "method not in the interface" 4 $? "$work/out" "has no method Gibtsnicht in its registered interface"
as kommune.x serve meldewesen.v1.Melderegister/Falsch --echo >"$work/out" 2>&1
expect "offer of a method not in the interface" 4 $? "$work/out" "has no method Falsch"
as bund.bmi call meldewesen.v1.Melderegister/Meldebescheinigung --data "$req" >"$work/out" 2>&1
expect "the provider still answers after the refusals" 0 $? "$work/out" '"aktenzeichen": "MB-1"'
kill "$serve_pid"; wait "$serve_pid" 2>/dev/null

# --- a provider whose reply does not fit: the caller learns it, nothing is forwarded
serve kommune.kaputt meldewesen.v1.Melderegister --raw --exec 'cat >/dev/null; printf "\012\001\377"' || exit 1
as bund.bmi call meldewesen.v1.Melderegister/Meldebescheinigung --data "$req" >"$work/out" 2>&1
expect "invalid reply refused" 7 $? "$work/out" "does not match the interface of meldewesen.v1.Melderegister/Meldebescheinigung"
sleep 0.3
grep -q "the broker refused 1 reply(ies); the latest: meldewesen.v1.Melderegister/Meldebescheinigung: SCHEMA_INVALID: .*(field aktenzeichen)" "$work/serve.log" &&
  ok "the provider is told why its reply was refused" || bad "provider's stderr: $(tail -3 "$work/serve.log")"
kill "$serve_pid"; wait "$serve_pid" 2>/dev/null
serve kommune.json meldewesen.v1.Melderegister --exec 'cat >/dev/null; echo "{\"foo\": 1}"' || exit 1
as bund.bmi call meldewesen.v1.Melderegister/Meldebescheinigung --data "$req" >"$work/out" 2>&1
expect "a command's JSON that does not fit" 7 $? "$work/out" 'not meldewesen.v1.Meldebescheinigung in JSON: unknown field `foo`'
kill "$serve_pid"; wait "$serve_pid" 2>/dev/null
grep -q "event=call_refused participant=bund.bmi service=meldewesen.v1.Melderegister/Meldebescheinigung code=SCHEMA_INVALID field=name.familienname" "$work/broker.log" &&
  ok "refusal logged with the field, not the value" || bad "no refusal line in the broker log"
if grep -q "Muster\|Köln" "$work/broker.log"; then bad "payload contents in the broker log"; else ok "no payload contents in the broker log"; fi

# --- the registry survives a restart
stop_broker
start_broker "$work/data"
as bund.bmi schema list >"$work/out" 2>&1
grep -E '^meldewesen/v1/meldewesen.proto +3 +bund.bmi' "$work/out" >/dev/null && ok "registry after a restart" || bad "list after restart: $(cat "$work/out")"
printf '\012\005\012\003M\377r' | as bund.bmi call --raw meldewesen.v1.Melderegister/Meldebescheinigung >"$work/out" 2>&1
expect "validation after a restart" 9 $? "$work/out" "not valid UTF-8"
stop_broker

# --- a damaged record is named, not served
/usr/bin/python3 - "$work/data/amtsbote.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("UPDATE schema_files SET descriptor_set = substr(descriptor_set, 1, length(descriptor_set) - 1) || x'00' WHERE version = 3")
db.commit()
PY
"$BROKER" --listen 'tcp://127.0.0.1:*' --insecure-plain-identities --data "$work/data" >"$work/out" 2>&1
code=$?
expect "damaged record stops the broker" 1 $code "$work/out" "schema file meldewesen/v1/meldewesen.proto version 3 is damaged"

# --- require_schema: a service that needs an interface cannot be offered or called before it has one
start_broker "$work/data2" --require-schema 'meldewesen.*'
as kommune.x serve meldewesen.v1.Melderegister --echo >"$work/out" 2>&1
expect "offer before the interface" 4 $? "$work/out" "needs a registered interface"
as bund.bmi call --raw meldewesen.v1.Melderegister/Meldebescheinigung --data '' >"$work/out" 2>&1
expect "call before the interface" 4 $? "$work/out" "needs a registered interface"
serve kommune.frei x.v1.Echo --echo || exit 1
as bund.bmi call x.v1.Echo/Echo --data 'frei' >"$work/out" 2>&1
expect "other services are not affected" 0 $? "$work/out" "frei"
as bund.bmi schema push "$work/v1.pb" >/dev/null 2>&1
serve kommune.x meldewesen.v1.Melderegister --echo || exit 1
ok "offer after the interface is pushed"
stop_broker

finish
