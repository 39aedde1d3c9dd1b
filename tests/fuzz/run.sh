#!/usr/bin/env bash
# Long run of one fuzz target from its seed corpus: tests/fuzz/run.sh TARGET SECONDS [ARGS...]
# Uses the binaries of build-fuzz (see README.md; builds nothing itself). New inputs collect
# in build-fuzz/fuzz-work/TARGET (kept between runs), crashes, leaks and timeouts in
# build-fuzz/fuzz-artifacts/TARGET/. ARGS go to libFuzzer (e.g. -jobs=2, -max_len=8192).
# Runs under nice -n 10. Prints what it found and exits 1 when it found anything.
set -uo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 TARGET SECONDS [libFuzzer args]   (TARGET: a fuzz_* binary in build-fuzz/tests/fuzz)" >&2
    exit 2
fi
target=$1 seconds=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
build=${AB_FUZZ_BUILD:-$here/../../build-fuzz}
bin=$build/tests/fuzz/$target
if [ ! -x "$bin" ]; then
    echo "$bin not built; see tests/fuzz/README.md" >&2
    exit 2
fi
work=$build/fuzz-work/$target
art=$build/fuzz-artifacts/$target
mkdir -p "$work" "$art"
log=$build/fuzz-work/$target.log
before=$(ls "$art" | wc -l)
nice -n 10 "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$art/" "$@" "$work" "$here/corpus/$target" \
    >"$log" 2>&1
rc=$?
grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log"
grep -E '^#[0-9]+ +DONE' "$log" | tail -1
echo "corpus: $(ls "$work" | wc -l) inputs in $work; log $log"
after=$(ls "$art" | wc -l)
if [ "$rc" -eq 0 ] && [ "$after" -eq "$before" ]; then
    echo "found nothing in ${seconds}s"
    exit 0
fi
echo "FOUND (exit $rc):"
grep -E 'property violated|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|SUMMARY' \
    "$log" | head -20
echo "inputs:"
ls -t "$art" | head -$((after - before > 0 ? after - before : 1)) | sed "s|^|  $art/|"
echo "reproduce: $bin FILE"
exit 1
