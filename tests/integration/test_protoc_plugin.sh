#!/usr/bin/env bash
# protoc-gen-amtsbote run by protoc on good and bad .proto files: what it writes, and the clear
# error it gives (through protoc, naming the file and method) for what Amtsbote cannot carry.
#   test_protoc_plugin.sh PLUGIN PROTO_DIR
set -uo pipefail
PLUGIN=$1
PROTOS=$2
work=$(mktemp -d /tmp/amtsbote-plugin-XXXXXX)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
bad() { failed=$((failed + 1)); echo "not ok - $1"; }

# gen NAME [OPT] FILE...: runs protoc with the plugin into $work/NAME; output in $work/NAME.err
gen() {
  local name=$1 opt=$2
  shift 2
  mkdir -p "$work/$name"
  protoc --plugin=protoc-gen-amtsbote="$PLUGIN" -I"$PROTOS" \
    --amtsbote_out="${opt}$work/$name" "$@" 2>"$work/$name.err"
}
# refused NAME NEEDLE FILE...: protoc fails, says NEEDLE, and writes nothing
refused() {
  local name=$1 needle=$2
  shift 2
  if gen "$name" "" "$@"; then bad "$name: protoc succeeded"; return; fi
  if ! grep -qF -- "$needle" "$work/$name.err"; then
    bad "$name: '$needle' not in: $(cat "$work/$name.err")"; return
  fi
  if [ -n "$(find "$work/$name" -type f)" ]; then bad "$name: files written"; return; fi
  ok "$name"
}

refused streaming "bad/streaming.proto: streaming methods are not supported by Amtsbote: behoerde.bad.v1.Strom/Fluss" \
  bad/streaming.proto
refused client_streaming "streaming methods are not supported by Amtsbote: behoerde.bad.v1.Sammler/Sammle" \
  bad/client_streaming.proto
# one bad file among good ones spoils the run, as protoc-c does too
refused streaming_among_good "behoerde.bad.v1.Strom/Fluss" \
  behoerde/land/by/v1/auskunft.proto bad/streaming.proto
refused no_package "bad/nopackage.proto: service OhnePaket is in a file without a package" \
  bad/nopackage.proto
refused name_clash "method behoerde.bad.v1.Markt/Offer: its C name 'offer' is taken" bad/offer.proto

if gen bogus_param "bogus:" zettel.proto; then bad "bogus parameter accepted"
elif grep -qF "unknown parameter 'bogus' (known: always)" "$work/bogus_param.err"; then ok "bogus parameter"
else bad "bogus parameter: $(cat "$work/bogus_param.err")"; fi

# several services, nested package, imported types: two files next to protoc-c's layout
if gen good "" behoerde/land/by/v1/auskunft.proto; then
  files=$(cd "$work/good" && find . -type f | sort | tr '\n' ' ')
  if [ "$files" = "./behoerde/land/by/v1/auskunft.ab.c ./behoerde/land/by/v1/auskunft.ab.h " ] &&
    grep -q '#include "behoerde/land/by/v1/auskunft.pb-c.h"' "$work/good/behoerde/land/by/v1/auskunft.ab.h" &&
    grep -q '^int behoerde__land__by__v1__auskunft__abfrage__call(ab_client_t \*client' "$work/good/behoerde/land/by/v1/auskunft.ab.h" &&
    grep -q 'BEHOERDE__LAND__BY__V1__REGISTER__AMT__PING__AB_METHOD "behoerde.land.by.v1.Register_Amt/Ping"' "$work/good/behoerde/land/by/v1/auskunft.ab.h"; then
    ok "good file"
  else
    bad "good file: $files"
  fi
else
  bad "good file: $(cat "$work/good.err")"
fi

# files without services: nothing, or with `always` a header stub and a source without functions
if gen noservice "" zettel.proto behoerde/common/v1/common.proto && [ -z "$(find "$work/noservice" -type f)" ]; then
  ok "no services: nothing written"
else
  bad "no services: $(cat "$work/noservice.err"; find "$work/noservice" -type f)"
fi
if gen always "always:" zettel.proto && [ -f "$work/always/zettel.ab.h" ] && [ -f "$work/always/zettel.ab.c" ] &&
  grep -q '#include "zettel.pb-c.h"' "$work/always/zettel.ab.h"; then
  ok "no services with always: header stub"
else
  bad "no services with always: $(cat "$work/always.err")"
fi

# not run by protoc
if echo "garbage" | "$PLUGIN" >/dev/null 2>"$work/direct.err"; then bad "garbage accepted"
elif grep -q "not a CodeGeneratorRequest" "$work/direct.err"; then ok "garbage on stdin"
else bad "garbage on stdin: $(cat "$work/direct.err")"; fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
