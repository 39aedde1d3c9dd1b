#!/usr/bin/env bash
# bench/run.sh [--quick] - Amtsbote calls against the raw-libzmq floor, side by side, one run.
#
# Starts build/amtsbote-broker and build/bench/floor_forwarder on free loopback ports, runs every
# scenario against both (system order alternating), takes the median of the repetitions, prints a
# table of Amtsbote, floor and Amtsbote/floor, and writes bench/results/calls-<date>.md and .json.
# Stops every process it started, by PID. Exit status 1 when a run failed; the goals are reported,
# never asserted.
#
#   --quick   1 repetition and shorter runs (< 40 s); default 3 repetitions (< 3 min)
#   AMTSBOTE_BUILD_DIR   build tree to use (default: <repo>/build)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${AMTSBOTE_BUILD_DIR:-$root/build}

quick=0
case "${1:-}" in
--quick) quick=1 ;;
"") ;;
-h | --help)
    sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit 0
    ;;
*)
    echo "usage: bench/run.sh [--quick]" >&2
    exit 2
    ;;
esac

if ((quick)); then
    reps=1 lat_secs=3 tput_secs=1.5
else
    reps=3 lat_secs=5 tput_secs=3
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/amtsbote-bench.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }
die() {
    log "run.sh: $*"
    exit 1
}

# ---- build ------------------------------------------------------------------------------------
if [[ ! -x $build/amtsbote-broker || ! -f $build/CMakeCache.txt ]]; then
    log "run.sh: no $build/amtsbote-broker; configuring $build"
    cmake -S "$root" -B "$build" >"$tmp/build.log" 2>&1 ||
        { tail -n 40 "$tmp/build.log" >&2; die "cmake configure failed (log above)"; }
fi
# Only what the benchmark runs, incrementally, so a stale binary is never measured and a test that
# does not build cannot stop it; a no-op when everything is current.
log "run.sh: building amtsbote-broker bench_calls floor_forwarder in $build"
cmake --build "$build" -j2 --target amtsbote-broker bench_calls floor_forwarder \
    >"$tmp/build.log" 2>&1 || { tail -n 40 "$tmp/build.log" >&2; die "build failed (log above)"; }
broker_bin=$build/amtsbote-broker
bench_bin=$build/bench/bench_calls
floor_bin=$build/bench/floor_forwarder

# ---- processes --------------------------------------------------------------------------------
# A port nobody listens on right now, from the kernel; the race until the bind is accepted.
free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    else
        local p
        while :; do
            p=$((20000 + RANDOM % 40000))
            ss -Htln "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
        done
    fi
}

# wait_ready LOGFILE PID NAME: waits up to 10 s for a line "ready" from a process started here.
wait_ready() {
    local i
    for i in $(seq 100); do
        grep -qE '^ready\b' "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || { cat "$1" >&2; die "$3 exited before it was ready"; }
        sleep 0.1
    done
    cat "$1" >&2
    die "$3 not ready within 10 s"
}

broker_uri=tcp://127.0.0.1:$(free_port)
"$broker_bin" --listen "$broker_uri" --insecure-plain-identities >"$tmp/broker.log" 2>&1 &
broker_pid=$!
pids+=("$broker_pid")
wait_ready "$tmp/broker.log" "$broker_pid" amtsbote-broker

floor_uri=tcp://127.0.0.1:$(free_port)
"$floor_bin" "$floor_uri" >"$tmp/floor.log" 2>&1 &
floor_pid=$!
pids+=("$floor_pid")
wait_ready "$tmp/floor.log" "$floor_pid" floor_forwarder

# ---- runs -------------------------------------------------------------------------------------
scenarios=("latency 100" "latency 1024" "throughput 100" "throughput 1024")
runs=$tmp/runs.txt
: >"$runs"
failed=0
started=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)

# run_one SYSTEM SCENARIO SIZE: appends bench_calls' result line to $runs.
run_one() {
    local sys=$1 scen=$2 size=$3 args out rc
    if [[ $scen == latency ]]; then
        args=(--latency --seconds "$lat_secs" --count 1000000)
    else
        args=(--inflight 100 --seconds "$tput_secs" --count 2000000)
    fi
    if [[ $sys == amtsbote ]]; then
        args+=(--mode amtsbote --broker "$broker_uri" --hop-pid "$broker_pid")
    else
        args+=(--mode floor --endpoint "$floor_uri" --hop-pid "$floor_pid")
    fi
    rc=0
    out=$(timeout -k 5 120 "$bench_bin" "${args[@]}" --size "$size" 2>"$tmp/err.txt") || rc=$?
    if [[ $rc -ne 0 || $out != result\ * ]]; then
        failed=1
        log "run.sh: $sys $scen size=$size failed (exit $rc): $(tail -n 3 "$tmp/err.txt")"
        [[ $out == result\ * ]] || return 0
    fi
    printf '%s\n' "$out" >>"$runs"
    log "  $out"
}

k=0
for rep in $(seq "$reps"); do
    for sc in "${scenarios[@]}"; do
        read -r scen size <<<"$sc"
        if ((k % 2 == 0)); then order=(amtsbote floor); else order=(floor amtsbote); fi
        k=$((k + 1))
        log "run.sh: rep $rep/$reps $scen size=$size (${order[*]})"
        for sys in "${order[@]}"; do run_one "$sys" "$scen" "$size"; done
    done
done
elapsed=$(($(date +%s) - started))
load_end=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)

# ---- report -----------------------------------------------------------------------------------
# median SYSTEM SCENARIO SIZE FIELD: the median (lower middle) over the repetitions, or "-".
median() {
    awk -v sys="$1" -v scen="$2" -v size="$3" -v f="$4" '
        $0 ~ " system=" sys " " && $0 ~ " scenario=" scen " " && $0 ~ " size=" size " " {
            for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == f) print kv[2] }
        }' "$runs" | sort -g | awk '{ v[NR] = $0 } END { print NR ? v[int((NR + 1) / 2)] : "-" }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }

# verdict RATIO OP LIMIT
verdict() {
    awk -v r="$1" -v op="$2" -v l="$3" 'BEGIN {
        if (r == "-") { print "no data"; exit }
        ok = (op == ">=") ? (r + 0 >= l + 0) : (r + 0 <= l + 0)
        print (ok ? "met" : "NOT met") " (" op " " l ")" }'
}

stamp=$(date +%Y-%m-%d-%H%M%S)
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$root" diff --quiet HEAD 2>/dev/null || commit="$commit+dirty"
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo unknown)
zmqv=$(pkg-config --modversion libzmq 2>/dev/null || echo unknown)
btype=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt" 2>/dev/null || echo unknown)
btype=${btype:-"RelWithDebInfo (project default)"}

rows=()  # "scenario|size|metric label|field|goal op|goal limit"
for sc in "${scenarios[@]}"; do
    read -r scen size <<<"$sc"
    if [[ $scen == latency ]]; then
        rows+=("$scen|$size|p50 µs|p50_us|<=|1.2" "$scen|$size|p99 µs|p99_us||" "$scen|$size|p99.9 µs|p999_us||")
    else
        rows+=("$scen|$size|calls/s|calls_per_s|>=|0.8" "$scen|$size|p50 µs|p50_us||"
            "$scen|$size|CPU µs/call, caller|cpu_caller_us||"
            "$scen|$size|CPU µs/call, broker or forwarder|cpu_hop_us||"
            "$scen|$size|CPU µs/call, provider or worker|cpu_echo_us||")
    fi
done

mkdir -p "$here/results"
md=$here/results/calls-$stamp.md
json=$here/results/calls-$stamp.json
{
    echo "# Calls: Amtsbote vs raw-libzmq floor, $stamp"
    echo
    echo "commit $commit, build $btype, $(nproc) cores ($cpu), $(uname -sr), libzmq $zmqv;" \
        "$reps repetition(s), median shown; latency runs ${lat_secs} s, throughput runs ${tput_secs} s" \
        "at 100 in flight; run took ${elapsed} s; load average $load_start before, $load_end after" \
        "(other work on the machine skews both systems, not always equally)."
    echo
    echo "| scenario | payload | metric | Amtsbote | floor | Amtsbote/floor | goal |"
    echo "| --- | ---: | --- | ---: | ---: | ---: | --- |"
} >"$md"
json_rows=()
q() { if [[ $1 == - ]]; then echo null; else echo "$1"; fi; }
for row in "${rows[@]}"; do
    IFS='|' read -r scen size label field op limit <<<"$row"
    a=$(median amtsbote "$scen" "$size" "$field")
    f=$(median floor "$scen" "$size" "$field")
    r=$(ratio "$a" "$f")
    goal=""
    [[ -n $op ]] && goal=$(verdict "$r" "$op" "$limit")
    printf '| %s | %s B | %s | %s | %s | %s | %s |\n' "$scen" "$size" "$label" "$a" "$f" "$r" "$goal" >>"$md"
    json_rows+=("{\"scenario\":\"$scen\",\"size\":$size,\"metric\":\"$field\",\"amtsbote\":$(q "$a"),\"floor\":$(q "$f"),\"ratio\":$(q "$r"),\"goal\":\"$goal\"}")
done
{
    echo
    echo "Ratios are Amtsbote divided by the floor: for calls/s higher is better (goal >= 0.8 at"
    echo "100 in flight), for latency lower is better (goal p50 <= 1.2). CPU µs/call is the CPU time"
    echo "(user + system, all threads) each process spent per call in the measured window. Raw runs:"
    echo
    echo '```'
    cat "$runs"
    echo '```'
} >>"$md"
{
    printf '{"date":"%s","commit":"%s","build_type":"%s","cores":%s,"cpu":"%s","libzmq":"%s",' \
        "$stamp" "$commit" "$btype" "$(nproc)" "${cpu//\"/}" "$zmqv"
    printf '"load_before":"%s","load_after":"%s",' "$load_start" "$load_end"
    printf '"repetitions":%s,"latency_seconds":%s,"throughput_seconds":%s,"failed":%s,\n' \
        "$reps" "$lat_secs" "$tput_secs" "$([[ $failed == 1 ]] && echo true || echo false)"
    printf '"results":[\n'
    for i in "${!json_rows[@]}"; do
        sep=,
        ((i < ${#json_rows[@]} - 1)) || sep=
        printf '  %s%s\n' "${json_rows[$i]}" "$sep"
    done
    printf '],\n'
    printf '"runs":[\n'
    sed 's/.*/  "&"/; $!s/$/,/' "$runs"
    printf ']}\n'
} >"$json"

echo
sed -n '/^| scenario/,/^$/p' "$md"
echo "written: ${md#"$root"/} ${json#"$root"/}"
((failed == 0)) || die "some runs failed (see above)"
