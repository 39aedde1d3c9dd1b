#!/usr/bin/env bash
# bench/run_calls.sh [--quick] [--no-tls] - Amtsbote calls against the raw-libzmq floor, side by side.
#
# Starts build/amtsbote-broker and build/bench/floor_forwarder on free loopback ports, runs every
# scenario against both (system order alternating), takes the median of the repetitions, prints a
# table of Amtsbote, floor and Amtsbote/floor, and writes bench/results/calls-<date>.md and .json.
# Then the same over mutual TLS: a throwaway PKI (certs/pki.sh), a second broker on tls://, and
# the floor reached through stunnel (client and server mode, client certificates verified).
# Stops every process it started, by PID. Exit status 1 when a run failed; the goals are reported,
# never asserted.
#
#   --quick    1 repetition and shorter runs (< 60 s); default 3 repetitions (< 5 min)
#   --no-tls   plain tcp:// only (< 40 s quick, < 3 min full)
#   AMTSBOTE_BUILD_DIR   build tree to use (default: <repo>/build)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${AMTSBOTE_BUILD_DIR:-$root/build}

quick=0 tls=1
for arg in "$@"; do
    case "$arg" in
    --quick) quick=1 ;;
    --no-tls) tls=0 ;;
    -h | --help)
        sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *)
        echo "usage: bench/run_calls.sh [--quick] [--no-tls]" >&2
        exit 2
        ;;
    esac
done

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
    log "run_calls.sh: $*"
    exit 1
}

# ---- tools for the mTLS part -----------------------------------------------------------------
# stunnel (Debian: stunnel4) and openssl (certs/pki.sh); installed with apt-get when root, as
# scripts/deps.sh does, otherwise named.
if ((tls)); then
    need=()
    command -v stunnel >/dev/null || need+=(stunnel4)
    command -v openssl >/dev/null || need+=(openssl)
    if ((${#need[@]})); then
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
            log "run_calls.sh: installing ${need[*]}"
            export DEBIAN_FRONTEND=noninteractive
            { timeout 300 apt-get update -qq &&
                timeout 300 apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
                >"$tmp/apt.log" 2>&1 || { tail -n 20 "$tmp/apt.log" >&2; die "apt-get install ${need[*]} failed"; }
        else
            die "missing ${need[*]}: sudo apt-get install -y ${need[*]} (or run with --no-tls)"
        fi
    fi
fi

# ---- build ------------------------------------------------------------------------------------
if [[ ! -x $build/amtsbote-broker || ! -f $build/CMakeCache.txt ]]; then
    log "run_calls.sh: no $build/amtsbote-broker; configuring $build"
    cmake -S "$root" -B "$build" >"$tmp/build.log" 2>&1 ||
        { tail -n 40 "$tmp/build.log" >&2; die "cmake configure failed (log above)"; }
fi
# Only what the benchmark runs, incrementally, so a stale binary is never measured and a test that
# does not build cannot stop it; a no-op when everything is current.
log "run_calls.sh: building amtsbote-broker bench_calls floor_forwarder in $build"
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
        local p i
        for i in $(seq 200); do
            p=$((20000 + RANDOM % 40000))
            ss -Htln "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
        done
        die "no free port found"
    fi
}

# wait_ready LOGFILE PID NAME [PATTERN]: waits up to 10 s for a line matching PATTERN (default
# "ready") from a process started here.
wait_ready() {
    local i pat=${4:-'^ready\b'}
    for i in $(seq 100); do
        grep -qE "$pat" "$1" 2>/dev/null && return 0
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

floor_port=$(free_port)
floor_uri=tcp://127.0.0.1:$floor_port
"$floor_bin" "$floor_uri" >"$tmp/floor.log" 2>&1 &
floor_pid=$!
pids+=("$floor_pid")
wait_ready "$tmp/floor.log" "$floor_pid" floor_forwarder

if ((tls)); then
    # A throwaway PKI: the broker's certificate (also the floor's stunnel server's), the caller
    # bund.bench and the provider kommune.bench.worker (bench_calls --pki reads these names).
    pki=$tmp/pki
    {
        bash "$root/certs/pki.sh" init "$pki" &&
            bash "$root/certs/pki.sh" broker "$pki" broker &&
            bash "$root/certs/pki.sh" issue "$pki" bund.bench &&
            bash "$root/certs/pki.sh" issue "$pki" kommune.bench.worker
    } >"$tmp/pki.log" 2>&1 || { cat "$tmp/pki.log" >&2; die "certs/pki.sh failed"; }

    "$broker_bin" --listen 'tls://127.0.0.1:*' --tls-cert "$pki/broker.crt" --tls-key "$pki/broker.key" \
        --tls-ca "$pki/ca/chain.pem" --tls-crl "$pki/ca/crl.pem" >"$tmp/broker-tls.log" 2>&1 &
    tls_broker_pid=$!
    pids+=("$tls_broker_pid")
    wait_ready "$tmp/broker-tls.log" "$tls_broker_pid" "amtsbote-broker (tls)"
    tls_broker_uri=$(sed -n 's/^listening on \(tls:\/\/.*\)$/\1/p' "$tmp/broker-tls.log" | head -n 1)
    [[ -n $tls_broker_uri ]] || { cat "$tmp/broker-tls.log" >&2; die "the tls broker named no tls:// address"; }

    # The mTLS floor: caller and worker DEALERs -> stunnel client (presents bund.bench, verifies the
    # server against the chain and the name) -> stunnel server (presents the broker certificate,
    # requires and verifies a client certificate against the chain and CRL, TLS 1.3 only, as the
    # broker does) -> floor_forwarder's plain port. Two processes, so each side's CPU is its own.
    # bench_calls' floor worker and callers share one endpoint, so one client service carries both.
    stunnel_srv_port=$(free_port)
    stunnel_cli_port=$(free_port)
    cat >"$tmp/stunnel-server.conf" <<CONF
foreground = yes
pid =
[floor-server]
accept = 127.0.0.1:$stunnel_srv_port
connect = 127.0.0.1:$floor_port
cert = $pki/broker.crt
key = $pki/broker.key
CAfile = $pki/ca/chain.pem
CRLfile = $pki/ca/crl.pem
verifyChain = yes
sslVersionMin = TLSv1.3
CONF
    cat >"$tmp/stunnel-client.conf" <<CONF
foreground = yes
pid =
[floor-client]
client = yes
accept = 127.0.0.1:$stunnel_cli_port
connect = 127.0.0.1:$stunnel_srv_port
cert = $pki/bund.bench.crt
key = $pki/bund.bench.key
CAfile = $pki/ca/chain.pem
verifyChain = yes
checkHost = localhost
sslVersionMin = TLSv1.3
CONF
    stunnel "$tmp/stunnel-server.conf" >"$tmp/stunnel-server.log" 2>&1 &
    stunnel_srv_pid=$!
    pids+=("$stunnel_srv_pid")
    wait_ready "$tmp/stunnel-server.log" "$stunnel_srv_pid" "stunnel (server)" 'Configuration successful'
    stunnel "$tmp/stunnel-client.conf" >"$tmp/stunnel-client.log" 2>&1 &
    stunnel_cli_pid=$!
    pids+=("$stunnel_cli_pid")
    wait_ready "$tmp/stunnel-client.log" "$stunnel_cli_pid" "stunnel (client)" 'Configuration successful'
    floor_tls_uri=tcp://127.0.0.1:$stunnel_cli_port
fi

# ---- runs -------------------------------------------------------------------------------------
scenarios=("latency 100" "latency 1024" "throughput 100" "throughput 1024")
transports=(plain)
((tls)) && transports+=(mtls)
# Warm-up calls before the measured window: fewer at 1 in flight, where a call over mTLS on a VM
# takes milliseconds and 2000 of them would double the run.
warmup_lat=500 warmup_tput=2000
runs=$tmp/runs-plain.txt
runs_tls=$tmp/runs-mtls.txt
: >"$runs"
: >"$runs_tls"
failed=0
started=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)

# cpu_ticks PID: user + system clock ticks of a process (all threads), from /proc/PID/stat.
cpu_ticks() {
    local line rest
    read -r line <"/proc/$1/stat" || { echo 0; return; }
    rest=${line##*) }
    # shellcheck disable=SC2086
    set -- $rest
    echo $((${12} + ${13}))
}

# run_one TRANSPORT SYSTEM SCENARIO SIZE: appends bench_calls' result line to that transport's file.
run_one() {
    local tr=$1 sys=$2 scen=$3 size=$4 args out rc file=$runs s0=0 c0=0 s1 c1 calls warmup
    if [[ $scen == latency ]]; then
        args=(--latency --seconds "$lat_secs" --count 1000000)
        warmup=$warmup_lat
    else
        args=(--inflight 100 --seconds "$tput_secs" --count 2000000)
        warmup=$warmup_tput
    fi
    args+=(--warmup "$warmup")
    if [[ $tr == plain && $sys == amtsbote ]]; then
        args+=(--mode amtsbote --broker "$broker_uri" --hop-pid "$broker_pid")
    elif [[ $tr == plain ]]; then
        args+=(--mode floor --endpoint "$floor_uri" --hop-pid "$floor_pid")
    elif [[ $sys == amtsbote ]]; then
        args+=(--mode amtsbote --broker "$tls_broker_uri" --pki "$pki" --hop-pid "$tls_broker_pid")
        file=$runs_tls
    else
        args+=(--mode floor --endpoint "$floor_tls_uri" --hop-pid "$floor_pid")
        file=$runs_tls
        s0=$(cpu_ticks "$stunnel_srv_pid") c0=$(cpu_ticks "$stunnel_cli_pid")
    fi
    rc=0
    out=$(timeout -k 5 120 "$bench_bin" "${args[@]}" --size "$size" 2>"$tmp/err.txt") || rc=$?
    if [[ $rc -ne 0 || $out != result\ * ]]; then
        failed=1
        log "run_calls.sh: $tr $sys $scen size=$size failed (exit $rc): $(tail -n 3 "$tmp/err.txt")"
        [[ $out == result\ * ]] || return 0
    fi
    if [[ $tr == mtls && $sys == floor ]]; then
        # stunnel's CPU over the whole bench_calls run (connect, warm-up, measured calls), per call
        # of warm-up and measurement: the nearest this script can get to bench_calls' window.
        s1=$(cpu_ticks "$stunnel_srv_pid") c1=$(cpu_ticks "$stunnel_cli_pid")
        calls=$(sed -n 's/.* calls=\([0-9]*\) .*/\1/p' <<<"$out")
        out+=$(awk -v s=$((s1 - s0)) -v c=$((c1 - c0)) -v n=$((${calls:-0} + warmup)) -v hz="$clk_tck" \
            'BEGIN { printf " cpu_stunnel_server_us=%.2f cpu_stunnel_client_us=%.2f", s * 1e6 / hz / n, c * 1e6 / hz / n }')
    fi
    printf '%s\n' "$out" >>"$file"
    log "  $out"
}

k=0
for rep in $(seq "$reps"); do
    for tr in "${transports[@]}"; do
        for sc in "${scenarios[@]}"; do
            read -r scen size <<<"$sc"
            if ((k % 2 == 0)); then order=(amtsbote floor); else order=(floor amtsbote); fi
            k=$((k + 1))
            log "run_calls.sh: rep $rep/$reps $tr $scen size=$size (${order[*]})"
            for sys in "${order[@]}"; do run_one "$tr" "$sys" "$scen" "$size"; done
        done
    done
done
elapsed=$(($(date +%s) - started))
load_end=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)

# ---- report -----------------------------------------------------------------------------------
# median FILE SYSTEM SCENARIO SIZE FIELD: the median (lower middle) over the repetitions, or "-".
# FIELD cpu_total_us is the sum of every cpu_*_us field of a run.
median() {
    awk -v sys="$2" -v scen="$3" -v size="$4" -v f="$5" '
        $0 ~ " system=" sys " " && $0 ~ " scenario=" scen " " && $0 ~ " size=" size " " {
            t = 0; found = 0
            for (i = 1; i <= NF; i++) {
                split($i, kv, "=")
                if (kv[1] == f) { print kv[2]; found = 1 }
                if (kv[1] ~ /^cpu_.*_us$/) t += kv[2]
            }
            if (!found && f == "cpu_total_us") printf "%.2f\n", t
        }' "$1" | sort -g | awk '{ v[NR] = $0 } END { print NR ? v[int((NR + 1) / 2)] : "-" }'
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
sslv=$(openssl version 2>/dev/null | awk '{ print $2 }' || echo unknown)
stv=$( ( ((tls)) && stunnel -version 2>&1 | awk '/^stunnel/ { print $2; exit }') || echo -)
btype=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$build/CMakeCache.txt" 2>/dev/null || echo unknown)
btype=${btype:-"RelWithDebInfo (project default)"}

# rows TRANSPORT: "scenario|size|metric label|field|goal op|goal limit", one per line.
rows() {
    local sc scen size
    for sc in "${scenarios[@]}"; do
        read -r scen size <<<"$sc"
        if [[ $scen == latency ]]; then
            printf '%s\n' "$scen|$size|p50 µs|p50_us|<=|1.2" "$scen|$size|p99 µs|p99_us||" \
                "$scen|$size|p99.9 µs|p999_us||"
        else
            printf '%s\n' "$scen|$size|calls/s|calls_per_s|>=|0.8" "$scen|$size|p50 µs|p50_us||" \
                "$scen|$size|CPU µs/call, caller|cpu_caller_us||" \
                "$scen|$size|CPU µs/call, broker or forwarder|cpu_hop_us||" \
                "$scen|$size|CPU µs/call, provider or worker|cpu_echo_us||"
            if [[ $1 == mtls ]]; then
                printf '%s\n' "$scen|$size|CPU µs/call, stunnel server (floor)|cpu_stunnel_server_us||" \
                    "$scen|$size|CPU µs/call, stunnel client (floor)|cpu_stunnel_client_us||"
            fi
            printf '%s\n' "$scen|$size|CPU µs/call, all processes|cpu_total_us||"
        fi
    done
}

q() { if [[ $1 == - ]]; then echo null; else echo "$1"; fi; }

# table TRANSPORT FILE: appends the Amtsbote/floor table to $md; sets json_out to its JSON rows.
table() {
    local scen size label field op limit a f r goal
    json_out=()
    echo "| scenario | payload | metric | Amtsbote | floor | Amtsbote/floor | goal |" >>"$md"
    echo "| --- | ---: | --- | ---: | ---: | ---: | --- |" >>"$md"
    while IFS='|' read -r scen size label field op limit; do
        a=$(median "$2" amtsbote "$scen" "$size" "$field")
        f=$(median "$2" floor "$scen" "$size" "$field")
        # Amtsbote has no stunnel: its TLS runs inside the caller, broker and provider.
        [[ $field == cpu_stunnel_* ]] && a=-
        r=$(ratio "$a" "$f")
        [[ $field == cpu_stunnel_* ]] && r=-
        goal=""
        [[ -n $op ]] && goal=$(verdict "$r" "$op" "$limit")
        printf '| %s | %s B | %s | %s | %s | %s | %s |\n' "$scen" "$size" "$label" \
            "$([[ $field == cpu_stunnel_* ]] && echo "(in-process)" || echo "$a")" "$f" "$r" "$goal" >>"$md"
        json_out+=("{\"transport\":\"$1\",\"scenario\":\"$scen\",\"size\":$size,\"metric\":\"$field\",\"amtsbote\":$(q "$a"),\"floor\":$(q "$f"),\"ratio\":$(q "$r"),\"goal\":\"$goal\"}")
    done < <(rows "$1")
}

mkdir -p "$here/results"
md=$here/results/calls-$stamp.md
json=$here/results/calls-$stamp.json
{
    echo "# Calls: Amtsbote vs raw-libzmq floor, $stamp"
    echo
    echo "commit $commit, build $btype, $(nproc) cores ($cpu), $(uname -sr), libzmq $zmqv," \
        "OpenSSL $sslv, stunnel $stv; $reps repetition(s), median shown; latency runs ${lat_secs} s," \
        "throughput runs ${tput_secs} s at 100 in flight; run took ${elapsed} s; load average" \
        "$load_start before, $load_end after (other work on the machine skews both systems, not" \
        "always equally)."
    echo
    echo "## Plain tcp:// on loopback"
    echo
} >"$md"
table plain "$runs"
json_plain=("${json_out[@]}")
json_tls=() json_pm=()
if ((tls)); then
    {
        echo
        echo "## Over mutual TLS"
        echo
        echo "Amtsbote: \`tls://\` listener (TLS 1.3, client certificate verified against the chain"
        echo "and CRL), each client with its own TLS relay thread. Floor: caller and worker DEALERs"
        echo "through a stunnel client (bund.bench certificate) and a stunnel server (broker"
        echo "certificate, \`verifyChain\`, CRL, TLS 1.3) in front of the same forwarder. stunnel CPU"
        echo "per call is its CPU over the whole bench_calls run divided by warm-up + measured calls."
        echo
    } >>"$md"
    table mtls "$runs_tls"
    json_tls=("${json_out[@]}")

    # plain vs mTLS, each system against itself: > 1 means mTLS costs that factor.
    {
        echo
        echo "## What mutual TLS costs each system"
        echo
        echo "calls/s: plain ÷ mTLS; p50 and CPU: mTLS ÷ plain. Above 1 is what mTLS costs."
        echo
        echo "| scenario | payload | metric | Amtsbote plain | Amtsbote mTLS | Amtsbote cost | floor plain | floor mTLS | floor cost |"
        echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    } >>"$md"
    for sc in "${scenarios[@]}"; do
        read -r scen size <<<"$sc"
        if [[ $scen == latency ]]; then
            fields=("p50_us|p50 µs")
        else
            fields=("calls_per_s|calls/s" "p50_us|p50 µs" "cpu_total_us|CPU µs/call, all processes")
        fi
        for fl in "${fields[@]}"; do
            IFS='|' read -r field label <<<"$fl"
            ap=$(median "$runs" amtsbote "$scen" "$size" "$field")
            at=$(median "$runs_tls" amtsbote "$scen" "$size" "$field")
            fp=$(median "$runs" floor "$scen" "$size" "$field")
            ft=$(median "$runs_tls" floor "$scen" "$size" "$field")
            if [[ $field == calls_per_s ]]; then
                ar=$(ratio "$ap" "$at") fr=$(ratio "$fp" "$ft")
            else
                ar=$(ratio "$at" "$ap") fr=$(ratio "$ft" "$fp")
            fi
            printf '| %s | %s B | %s | %s | %s | %s | %s | %s | %s |\n' "$scen" "$size" "$label" \
                "$ap" "$at" "$ar" "$fp" "$ft" "$fr" >>"$md"
            json_pm+=("{\"scenario\":\"$scen\",\"size\":$size,\"metric\":\"$field\",\"amtsbote_plain\":$(q "$ap"),\"amtsbote_mtls\":$(q "$at"),\"amtsbote_cost\":$(q "$ar"),\"floor_plain\":$(q "$fp"),\"floor_mtls\":$(q "$ft"),\"floor_cost\":$(q "$fr")}")
        done
    done
fi
{
    echo
    echo "Ratios are Amtsbote divided by the floor: for calls/s higher is better (goal >= 0.8 at"
    echo "100 in flight), for latency lower is better (goal p50 <= 1.2). CPU µs/call is the CPU time"
    echo "(user + system, all threads) each process spent per call in the measured window. Raw runs"
    echo "(plain):"
    echo
    echo '```'
    cat "$runs"
    echo '```'
    if ((tls)); then
        echo
        echo "Raw runs (mutual TLS; \`cpu_stunnel_*\` added by run_calls.sh):"
        echo
        echo '```'
        cat "$runs_tls"
        echo '```'
    fi
} >>"$md"

# json_array NAME...: the elements, one per line, comma-separated.
json_array() {
    local i n=$#
    for ((i = 1; i <= n; i++)); do
        printf '  %s%s\n' "${!i}" "$( ((i < n)) && echo ,)"
    done
}
json_lines() { [[ -s $1 ]] && sed 's/.*/  "&"/; $!s/$/,/' "$1"; return 0; }
{
    printf '{"date":"%s","commit":"%s","build_type":"%s","cores":%s,"cpu":"%s","libzmq":"%s",' \
        "$stamp" "$commit" "$btype" "$(nproc)" "${cpu//\"/}" "$zmqv"
    printf '"openssl":"%s","stunnel":"%s","tls":%s,' "$sslv" "$stv" "$( ((tls)) && echo true || echo false)"
    printf '"load_before":"%s","load_after":"%s",' "$load_start" "$load_end"
    printf '"repetitions":%s,"latency_seconds":%s,"throughput_seconds":%s,"seconds_taken":%s,"failed":%s,\n' \
        "$reps" "$lat_secs" "$tput_secs" "$elapsed" "$([[ $failed == 1 ]] && echo true || echo false)"
    printf '"results":[\n'
    json_array "${json_plain[@]}"
    printf '],\n"results_mtls":[\n'
    json_array "${json_tls[@]}"
    printf '],\n"plain_vs_mtls":[\n'
    json_array "${json_pm[@]}"
    printf '],\n"runs":[\n'
    json_lines "$runs"
    printf '],\n"runs_mtls":[\n'
    json_lines "$runs_tls"
    printf ']}\n'
} >"$json"

echo
sed -n '/^## /p; /^| /p' "$md" | sed 's/^## /\n/'
echo
echo "written: ${md#"$root"/} ${json#"$root"/}"
((failed == 0)) || die "some runs failed (see above)"
