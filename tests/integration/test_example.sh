#!/usr/bin/env bash
# The example application clients/examples/meldewesen-client, built as a municipality's developer
# would: against an installed Amtsbote (find_package + amtsbote_generate, the plugin from the
# install's bin/), then run against a real broker: one instance serves, another calls.
#   test_example.sh BUILD_DIR SOURCE_DIR BROKER_BIN
set -uo pipefail
build=$1
src=$2
BROKER=$3
work=$(mktemp -d /tmp/amtsbote-example-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
bad() { failed=$((failed + 1)); echo "not ok - $1"; }
die() { bad "$1"; echo "$passed passed, $failed failed"; exit 1; }

prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >"$work/install.log" 2>&1 || die "install: $(tail -5 "$work/install.log")"
[ -x "$prefix/bin/protoc-gen-amtsbote" ] || die "protoc-gen-amtsbote not installed"
cfg=$(find "$prefix" -name amtsboteConfig.cmake | head -n 1)
[ -n "$cfg" ] && [ -f "$(dirname "$cfg")/amtsboteConfigVersion.cmake" ] &&
  [ -f "$(dirname "$cfg")/AmtsboteGenerate.cmake" ] || die "package config not installed"
ok "installed: library, plugin, package config"

# the installed tree is relocatable: move it and build from the new place
mv "$prefix" "$work/moved"
prefix=$work/moved
libdir=$(dirname "$(find "$prefix" -name 'libamtsbote.so' | head -n 1)")

# a clean environment: nothing of this build's cache or the developer's leaks in
if cmake -S "$src/clients/examples/meldewesen-client" -B "$work/app" -DCMAKE_PREFIX_PATH="$prefix" \
  -DMELDEWESEN_PROTO_DIR="$src/proto/examples" >"$work/configure.log" 2>&1 &&
  cmake --build "$work/app" >"$work/build.log" 2>&1; then
  ok "example configured and built against the install"
else
  cat "$work/configure.log" "$work/build.log" | tail -30
  die "example build"
fi
app=$work/app/meldewesen-client
[ -f "$work/app/amtsbote_gen/meldewesen-client/google/protobuf/timestamp.pb-c.c" ] &&
  ok "well-known import compiled in" || bad "timestamp.pb-c.c not generated"
if readelf -d "$app" | grep -q 'libamtsbote.so.0'; then ok "linked with libamtsbote.so.0"
else bad "not linked with the shared library"; fi

# a development broker on a plain listener
mkfifo "$work/broker.out"
"$BROKER" --listen 'tcp://127.0.0.1:*' --insecure-plain-identities --data "$work/data" \
  >"$work/broker.out" 2>"$work/broker.log" &
pids+=($!)
exec 3<"$work/broker.out"
uri=""
while IFS= read -r -t 10 line <&3; do
  case "$line" in
    "listening on tcp://"*) uri=${line#listening on } ;;
    ready) break ;;
  esac
done
[ -n "$uri" ] || die "broker did not start: $(cat "$work/broker.log")"

export LD_LIBRARY_PATH=$libdir
mkfifo "$work/serve.out"
"$app" --broker "$uri" --as kommune.05315000.meldeamt serve >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
pids+=($serve_pid)
line=""
read -r -t 10 line <"$work/serve.out" || true
case "$line" in
  "ready: meldewesen.v1.Melderegister") ok "example serves" ;;
  *) die "example did not serve: '$line' $(cat "$work/serve.err")" ;;
esac

"$app" --broker "$uri" --as bund.bmi call Mustermann Erika >"$work/call.out" 2>"$work/call.err"
rc=$?
if [ $rc -eq 0 ] && grep -q "^Aktenzeichen: MB-00001$" "$work/call.out" &&
  grep -q "^Anschrift: Heidestraße 17, 51147 Köln$" "$work/call.out" &&
  grep -q "^Ausgestellt: [0-9]* von Stadt Köln" "$work/call.out"; then
  ok "typed call through the broker"
else
  bad "typed call: rc=$rc $(cat "$work/call.out" "$work/call.err")"
fi
"$app" --broker "$uri" --as bund.bmi call Unbekannt >"$work/call2.out" 2>"$work/call2.err"
rc=$?
if [ $rc -eq 1 ] && grep -q "PROVIDER_ERROR: .*keine Person zu diesen Angaben" "$work/call2.err"; then
  ok "provider error reaches the caller"
else
  bad "provider error: rc=$rc $(cat "$work/call2.out" "$work/call2.err")"
fi
grep -q "Meldebescheinigung for bund.bmi (purpose: BMG §18 (Beispiel))" "$work/serve.err" &&
  ok "provider saw caller and purpose" || bad "provider log: $(cat "$work/serve.err")"

kill -TERM "$serve_pid"
wait "$serve_pid"
rc=$?
[ $rc -eq 0 ] && ok "serve stops on SIGTERM" || bad "serve exited with $rc"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
