#!/usr/bin/env bash
# bench/run_flood.sh [--quick] [--reps N] - how much one flooding participant slows another's
# calls, with the broker's per-participant limits and without them.
#
# One broker binary, mutual TLS on 127.0.0.1, a throwaway PKI. bench_flood (bench/bench_flood.c)
# runs an echo provider (kommune.bench.worker), a victim caller (bund.victim, 4 calls of 100 B in
# flight) and, in phase B, a flooder (bund.flood, 500 calls in flight, each re-issued as soon as
# it ends, answered or RATE_LIMITED). Each repetition runs two configurations, in alternating
# order, each against a freshly started broker:
#   limits    the policy's limits: give bund.flood 2,000 requests per second (burst 2,000) and
#             100 calls in flight
#   nolimits  the same policy without a limits: section (and the broker's defaults: no rate,
#             10,000 calls in flight per participant)
# and in each, phase A (victim alone) and phase B (victim + flooder), whose order alternates too.
# Reports the victim's p50/p99 per phase, the p99 ratio B/A (median over repetitions of each
# repetition's ratio) against the goal from issue 8 (<= 2x with limits), the flooder's answered
# and RATE_LIMITED per second, and writes bench/results/flood-<date>.md with every raw line.
# Never asserts a time: the goal is reported.
#   --quick   1 repetition of 2 s (default 3 of 3 s)
#   --reps N  N repetitions (of 3 s, or 2 s with --quick before it)
#   AMTSBOTE_BUILD_DIR   build tree (default: <repo>/build)
#   AMTSBOTE_BROKER      the broker binary (default: the build tree's amtsbote-broker), to compare
#                        two builds of the broker
#   FLOOD_ARGS           more bench_flood options for every run (e.g. "--victim-rate 500")
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${AMTSBOTE_BUILD_DIR:-$root/build}
reps=3 secs=3
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) reps=1 secs=2 ;;
    --reps)
        [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "run_flood.sh: --reps needs a number" >&2; exit 2; }
        reps=$2
        shift
        ;;
    -h | --help)
        sed -n '2,24s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *)
        echo "usage: bench/run_flood.sh [--quick] [--reps N]" >&2
        exit 2
        ;;
    esac
    shift
done
broker_bin=${AMTSBOTE_BROKER:-$build/amtsbote-broker}
for bin in "$broker_bin" "$build/bench/bench_flood"; do
    [ -x "$bin" ] || { echo "run_flood.sh: $bin missing (cmake --build $build --target $(basename "$bin"))" >&2; exit 1; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/amtsbote-flood.XXXXXX")
broker_pid=""
cleanup() {
    if [ -n "$broker_pid" ]; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

pki=$tmp/pki
{
    bash "$root/certs/pki.sh" init "$pki" && bash "$root/certs/pki.sh" broker "$pki" broker &&
        for p in bund.victim bund.flood kommune.bench.worker; do
            bash "$root/certs/pki.sh" issue "$pki" "$p" || exit 1
        done
} >"$tmp/pki.log" 2>&1 || { cat "$tmp/pki.log" >&2; exit 1; }

# The limit is given to a group, as an operator would; the rules let the callers call and the
# provider offer the benchmark's service.
rules='rules:
  - {name: bench-call, who: "bund.*", action: call, resource: "bench.v1.*"}
  - {name: bench-offer, who: kommune.bench.worker, action: offer, resource: "bench.v1.*"}'
cat >"$tmp/limits.yaml" <<EOF
groups:
  flooders: [bund.flood]
limits:
  "@flooders": {rate: 2000, burst: 2000, calls_in_flight: 100}
$rules
EOF
cat >"$tmp/nolimits.yaml" <<EOF
groups:
  flooders: [bund.flood]
$rules
EOF

# run CONFIG REP [--b-first]: starts a broker with CONFIG's policy, runs bench_flood once against
# it, stops the broker; prints bench_flood's result lines prefixed with the configuration
run() {
    local cfg=$1 rep=$2 line uri=""
    shift 2
    rm -rf "$tmp/data"
    rm -f "$tmp/broker.out"
    mkfifo "$tmp/broker.out"
    "$broker_bin" --listen 'tls://127.0.0.1:*' --tls-cert "$pki/broker.crt" \
        --tls-key "$pki/broker.key" --tls-ca "$pki/ca/chain.pem" --tls-crl "$pki/ca/crl.pem" \
        --data "$tmp/data" --policy "$tmp/$cfg.yaml" --log-level warn \
        >"$tmp/broker.out" 2>"$tmp/broker.log" &
    broker_pid=$!
    exec 3<"$tmp/broker.out"
    while IFS= read -r -t 10 line <&3; do
        case "$line" in
        "listening on tls://"*) uri=${line#listening on } ;;
        ready) break ;;
        esac
    done
    [ -n "$uri" ] || { cat "$tmp/broker.log" >&2; exit 1; }
    local out st=0
    # shellcheck disable=SC2086
    out=$("$build/bench/bench_flood" --broker "$uri" --pki "$pki" --reps 1 --seconds "$secs" \
        --broker-pid "$broker_pid" "$@" ${FLOOD_ARGS:-} 2>"$tmp/bench.err") || st=$?
    kill "$broker_pid"
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=""
    exec 3<&-
    if [ "$st" != 0 ] || ! grep -q '^summary' <<<"$out"; then
        echo "run_flood.sh: $cfg rep $rep failed (exit $st): $out $(cat "$tmp/bench.err")" >&2
        exit 1
    fi
    [ -s "$tmp/bench.err" ] && sed "s/^/run_flood.sh: $cfg rep $rep: /" "$tmp/bench.err" >&2
    sed "s/^/config=$cfg rep=$rep /" <<<"$out"
}

field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
# the lower middle for an even count, as bench_flood's own medians
median() { grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

load0=$(cut -d' ' -f1-3 /proc/loadavg)
raw=$tmp/raw.txt
: >"$raw"
for rep in $(seq "$reps"); do
    order=(limits nolimits)
    ((rep % 2 == 0)) && order=(nolimits limits)
    for cfg in "${order[@]}"; do
        b_first=()
        ((rep % 2 == 0)) && b_first=(--b-first)
        run "$cfg" "$rep" "${b_first[@]}" >"$tmp/run.txt"
        cat "$tmp/run.txt" >>"$raw"
        grep ' summary ' "$tmp/run.txt" | sed 's/^/run_flood.sh: /' >&2
    done
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)

# per configuration: medians over the repetitions of each phase's p50/p99 and of the ratio
summary() {
    local cfg=$1
    local lines
    lines=$(grep "^config=$cfg .* summary " "$raw")
    for f in p50_a_us p99_a_us p50_b_us p99_b_us p99_ratio p50_ratio flood_ok_per_s flood_limited_per_s; do
        printf '%s ' "$(field "$f" <<<"$lines" | median)"
    done
    printf '%s\n' "$(field victim_errors <<<"$lines" | awk '{s += $1} END {print s + 0}')"
}
read -r l50a l99a l50b l99b lratio lratio50 lok llim lerr <<<"$(summary limits)"
read -r n50a n99a n50b n99b nratio nratio50 nok nlim nerr <<<"$(summary nolimits)"
verdict=$(awk -v r="$lratio" 'BEGIN {print (r <= 2.0) ? "met" : "NOT met"}')

victim="4 calls of 100 B in flight (closed loop)"
[ -n "${FLOOD_ARGS:-}" ] && victim="calls of 100 B as \`bench_flood ${FLOOD_ARGS}\` says (closed loop of 4 without those options)"
mkdir -p "$root/bench/results"
out=$root/bench/results/flood-$(date -u +%Y-%m-%d-%H%M%S).md
{
    echo "# One flooding participant: the victim's call latency with and without the flood"
    echo
    echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r), $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)."
    echo "Load average before: $load0; after: $load1."
    echo "Source: $(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown), build $build, broker $broker_bin."
    echo
    echo "Mutual TLS on 127.0.0.1, one broker per run. Victim bund.victim: $victim; flooder bund.flood: 500 calls in flight, each re-issued when it ends; both call the same echo provider. $reps repetition(s) of $secs s per phase; the order of the configurations and of the phases alternates."
    echo
    echo "- **limits**: the policy's \`limits:\` give the group of bund.flood \`{rate: 2000, burst: 2000, calls_in_flight: 100}\`."
    echo "- **nolimits**: the same policy without \`limits:\` (broker defaults: no rate, 10,000 calls in flight per participant)."
    echo
    echo "| configuration | victim p50 A / B (µs) | victim p99 A / B (µs) | p99 ratio B/A | p50 ratio B/A | flooder answered/s | flooder RATE_LIMITED/s | victim errors |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    printf '| limits | %s / %s | %s / %s | **%s** | %s | %s | %s | %s |\n' "$l50a" "$l50b" "$l99a" "$l99b" "$lratio" "$lratio50" "$lok" "$llim" "$lerr"
    printf '| nolimits | %s / %s | %s / %s | **%s** | %s | %s | %s | %s |\n' "$n50a" "$n50b" "$n99a" "$n99b" "$nratio" "$nratio50" "$nok" "$nlim" "$nerr"
    echo
    echo "Latencies and rates are medians over the repetitions; each ratio is the median of the repetitions' own ratios (B and A of one repetition ran next to each other)."
    echo
    echo "Goal (issue 8): with limits, the flood slows the victim's calls by at most 2x in p99: ratio $lratio, **$verdict**."
    echo "What the limits buy: p99 ratio without limits / with limits = $(awk -v a="$nratio" -v b="$lratio" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}')."
    echo
    echo "## Per repetition"
    echo
    echo "| configuration | rep | phase | victim calls/s | p50 µs | p99 µs | p99.9 µs | max µs | errors | flooder answered/s | RATE_LIMITED/s | broker CPU % | flooder CPU % |"
    echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    grep ' result ' "$raw" | while read -r l; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
            "$(field config <<<"$l")" "$(field rep <<<"$l" | head -1)" "$(field phase <<<"$l")" \
            "$(field calls_per_s <<<"$l")" "$(field p50_us <<<"$l")" "$(field p99_us <<<"$l")" \
            "$(field p999_us <<<"$l")" "$(field max_us <<<"$l")" "$(field errors <<<"$l")" \
            "$(field flood_ok_per_s <<<"$l")" "$(field flood_limited_per_s <<<"$l")" \
            "$(field cpu_broker_pct <<<"$l")" "$(field cpu_flooder_pct <<<"$l")"
    done
    echo
    echo "## Raw lines"
    echo
    echo '```'
    cat "$raw"
    echo '```'
} | tee "$out"
echo "written: $out" >&2
