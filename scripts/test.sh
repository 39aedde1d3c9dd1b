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
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j2 "${args[@]}"
fi

if [ "$fuzz" = 1 ]; then
  CC=clang ab_build build-fuzz -DAMTSBOTE_FUZZ=ON -DAMTSBOTE_TESTS=OFF -DAMTSBOTE_BENCH=OFF \
    -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
  echo "==> running the fuzz targets from their corpora, 20 s each (build-fuzz/)"
  ctest --test-dir build-fuzz --output-on-failure -L fuzz
fi
