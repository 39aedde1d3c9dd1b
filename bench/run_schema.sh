#!/usr/bin/env bash
# bench/run_schema.sh [--quick] [--reps N] [--profile] - what the broker's schema validation costs.
#
# Two brokers of the same binary on free loopback ports, side by side: one whose registry holds
# proto/examples/meldewesen/v1/meldewesen.proto (pushed with `amtsbote schema push`), so that
# every call to meldewesen.v1.Melderegister/Meldebescheinigung and every reply is validated, and
# one with nothing registered (no validation). The same bench_calls caller and provider run
# against both, alternating, with the same real payloads: a MeldebescheinigungAnfrage (~400 B)
# and a 1 KiB Meldebescheinigung, encoded here from bench/meldewesen/*.txtpb with `protoc
# --encode`. 100 calls in flight; reports medians, validated/unvalidated throughput (goal: >= 0.90)
# and the broker's CPU per call; then the validation cost alone (bench_schema: ns per payload for
# ab_schema_validate and, for comparison, protobuf-c unpack + free). Before anything is timed it
# checks that the validating broker refuses a corrupted request (SCHEMA_INVALID) and a corrupted
# reply, and that the other broker does not validate. Writes bench/results/schema-<date>.md and
# .json. Stops every process it started, by PID. Exit status 1 when a run or a check failed; the
# goal is reported, never asserted.
#
#   --quick     2 repetitions of 1.5 s runs (< 30 s); default 5 repetitions of 3 s (< 90 s)
#   --reps N    N repetitions (1 to 50) instead: on a noisy machine more give a steadier median
#   --profile   also `perf record` the validating broker during one more run and bench_schema's
#               validation loop, and add the top symbols to the report (needs perf)
#   AMTSBOTE_BUILD_DIR   build tree to use (default: <repo>/build)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${AMTSBOTE_BUILD_DIR:-$root/build}

quick=0 profile=0 want_reps=0
while (($# > 0)); do
    case "$1" in
    --quick) quick=1 ;;
    --reps)
        [[ ${2:-} =~ ^[0-9]+$ ]] && ((${2} >= 1 && ${2} <= 50)) || {
            echo "run_schema.sh: --reps takes 1 to 50" >&2
            exit 2
        }
        want_reps=$2
        shift
        ;;
    --profile) profile=1 ;;
    -h | --help)
        sed -n '2,22s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *)
        echo "usage: bench/run_schema.sh [--quick] [--reps N] [--profile]" >&2
        exit 2
        ;;
    esac
    shift
done

if ((quick)); then
    reps=2 secs=1.5 micro_iter=50000 micro_rep=5
else
    reps=5 secs=3 micro_iter=200000 micro_rep=9
fi
((want_reps > 0)) && reps=$want_reps
warmup=2000
service=meldewesen.v1.Melderegister/Meldebescheinigung
req_type=meldewesen.v1.MeldebescheinigungAnfrage
reply_type=meldewesen.v1.Meldebescheinigung
proto_dir=$root/proto/examples
proto_file=meldewesen/v1/meldewesen.proto

tmp=$(mktemp -d "${TMPDIR:-/tmp}/amtsbote-bench-schema.XXXXXX")
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
    log "run_schema.sh: $*"
    exit 1
}

command -v protoc >/dev/null || die "protoc is needed (Debian: protobuf-compiler), as for the build"
if ((profile)); then
    command -v perf >/dev/null || die "--profile needs perf (Debian: linux-perf)"
fi

# ---- build ------------------------------------------------------------------------------------
if [[ ! -x $build/amtsbote-broker || ! -f $build/CMakeCache.txt ]]; then
    log "run_schema.sh: no $build/amtsbote-broker; configuring $build"
    cmake -S "$root" -B "$build" >"$tmp/build.log" 2>&1 ||
        { tail -n 40 "$tmp/build.log" >&2; die "cmake configure failed (log above)"; }
fi
# Only what this benchmark runs, incrementally, so a stale binary is never measured.
log "run_schema.sh: building amtsbote-broker amtsbote_cli bench_calls bench_schema in $build"
cmake --build "$build" -j2 --target amtsbote-broker amtsbote_cli bench_calls bench_schema \
    >"$tmp/build.log" 2>&1 || { tail -n 40 "$tmp/build.log" >&2; die "build failed (log above)"; }
broker_bin=$build/amtsbote-broker
cli_bin=$build/amtsbote
bench_bin=$build/bench/bench_calls
micro_bin=$build/bench/bench_schema
[[ -x $cli_bin ]] || die "no CLI at $cli_bin"

# ---- payloads: the real types, from text format -----------------------------------------------
# google/protobuf/timestamp.proto: where the build found descriptor.proto (libprotobuf-dev).
gproto=$(sed -n 's/^AB_GOOGLE_PROTO_DIR:PATH=//p' "$build/CMakeCache.txt")
gproto=${gproto:-/usr/include}
encode() { # encode TYPE TXTPB OUT
    protoc --encode="$1" --proto_path="$proto_dir" --proto_path="$gproto" "$proto_file" \
        <"$2" >"$3" 2>"$tmp/protoc.log" || { cat "$tmp/protoc.log" >&2; die "protoc --encode=$1 failed"; }
}
request=$tmp/anfrage.bin
reply=$tmp/meldebescheinigung.bin
encode "$req_type" "$here/meldewesen/anfrage.txtpb" "$request"
encode "$reply_type" "$here/meldewesen/meldebescheinigung.txtpb" "$reply"
protoc --include_imports --descriptor_set_out="$tmp/set.pb" --proto_path="$proto_dir" \
    --proto_path="$gproto" "$proto_file" || die "protoc --descriptor_set_out failed"
# Corrupted copies: a field whose length runs 127 bytes past the end of the message.
cp "$request" "$tmp/anfrage-bad.bin"
printf '\012\177' >>"$tmp/anfrage-bad.bin"
cp "$reply" "$tmp/meldebescheinigung-bad.bin"
printf '\012\177' >>"$tmp/meldebescheinigung-bad.bin"
req_size=$(stat -c %s "$request")
reply_size=$(stat -c %s "$reply")
log "run_schema.sh: request $req_type $req_size B, reply $reply_type $reply_size B"

# ---- processes --------------------------------------------------------------------------------
free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    else
        local p i
        for i in $(seq 200); do
            p=$((20000 + RANDOM % 40000))
            ss -Htln "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
        done
        die "no free port found"
    fi
}

# wait_ready LOGFILE PID NAME: waits up to 10 s for the process's "ready" line.
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

# start_broker NAME: a broker with its own data directory; sets uri_NAME and pid_NAME.
start_broker() {
    local uri
    uri=tcp://127.0.0.1:$(free_port)
    "$broker_bin" --listen "$uri" --insecure-plain-identities --data "$tmp/data-$1" \
        >"$tmp/broker-$1.log" 2>&1 &
    pids+=("$!")
    printf -v "pid_$1" '%s' "$!"
    printf -v "uri_$1" '%s' "$uri"
    wait_ready "$tmp/broker-$1.log" "$!" "amtsbote-broker ($1)"
}
start_broker validated
start_broker plain
# set by start_broker through printf -v:
# shellcheck disable=SC2154
: "$uri_validated" "$pid_validated" "$uri_plain" "$pid_plain"

# The interface, as a ministry would push it; the other broker's registry stays empty.
"$cli_bin" --broker "$uri_validated" --as bund.bench schema push "$proto_dir/$proto_file" \
    --proto-path "$proto_dir" >"$tmp/push.log" 2>&1 || { cat "$tmp/push.log" >&2; die "schema push failed"; }
grep -q "accepted" "$tmp/push.log" || { cat "$tmp/push.log" >&2; die "schema push not accepted"; }

# ---- sanity checks (not timed) ----------------------------------------------------------------
# check NAME WANT(ok|fail) NEEDLE BROKER REQUEST REPLY: a short run that must succeed, or fail
# with NEEDLE in bench_calls' diagnostics.
checks=()
check() {
    local name=$1 want=$2 needle=$3 b=$4 rc=0 uri pid
    uri=uri_$b pid=pid_$b
    timeout -k 5 60 "$bench_bin" --mode amtsbote --broker "${!uri}" --service "$service" \
        --request "$5" --reply "$6" --inflight 10 --warmup 0 --count 200 --seconds 5 \
        >"$tmp/check.out" 2>"$tmp/check.err" || rc=$?
    if [[ $want == ok && $rc -eq 0 ]] && grep -q ' errors=0 ' "$tmp/check.out"; then
        checks+=("ok: $name")
    elif [[ $want == fail && $rc -ne 0 ]] && grep -qF -- "$needle" "$tmp/check.err"; then
        checks+=("ok: $name ($(grep -oF -- "$needle" "$tmp/check.err" | head -n 1))")
    else
        checks+=("FAILED: $name (exit $rc: $(tail -n 2 "$tmp/check.err" | tr '\n' ' '))")
    fi
    log "run_schema.sh: check: ${checks[-1]}"
}
check "the validating broker passes the real request and reply" ok "" validated "$request" "$reply"
check "the validating broker refuses a corrupted request" fail \
    "SCHEMA_INVALID: the request is not a valid $req_type" validated "$tmp/anfrage-bad.bin" "$reply"
check "the validating broker refuses a corrupted reply" fail \
    "does not match the interface of $service" validated "$request" "$tmp/meldebescheinigung-bad.bin"
check "the broker without an interface passes the corrupted request (it does not validate)" ok "" \
    plain "$tmp/anfrage-bad.bin" "$reply"
failed=0
for c in "${checks[@]}"; do [[ $c == ok:* ]] || failed=1; done
((failed == 0)) || die "a sanity check failed; nothing timed (see above)"

# ---- validation alone -------------------------------------------------------------------------
micro=$tmp/micro.txt
"$micro_bin" --set "$tmp/set.pb" --iterations "$micro_iter" --repeat "$micro_rep" \
    "$req_type=$request" "$reply_type=$reply" >"$micro" 2>"$tmp/micro.err" ||
    { cat "$tmp/micro.err" >&2; die "bench_schema failed"; }
while read -r line; do log "  $line"; done <"$micro"

# ---- runs -------------------------------------------------------------------------------------
runs=$tmp/runs.txt
: >"$runs"
started=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)

# run_one BROKER REP: appends bench_calls' result line, tagged with broker= and rep=.
run_one() {
    local b=$1 uri pid out rc=0
    uri=uri_$b pid=pid_$b
    out=$(timeout -k 5 120 "$bench_bin" --mode amtsbote --broker "${!uri}" --hop-pid "${!pid}" \
        --service "$service" --request "$request" --reply "$reply" --inflight 100 \
        --seconds "$secs" --count 2000000 --warmup "$warmup" 2>"$tmp/err.txt") || rc=$?
    if [[ $rc -ne 0 || $out != result\ * ]]; then
        failed=1
        log "run_schema.sh: $b rep $2 failed (exit $rc): $(tail -n 3 "$tmp/err.txt")"
        [[ $out == result\ * ]] || return 0
    fi
    out+=" broker=$b rep=$2"
    printf '%s\n' "$out" >>"$runs"
    log "  $out"
}

for rep in $(seq "$reps"); do
    if ((rep % 2)); then order=(validated plain); else order=(plain validated); fi
    log "run_schema.sh: rep $rep/$reps (${order[*]})"
    for b in "${order[@]}"; do run_one "$b" "$rep"; done
done
elapsed=$(($(date +%s) - started))
load_end=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)

# ---- profile (optional) -----------------------------------------------------------------------
prof_broker=$tmp/perf-broker.txt
prof_micro=$tmp/perf-micro.txt
if ((profile)); then
    # perf_top DATA OUT: the 15 hottest symbols (self time).
    perf_top() {
        perf report -i "$1" --no-children --sort dso,symbol -g none --stdio 2>/dev/null |
            grep -E '^ +[0-9.]+%' | sed 's/[ -]*$//' | head -n 15 >"$2" || true
    }
    log "run_schema.sh: profiling the validating broker and bench_schema"
    timeout -k 5 $((${secs%.*} + 30)) perf record -F 2000 -g -p "$pid_validated" \
        -o "$tmp/perf-broker.data" >"$tmp/perf.log" 2>&1 &
    perf_pid=$!
    pids+=("$perf_pid")
    sleep 0.5
    timeout -k 5 120 "$bench_bin" --mode amtsbote --broker "$uri_validated" --service "$service" \
        --request "$request" --reply "$reply" --inflight 100 --seconds "$secs" --count 2000000 \
        --warmup "$warmup" >/dev/null 2>"$tmp/err.txt" || log "run_schema.sh: profiled run failed"
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    perf_top "$tmp/perf-broker.data" "$prof_broker"
    perf record -F 2000 -g -o "$tmp/perf-micro.data" "$micro_bin" --only validate \
        --set "$tmp/set.pb" --iterations "$micro_iter" --repeat 3 "$reply_type=$reply" \
        >"$tmp/perf-micro.log" 2>&1 || log "run_schema.sh: profiling bench_schema failed"
    perf_top "$tmp/perf-micro.data" "$prof_micro"
fi

# ---- report -----------------------------------------------------------------------------------
# median BROKER FIELD: the median (lower middle) over the repetitions, or "-". FIELD cpu_total_us
# is the sum of the cpu_*_us fields of a run.
median() {
    awk -v b="$1" -v f="$2" '
        $0 ~ " broker=" b " " {
            t = 0; found = 0
            for (i = 1; i <= NF; i++) {
                split($i, kv, "=")
                if (kv[1] == f) { print kv[2]; found = 1 }
                if (kv[1] ~ /^cpu_.*_us$/) t += kv[2]
            }
            if (!found && f == "cpu_total_us") printf "%.2f\n", t
        }' "$runs" | sort -g | awk '{ v[NR] = $0 } END { print NR ? v[int((NR + 1) / 2)] : "-" }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.3f", a / b }'; }
diff_() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-") print "-"; else printf "%.2f", a - b }'; }
q() { if [[ $1 == - ]]; then echo null; else echo "$1"; fi; }
# field FILE-LINE NAME: a key=value field of a line
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1"; }

# Paired ratios: validated / unvalidated calls/s within each repetition (the two runs were
# neighbours in time), and their median; steadier than the ratio of medians on a noisy machine.
paired=$(awk '
    { r = ""; b = ""; c = ""
      for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "rep") r = kv[2];
        if (kv[1] == "broker") b = kv[2]; if (kv[1] == "calls_per_s") c = kv[2] }
      v[r, b] = c; reps[r] = 1 }
    END { for (r in reps) if (v[r, "validated"] != "" && v[r, "plain"] > 0)
            printf "%.3f\n", v[r, "validated"] / v[r, "plain"] }' "$runs" | sort -g)
paired_median=$(awk '{ v[NR] = $0 } END { print NR ? v[int((NR + 1) / 2)] : "-" }' <<<"$paired")
paired_list=$(tr '\n' ' ' <<<"$paired" | sed 's/ $//')

cps_v=$(median validated calls_per_s) cps_p=$(median plain calls_per_s)
cps_ratio=$(ratio "$cps_v" "$cps_p")
hop_v=$(median validated cpu_hop_us) hop_p=$(median plain cpu_hop_us)
hop_delta=$(diff_ "$hop_v" "$hop_p")
micro_req=$(grep " type=$req_type " "$micro" || true)
micro_rep=$(grep " type=$reply_type " "$micro" || true)
v_req=$(field "$micro_req" validate_ns) v_rep=$(field "$micro_rep" validate_ns)
u_req=$(field "$micro_req" unpack_free_ns) u_rep=$(field "$micro_rep" unpack_free_ns)
v_call=$(awk -v a="$v_req" -v b="$v_rep" 'BEGIN { printf "%.2f", (a + b) / 1000 }')
verdict=$(awk -v r="$paired_median" 'BEGIN { if (r == "-") print "no data";
    else print (r + 0 >= 0.9 ? "met" : "NOT met") " (>= 0.90)" }')

stamp=$(date +%Y-%m-%d-%H%M%S)
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$root" diff --quiet HEAD 2>/dev/null || commit="$commit+dirty"
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo unknown)
zmqv=$(pkg-config --modversion libzmq 2>/dev/null || echo unknown)
pbcv=$(pkg-config --modversion libprotobuf-c 2>/dev/null || echo unknown)
btype=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt" 2>/dev/null || echo unknown)
btype=${btype:-"RelWithDebInfo (project default)"}

mkdir -p "$here/results"
md=$here/results/schema-$stamp.md
json=$here/results/schema-$stamp.json
rows=("calls/s|calls_per_s" "p50 µs|p50_us" "p99 µs|p99_us" "CPU µs/call, caller|cpu_caller_us"
    "CPU µs/call, broker|cpu_hop_us" "CPU µs/call, provider|cpu_echo_us"
    "CPU µs/call, all processes|cpu_total_us")
json_rows=()
{
    echo "# Schema validation: validating broker vs broker without an interface, $stamp"
    echo
    echo "commit $commit, build $btype, $(nproc) cores ($cpu), $(uname -sr), libzmq $zmqv," \
        "protobuf-c $pbcv; $reps repetition(s) of ${secs} s at 100 calls in flight (order" \
        "alternating), median shown; run took ${elapsed} s; load average $load_start before," \
        "$load_end after (other work on the machine skews both brokers, not always equally)."
    echo
    echo "\`$service\` over plain tcp:// on loopback: request \`$req_type\` $req_size B, reply" \
        "\`$reply_type\` $reply_size B (bench/meldewesen/*.txtpb). **validated**: the broker's" \
        "registry holds meldewesen.proto, so it validates every request and every reply;" \
        "**unvalidated**: same binary, nothing registered."
    echo
    echo "| metric | validated | unvalidated | validated/unvalidated |"
    echo "| --- | ---: | ---: | ---: |"
    for r in "${rows[@]}"; do
        IFS='|' read -r label f <<<"$r"
        a=$(median validated "$f") b=$(median plain "$f")
        printf '| %s | %s | %s | %s |\n' "$label" "$a" "$b" "$(ratio "$a" "$b")"
        json_rows+=("{\"metric\":\"$f\",\"validated\":$(q "$a"),\"unvalidated\":$(q "$b"),\"ratio\":$(q "$(ratio "$a" "$b")")}")
    done
    echo
    echo "**Throughput validated/unvalidated: $paired_median** (median of the per-repetition" \
        "ratios $paired_list; ratio of the medians $cps_ratio). Goal: validation costs <= 10 % of" \
        "throughput, i.e. >= 0.90: **$verdict**."
    echo
    echo "Broker CPU per call: $hop_v µs validated, $hop_p µs unvalidated: validation adds" \
        "**$hop_delta µs per call** (one request and one reply checked). The micro-benchmark" \
        "below predicts $v_call µs for the two."
    echo
    echo "## Validation alone (bench_schema)"
    echo
    echo "ns per payload, median of $micro_rep rounds of $micro_iter (fastest round in brackets);" \
        "both with the runtime descriptors the registry builds from the pushed descriptor set."
    echo
    echo "| type | bytes | ab_schema_validate | protobuf_c unpack + free_unpacked | validate/unpack |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for l in "$micro_req" "$micro_rep"; do
        printf '| %s | %s | %s (%s) | %s (%s) | %s |\n' "$(field "$l" type)" "$(field "$l" size)" \
            "$(field "$l" validate_ns)" "$(field "$l" validate_min_ns)" "$(field "$l" unpack_free_ns)" \
            "$(field "$l" unpack_free_min_ns)" "$(ratio "$(field "$l" validate_ns)" "$(field "$l" unpack_free_ns)")"
    done
    echo
    echo "## Checks before timing"
    echo
    for c in "${checks[@]}"; do echo "- $c"; done
    if ((profile)); then
        echo
        echo "## Profile: validating broker during a run (self time, top 15)"
        echo
        echo '```'
        cat "$prof_broker"
        echo '```'
        echo
        echo "## Profile: bench_schema --only validate, $reply_type (self time, top 15)"
        echo
        echo '```'
        cat "$prof_micro"
        echo '```'
    fi
    echo
    echo "Raw runs (bench_calls result lines; \`broker=\` and \`rep=\` added by run_schema.sh):"
    echo
    echo '```'
    cat "$runs"
    echo '```'
    echo
    echo "Raw micro-benchmark lines:"
    echo
    echo '```'
    cat "$micro"
    echo '```'
} >"$md"

json_array() {
    local i n=$#
    for ((i = 1; i <= n; i++)); do
        printf '  %s%s\n' "${!i}" "$( ((i < n)) && echo ,)"
    done
}
json_lines() { [[ -s $1 ]] && sed 's/\\/\\\\/g; s/"/\\"/g; s/.*/  "&"/; $!s/$/,/' "$1"; return 0; }
{
    printf '{"date":"%s","commit":"%s","build_type":"%s","cores":%s,"cpu":"%s","libzmq":"%s",' \
        "$stamp" "$commit" "$btype" "$(nproc)" "${cpu//\"/}" "$zmqv"
    printf '"protobuf_c":"%s","service":"%s","request_type":"%s","request_size":%s,' \
        "$pbcv" "$service" "$req_type" "$req_size"
    printf '"reply_type":"%s","reply_size":%s,"inflight":100,' "$reply_type" "$reply_size"
    printf '"load_before":"%s","load_after":"%s",' "$load_start" "$load_end"
    printf '"repetitions":%s,"seconds":%s,"seconds_taken":%s,"failed":%s,\n' \
        "$reps" "$secs" "$elapsed" "$([[ $failed == 1 ]] && echo true || echo false)"
    printf '"throughput_ratio":%s,"throughput_ratio_of_medians":%s,"paired_ratios":[%s],' \
        "$(q "$paired_median")" "$(q "$cps_ratio")" "$(tr '\n' ',' <<<"$paired" | sed 's/,$//')"
    printf '"goal":"%s","broker_cpu_delta_us":%s,\n' "$verdict" "$(q "$hop_delta")"
    printf '"micro":{"validate_request_ns":%s,"validate_reply_ns":%s,' "$(q "${v_req:--}")" "$(q "${v_rep:--}")"
    printf '"unpack_free_request_ns":%s,"unpack_free_reply_ns":%s},\n' "$(q "${u_req:--}")" "$(q "${u_rep:--}")"
    printf '"results":[\n'
    json_array "${json_rows[@]}"
    printf '],\n"runs":[\n'
    json_lines "$runs"
    printf '],\n"micro_runs":[\n'
    json_lines "$micro"
    printf '],\n"checks":[\n'
    printf '%s\n' "${checks[@]}" >"$tmp/checks.txt"
    json_lines "$tmp/checks.txt"
    printf ']}\n'
} >"$json"

echo
sed -n '/^| /p; /^\*\*Throughput/,/^$/p; /^Broker CPU/,/^$/p' "$md"
echo "written: ${md#"$root"/} ${json#"$root"/}"
((failed == 0)) || die "some runs failed (see above)"
