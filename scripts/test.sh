#!/usr/bin/env bash
# Installs what is missing, builds into build/, and runs every test with CTest.
# On CI (CI=true) or with --sanitize it also builds into build-asan/ with
# AddressSanitizer and UndefinedBehaviorSanitizer and runs the suite there; on CI or with --fuzz
# it builds the libFuzzer targets with clang into build-fuzz/ and runs each for 20 s from its
# corpus (ctest -L fuzz; tests/fuzz/run.sh for long runs).
#   scripts/test.sh [--sanitize] [--fuzz] [-L LABEL] [other ctest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

sanitize=0 fuzz=0
[ "${CI:-}" = "true" ] && sanitize=1 && fuzz=1
args=()
for a in "$@"; do
  case "$a" in
    --sanitize) sanitize=1 ;;
    --no-sanitize) sanitize=0 ;;
    --fuzz) fuzz=1 ;;
    --no-fuzz) fuzz=0 ;;
    *) args+=("$a") ;;
  esac
done

ab_install_deps
werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
ab_build build -DAMTSBOTE_TESTS=ON -DAMTSBOTE_WERROR=$werror

echo "==> running the tests (build/)"
ctest --test-dir build --output-on-failure -j2 "${args[@]}"

if [ "$sanitize" = 1 ]; then
  ab_build build-asan -DAMTSBOTE_SANITIZE=ON -DAMTSBOTE_BENCH=OFF -DAMTSBOTE_WERROR=$werror
  echo "==> running the tests under AddressSanitizer and UndefinedBehaviorSanitizer (build-asan/)"
  # Every process writes its reports to a file as well, so that a leak or an error in a broker or
  # CLI that a test starts and whose exit status it does not look at still fails the run.
  logs=build-asan/sanitizer-logs
  rm -rf "$logs" && mkdir -p "$logs"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:log_path=$PWD/$logs/asan \
    UBSAN_OPTIONS=print_stacktrace=1:log_path=$PWD/$logs/ubsan \
    ctest --test-dir build-asan --output-on-failure -j2 "${args[@]}" || asan_rc=$?
  if [ -n "$(ls -A "$logs")" ]; then
    echo "==> sanitizer reports from processes the tests started:" >&2
    for f in "$logs"/*; do echo "--- $f" >&2; head -n 60 "$f" >&2; done
    exit 1
  fi
  [ "${asan_rc:-0}" = 0 ] || exit "$asan_rc"
  echo "==> no sanitizer report from any process (leaks included)"
fi

if [ "$fuzz" = 1 ]; then
  CC=clang ab_build build-fuzz -DAMTSBOTE_FUZZ=ON -DAMTSBOTE_TESTS=OFF -DAMTSBOTE_BENCH=OFF \
    -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
  echo "==> running the fuzz targets from their corpora, 20 s each (build-fuzz/)"
  ctest --test-dir build-fuzz --output-on-failure -L fuzz
fi
