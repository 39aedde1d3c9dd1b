#!/usr/bin/env bash
# Regenerates the seed corpora of tests/fuzz/corpus/ from the example and test protos:
# descriptor sets for fuzz_schema_load, payloads encoded by protoc from text format for
# fuzz_schema_payload, JSON for fuzz_json, headers encoded by protoc for fuzz_wire, the policy
# files for fuzz_policy, broker config files for fuzz_config and the certificates of
# certs/pki.sh (DER) for fuzz_cert. fuzz_audit's seeds are written by hand. Files a fuzzer found (crash-*, regression-*)
# are left alone. Usage: tests/fuzz/make_corpus.sh   (needs protoc and openssl; builds nothing)
#
# The first byte of a payload or JSON seed picks the message type; the numbers below follow
# the table the targets print with AB_FUZZ_LIST_TYPES=1 (fixed order, see fuzz_common.h).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
corpus=$here/corpus
wkt=$(dirname "$(dirname "$(find /usr/include /usr/local/include -path '*/google/protobuf/timestamp.proto' | head -1)")")
wkt=$(dirname "$wkt")
ex=$root/proto/examples
st=$root/tests/unit/proto
mkdir -p "$corpus"/{fuzz_schema_load,fuzz_schema_payload,fuzz_json}

# ---- descriptor sets ----
L=$corpus/fuzz_schema_load
protoc -I"$ex" -I"$wkt" --include_imports --descriptor_set_out="$L/meldewesen.pb" \
    meldewesen/v1/meldewesen.proto
protoc -I"$ex" -I"$wkt" --descriptor_set_out="$L/meldewesen-noimports.pb" \
    meldewesen/v1/meldewesen.proto
for f in allkinds required service group; do
    protoc -I"$st" -I"$wkt" --include_imports --descriptor_set_out="$L/schematest-$f.pb" \
        "schematest/v1/$f.proto"
done
for c in several nested field-type-changed; do
    protoc -I"$root/tests/unit/compat/$c/v2" -I"$wkt" --include_imports \
        --descriptor_set_out="$L/compat-$c.pb" "$root"/tests/unit/compat/$c/v2/*.proto
done
printf '' >"$L/empty"
printf '\x0a\x00' >"$L/one-empty-file"
printf '\x0a\x06\x0a\x04a.pr' >"$L/truncated-name"

# ---- payloads: <selector byte><protobuf bytes> ----
P=$corpus/fuzz_schema_payload
enc() { # name selector set-dir proto-file type <<text
    local name=$1 sel=$2 inc=$3 file=$4 type=$5
    { printf "\\x$(printf %02x "$sel")"; protoc -I"$inc" -I"$wkt" --encode="$type" "$file"; } \
        >"$P/$name"
}
enc meldebescheinigung 6 "$ex" meldewesen/v1/meldewesen.proto meldewesen.v1.Meldebescheinigung <<'T'
aktenzeichen: "MB-2024-000123"
name { familienname: "Müller" vornamen: "Anna" vornamen: "Lena" geburtsname: "Schmidt" }
geburtsdatum { jahr: 1984 monat: 3 tag: 17 }
geburtsort: "Würzburg"
staatsangehoerigkeiten: "DE"
staatsangehoerigkeiten: "AT"
aktuelle_wohnung { anschrift { strasse: "Hauptstraße" hausnummer: "5a" postleitzahl: "97070"
  wohnort: "Würzburg" gemeindeschluessel: "09663000" } status: HAUPTWOHNUNG
  einzug { jahr: 2019 monat: 10 tag: 1 } }
frueheren_wohnungen { anschrift { strasse: "Am Markt" hausnummer: "1" postleitzahl: "96047"
  wohnort: "Bamberg" } status: ALLEINIGE_WOHNUNG einzug { jahr: 2009 } auszug { jahr: 2019 monat: 9 } }
ausgestellt { seconds: 1717430400 nanos: 500000000 }
ausstellende_behoerde: "Stadt Würzburg, Bürgerbüro"
vermerke { key: "auskunftssperre" value: "geprüft" }
vermerke { key: "hinweis" value: "" }
gefunden: true
signatur: "\x30\x45\x02\x21\x00\xff"
T
enc nicht-gefunden 6 "$ex" meldewesen/v1/meldewesen.proto meldewesen.v1.Meldebescheinigung <<'T'
aktenzeichen: "MB-2024-000124"
nicht_gefunden_grund: "keine Person mit diesen Angaben"
T
enc anfrage 5 "$ex" meldewesen/v1/meldewesen.proto meldewesen.v1.MeldebescheinigungAnfrage <<'T'
name { familienname: "Yılmaz" vornamen: "Zeynep" }
geburtsdatum { jahr: 1990 monat: 0 tag: 0 }
geburtsort: "İzmir"
anlass: "Wohngeldantrag"
art: ERWEITERT
T
enc umzug 8 "$ex" meldewesen/v1/meldewesen.proto meldewesen.v1.UmzugGemeldet <<'T'
vorgang_id: "3f0a"
name { familienname: "Weiß" }
alte_anschrift { wohnort: "Köln" }
neue_anschrift { wohnort: "Bonn" gemeindeschluessel: "05314000" zusatz: "bei Schulz" }
einzug { jahr: 2024 monat: 2 tag: 29 }
gemeldet_am { seconds: -62135596800 }
laufende_nummer: -9223372036854775808
T
enc datum 1 "$ex" meldewesen/v1/meldewesen.proto meldewesen.v1.Datum <<'T'
jahr: 4294967295 monat: 12 tag: 31
T
enc timestamp-max 0 "$ex" meldewesen/v1/meldewesen.proto google.protobuf.Timestamp <<'T'
seconds: 253402300799 nanos: 999999999
T
enc allkinds 11 "$st" schematest/v1/allkinds.proto schematest.v1.AllKinds <<'T'
f_double: -0.0 f_float: 1e-45 f_int64: -1 f_uint64: 18446744073709551615 f_int32: -2147483648
f_fixed64: 1 f_fixed32: 4294967295 f_bool: true f_string: "ä\t\"\\/\u2028"
f_inner { name: "x" werte: [1, -1, 2147483647] tiefer { tiefer { name: "tief" } } }
f_bytes: "\000\001\377" f_uint32: 7 f_farbe: BLAU f_sfixed32: -5 f_sfixed64: -6 f_sint32: -7
f_sint64: 9223372036854775807
r_int32: [0, 1, -1] r_int32_unpacked: [3, 4] r_double: [0.1, 1e308, -5e-324]
r_string: ["", "a"] r_inner { } r_inner { name: "b" } r_bytes: ["", "\xff"]
r_farbe: [ROT, GRUEN] r_sint64: [-1, 1] r_fixed32: [1, 2]
w_inner { werte: 5 } z_double: 3.5
m_inner { key: "k" value { name: "v" } } m_inner { key: "" value { } }
m_text { key: -1 value: "minus eins" } m_text { key: 2 value: "zwei" }
m_farbe { key: true value: GRUEN } m_farbe { key: false value: FARBE_UNBEKANNT }
zeit { seconds: 0 nanos: 1000 }
nested { art: EINS kinder { kinder { art: EINS } } }
hoch: 1
T
enc allkinds-oneof 11 "$st" schematest/v1/allkinds.proto schematest.v1.AllKinds <<'T'
w_bytes: "" z_bool: false f_float: inf r_double: [nan, -inf]
T
enc pflicht 16 "$st" schematest/v1/required.proto schematest.v1.Pflicht <<'T'
kennung: "K1" nummer: 42 text: "t" stufe: NORMAL packed_werte: [1, 2, 3] werte: [4, 5]
kind { kennung: "K2" nummer: -1 } teile { nr: 1 } teile { nr: 2 name: "zwei" } a_zahl: 9
by: "\x00"
T
# wire-level edge cases: unknown fields of every wire type, an unpacked packed field, a
# non-minimal varint, a repeated oneof member, a map entry without key
printf '\x0b\x08\x01\xf8\xff\xff\xff\x0f\x00\x91\x01\x01\x02\x03\x04\x05\x06\x07\x08' >"$P/unknown-fields"
printf '\x0b\xa0\x01\x01\xa0\x01\x02\xa2\x01\x02\x03\x04\xa8\x01\x05' >"$P/packed-and-not"
printf '\x0b\x28\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01' >"$P/varint-10-bytes"
printf '\x0b\xf0\x01\x01\xf0\x01\x02\x82\x02\x02\x0a\x00' >"$P/oneof-twice"
printf '\x0b\xc2\x02\x02\x12\x00\xc2\x02\x00' >"$P/map-entry-partial"
printf '\x10\x0a\x02K1' >"$P/pflicht-missing-required"

# ---- JSON: <selector byte><JSON text> ----
J=$corpus/fuzz_json
js() { printf "\\x$(printf %02x "$2")" >"$J/$1"; cat >>"$J/$1"; }
js meldebescheinigung 6 <<'T'
{"aktenzeichen":"MB-1","name":{"familienname":"Müller","vornamen":["Anna"]},
 "geburtsdatum":{"jahr":1984,"monat":3,"tag":17},"staatsangehoerigkeiten":["DE"],
 "aktuelleWohnung":{"anschrift":{"postleitzahl":"97070"},"status":"HAUPTWOHNUNG"},
 "frueherenWohnungen":[{"status":2},{}],"ausgestellt":"2024-06-03T16:00:00.5+02:00",
 "vermerke":{"a":"b","":"\u00e4"},"gefunden":true,"signatur":"MEUCIQD/"}
T
js anfrage 5 <<'T'
{"name":{"familienname":"Yılmaz"},"geburtsort":"İzmir","anlass":"x","art":"ERWEITERT"}
T
js umzug 8 <<'T'
{"vorgang_id":"3f0a","laufendeNummer":"-9223372036854775808","gemeldetAm":"0001-01-01T00:00:00Z","einzug":null}
T
js allkinds 11 <<'T'
{"fDouble":"NaN","fFloat":"-Infinity","fInt64":"123","fUint64":18446744073709551615,
 "fInt32":-2147483648,"fFixed64":"1","fFixed32":4294967295,"fBool":false,"fString":"\ud83d\ude00",
 "fInner":{"name":"x","werte":[1,"2",3e0],"tiefer":{}},"fBytes":"AAH/","fUint32":1.0,
 "fFarbe":"BLAU","fSfixed32":-1,"fSfixed64":"-2","fSint32":3,"fSint64":"-4",
 "rInt32":[1,2],"rInt32Unpacked":[3],"rDouble":[1e-300,"Infinity"],"rString":["a",""],
 "rInner":[{},{"werte":[]}],"rBytes":["","_-8="],"rFarbe":["ROT",7,5],"rSint64":["1"],
 "rFixed32":[0],"wText":"w","zDouble":-0.0,"mInner":{"k":{"name":"v"}},
 "mText":{"-1":"m","2147483647":"x"},"mFarbe":{"true":"GRUEN","false":0},
 "zeit":"1970-01-01T00:00:00.000000001Z","nested":{"art":"EINS","kinder":[{"kinder":[]}]},
 "hoch":4294967295}
T
js allkinds-proto-names 11 <<'T'
{"f_double":1.5,"r_int32_unpacked":[],"w_inner":{"werte":[5]},"z_bool":true,"m_farbe":{}}
T
js pflicht 16 <<'T'
{"kennung":"K","nummer":"1","u64":"18446744073709551615","by":"YQH/eg==","stufe":"NORMAL",
 "kind":{"kennung":"","nummer":0},"teile":[{"nr":1,"name":"n"}],"aText":"a","d":"-Infinity"}
T
js timestamp 0 <<'T'
"9999-12-31T23:59:59.999999999Z"
T
js datum-empty 1 <<'T'
{}
T
# ---- header frames: amtsbote.v1.Header of every kind, as clients and the broker send them ----
W=$corpus/fuzz_wire
mkdir -p "$W"
hdr() { protoc -I"$root/proto" --encode=amtsbote.v1.Header amtsbote/v1/amtsbote.proto >"$W/$1"; }
id='message_id: "\x01\x8f\xd1\x2a\x7b\x3c\x70\x01\x80\x11\x22\x33\x44\x55\x66\x77"'
hdr hello <<<"version: 1 kind: KIND_HELLO heartbeat_ms: 1000 max_payload: 4194304"
hdr call <<T
version: 1 kind: KIND_CALL $id service: "meldewesen.v1.Melderegister/Meldebescheinigung"
schema: "meldewesen.v1.MeldebescheinigungAnfrage" purpose: "BMG §34"
classification: VS_NUR_FUER_DEN_DIENSTGEBRAUCH deadline_ms: 5000
headers { key: "vorgang" value: "A-17" } headers { key: "sprache" value: "de" }
trace { traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" tracestate: "ab=1" }
T
hdr reply <<T
version: 1 kind: KIND_REPLY $id correlation_id: "\x01\x8f\xd1\x2a\x7b\x3c\x70\x01\x80\x11\x22\x33\x44\x55\x66\x78"
schema: "meldewesen.v1.Meldebescheinigung" sender: "kommune.09162000.meldeamt"
T
hdr error <<T
version: 1 kind: KIND_ERROR correlation_id: "\x01\x8f\xd1\x2a\x7b\x3c\x70\x01\x80\x11\x22\x33\x44\x55\x66\x78"
service: "meldewesen.v1.Melderegister/Meldebescheinigung"
error { code: FORBIDDEN text: "rule 'melde-auskunft' (policy.yaml:12) requires one of the purposes 'BMG §34'" field: "purpose" }
T
hdr offer <<<'version: 1 kind: KIND_OFFER service: "meldewesen.v1.Melderegister" schema: "meldewesen/v1/meldewesen.proto"'
hdr withdraw <<<'version: 1 kind: KIND_WITHDRAW service: "meldewesen.v1.Melderegister/Meldebescheinigung"'
hdr send <<T
version: 1 kind: KIND_SEND $id recipient: "land.by.stmi" schema: "meldewesen.v1.UmzugGemeldet"
purpose: "BMG §33" timestamp_ms: 1717430400000
T
hdr deliver <<T
version: 1 kind: KIND_DELIVER $id sender: "kommune.09162000.meldeamt" recipient: "land.by.stmi"
schema: "meldewesen.v1.UmzugGemeldet" timestamp_ms: 1717430400000 attempt: 2 sequence: 18446744073709551615
T
hdr ack <<<'version: 1 kind: KIND_ACK sequence: 42 subscription: "umzuege"'
hdr receipt <<T
version: 1 kind: KIND_RECEIPT $id receipt: EXPIRED timestamp_ms: 1717430400001 attempt: 5 sequence: 7
T
hdr publish <<<"version: 1 kind: KIND_PUBLISH $id topic: \"meldewesen.umzug.09162000\" schema: \"meldewesen.v1.UmzugGemeldet\""
hdr subscribe <<<'version: 1 kind: KIND_SUBSCRIBE topic: "meldewesen.>" subscription: "umzuege" credit: 100'
hdr event <<T
version: 1 kind: KIND_EVENT $id topic: "meldewesen.umzug.09162000" sender: "kommune.09162000.meldeamt"
subscription: "umzuege" sequence: 3 attempt: 1 timestamp_ms: 1717430400000
T
hdr credit <<<'version: 1 kind: KIND_CREDIT credit: 4294967295 subscription: "umzuege"'
hdr heartbeat <<<'version: 1 kind: KIND_HEARTBEAT'
# refused ones: a future version, no kind, a short id, a service name that is not UTF-8
hdr version-2 <<<'version: 2 kind: KIND_HELLO'
hdr no-kind <<<'version: 1'
hdr short-id <<<'version: 1 kind: KIND_CALL message_id: "\x01\x02"'
hdr service-not-utf8 <<<'version: 1 kind: KIND_CALL service: "a.B/\xc3\x28"' 2>/dev/null
# the largest header: 8192 bytes of map entries (the arena's worst case)
{ printf 'version: 1 kind: KIND_CALL '; for i in $(seq 1 1000); do printf 'headers {} '; done
  printf 'headers { key: "k" value: "%s" }\n' "$(head -c 2179 /dev/zero | tr '\0' v)"; } | hdr largest
printf '\x08\x01\x10\x02\x9a\x06\x00' >"$W/unknown-field"   # field 99, empty
# (edge-enum-grows-over-limit, 8192 bytes with a 5-byte negative enum that re-encodes in 10,
# was written by hand once and is left alone here)

# ---- policies: the example and the test fixtures ----
Y=$corpus/fuzz_policy
mkdir -p "$Y"
cp "$root/examples/policy.yaml" "$Y/example.yaml"
# the rule matrix of tests/unit/test_policy.c (s_policy), as the C string's text
sed -n '/^static const char \*s_policy =/,/;$/p' "$root/tests/unit/test_policy.c" |
    sed -n 's/^[^"]*"\(.*\)\\n"[^"]*$/\1/p; s/^[^"]*"\(.*\)\\n";$/\1/p' |
    sed 's/\\"/"/g' >"$Y/unit-matrix.yaml"
printf 'rules:\n  - {who: "*", action: call, resource: "*"}\n' >"$Y/allow-all.yaml"
printf 'groups:\n  a: ["@b"]\n' >"$Y/group-in-group.yaml"
printf 'rules: []\n---\nrules: []\n' >"$Y/two-documents.yaml"
printf 'clearances:\n  bund.*: GEHEIM\n' >"$Y/bad-level.yaml"

# ---- broker config files ----
C=$corpus/fuzz_config
mkdir -p "$C"
cat >"$C/tls.yaml" <<'T'
# a production-like broker
listen:
  - tls://0.0.0.0:7443
  - tcp://127.0.0.1:7450
data: /var/lib/amtsbote
tls_cert: /etc/amtsbote/broker.crt
tls_key: /etc/amtsbote/broker.key
tls_ca: /etc/amtsbote/ca/chain.pem
tls_crl: /etc/amtsbote/ca/crl.pem
tls12: true
policy: /etc/amtsbote/policy.yaml
audit_dir: /var/lib/amtsbote/audit
audit_background: yes
metrics: 127.0.0.1:9464
log_level: warn
heartbeat_ms: 1000
heartbeat_timeout_ms: 3000
max_payload: 4194304
require_schema: [meldewesen.*, statistik.v1.Statistik]
T
printf 'listen: tcp://127.0.0.1:*\ninsecure_plain_identities: true\n' >"$C/dev.yaml"
printf '{listen: [ipc:///tmp/ab.sock], io_threads: 2, export: /tmp/out}\n' >"$C/flow.yaml"
printf 'listen: tcp://127.0.0.1:1\nheartbeat_ms: 5000\n' >"$C/heartbeat-too-long.yaml"
printf 'listen: tcp://127.0.0.1:1\nmax_payload: 12x\n' >"$C/not-a-number.yaml"
printf 'listen: tcp://127.0.0.1:1\nlisten_on: x\n' >"$C/unknown-setting.yaml"
printf 'data: &d /x\naudit_dir: *d\n' >"$C/alias.yaml"

# ---- certificates (DER) from the development PKI ----
X=$corpus/fuzz_cert
mkdir -p "$X"
pki=$(mktemp -d /tmp/amtsbote-corpus-pki-XXXXXX)
trap 'rm -rf "$pki"' EXIT
"$root/certs/pki.sh" init "$pki" >/dev/null
"$root/certs/pki.sh" issue "$pki" kommune.09162000.meldeamt >/dev/null
"$root/certs/pki.sh" broker "$pki" broker >/dev/null
"$root/certs/pki.sh" bad "$pki" >/dev/null
der() { openssl x509 -in "$1" -outform DER -out "$X/$2"; }
der "$pki/kommune.09162000.meldeamt.crt" participant.der
der "$pki/broker.crt" broker.der
der "$pki/ca/root.crt" root-ca.der
for b in "$pki"/bad/*.crt; do der "$b" "bad-$(basename "$b" .crt).der"; done
cp "$pki/kommune.09162000.meldeamt.crt" "$X/participant.pem"

echo "corpus in $corpus:"
for d in "$corpus"/*; do echo "  $(basename "$d"): $(ls "$d" | wc -l) files"; done
