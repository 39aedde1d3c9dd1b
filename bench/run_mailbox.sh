#!/usr/bin/env bash
# bench/run_mailbox.sh [--quick] - what durable messaging costs, against calls through the same
# broker.
#
# One broker (build/amtsbote-broker) with its data directory on the real disk (a temporary
# directory under /var/tmp, not tmpfs: every accepted SEND is fsync'd), driven by mbload
# (tests/tools/mbload.c) on raw DEALERs over tcp://127.0.0.1, all in the same run:
#   durable   SEND with a concurrent consumer (recv --ack, credit 1000) for 100 B and 1 KiB, from
#             1 and from 16 senders (each its own connection and participant; 1024 SENDs in
#             flight in all); reports accepted/s at the senders and delivered/s at the consumer
#   send-only the same SENDs with nobody reading meanwhile (the mailbox is drained afterwards,
#             untimed)
#   baseline  CALL round trips of the same sizes and the same threads and windows to `mbload
#             serve` (2 echo providers): the transient path through the same broker
#   fan-out   1 publisher -> 10 durable subscribers (1 KiB events; each subscriber acks)
# Each figure is the median of the repetitions; the ratio is durable/baseline. Writes
# bench/results/mailbox-<date>.md. The goal (>= 80,000 durable messages/s at 1 KiB with 16
# senders) is reported, never asserted. Exit status 1 when a run failed or lost a message.
#   --quick   1 repetition of 3 s per case (default 3 of 5 s)
#   AMTSBOTE_BUILD_DIR   build tree (default: <repo>/build)
#   AMTSBOTE_BENCH_REV   what to call a build from an exported (not git) source tree
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${AMTSBOTE_BUILD_DIR:-$root/build}
reps=3 secs=5
case "${1:-}" in
--quick) reps=1 secs=3 ;;
"") ;;
-h | --help)
    sed -n '2,21s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit 0
    ;;
*)
    echo "usage: bench/run_mailbox.sh [--quick]" >&2
    exit 2
    ;;
esac

log() { printf 'run_mailbox.sh: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

tmp=$(mktemp -d /var/tmp/amtsbote-bench-mailbox.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do
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

# ---- build: only what runs, incrementally, so that a stale binary is never measured ----------
if [[ ! -f $build/CMakeCache.txt ]]; then
    log "configuring $build"
    cmake -S "$root" -B "$build" >"$tmp/build.log" 2>&1 || { tail -n 40 "$tmp/build.log" >&2; die "cmake configure failed"; }
fi
log "building amtsbote-broker and mbload in $build"
cmake --build "$build" -j2 --target amtsbote-broker mbload >"$tmp/build.log" 2>&1 ||
    { tail -n 40 "$tmp/build.log" >&2; die "build failed (log above)"; }
broker_bin=$build/amtsbote-broker
mbload=$build/tests/mbload
[[ -x $mbload ]] || die "no mbload at $mbload"

# what was measured: the source tree the build directory was configured from
src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt")
if build_rev=$(git -C "$src" rev-parse --short HEAD 2>/dev/null); then
    git -C "$src" diff --quiet 2>/dev/null || build_rev+=" with uncommitted changes"
else
    build_rev="$src (not a git tree${AMTSBOTE_BENCH_REV:+; $AMTSBOTE_BENCH_REV})"
fi

fstype=$(df --output=fstype "$tmp" | tail -n 1)
[[ $fstype == tmpfs ]] && die "$tmp is on tmpfs; the benchmark needs a real disk"

# ---- the broker -------------------------------------------------------------------------------
mkfifo "$tmp/broker.out"
# (a send-only run leaves up to a few hundred thousand messages waiting in one mailbox)
"$broker_bin" --listen 'tcp://127.0.0.1:*' --insecure-plain-identities --data "$tmp/data" \
    --mailbox-max-messages 10000000 --log-level warn >"$tmp/broker.out" 2>"$tmp/broker.log" &
broker_pid=$!
pids+=("$broker_pid")
exec 3<"$tmp/broker.out"
uri=""
while IFS= read -r -t 15 line <&3; do
    case "$line" in
    "listening on tcp://"*) uri=${line#listening on } ;;
    ready) break ;;
    esac
done
[[ -n $uri ]] || { cat "$tmp/broker.log" >&2; die "the broker did not start"; }
cat <&3 >/dev/null &
pids+=("$!")
log "broker on $uri, data in $tmp/data ($fstype)"

# field LINE NAME: a key=value field of mbload's result line
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$broker_pid/stat"; }

failed=0
runs=$tmp/runs.txt
: >"$runs"

# window SENDERS: messages in flight per sender (1024 in all: with 256, 16 connections of 16 are
# bound by the commit latency, not by the CPU; 1024 measures what the broker can take)
window() { echo $((1024 / $1)); }

# durable SIZE SENDERS REP [CASE]: SEND with a concurrent consumer; with CASE=sendonly the
# consumer starts after the senders stopped (untimed: it only checks that nothing was lost)
n_durable=0
durable() {
    local size=$1 senders=$2 rep=$3 case=${4:-durable} rcpt s r c0 c1
    n_durable=$((n_durable + 1))
    rcpt=land.bench.empfang$n_durable
    local rpid
    start_consumer() {
        "$mbload" recv --broker "$uri" --as "$rcpt" --credit 1000 --ack --size "$size" --idle-ms 3000 \
            --seconds $((secs + 120)) >"$tmp/recv.out" 2>"$tmp/recv.err" &
        rpid=$!
        pids+=("$rpid")
        for _ in $(seq 100); do grep -q ready "$tmp/recv.err" && break; sleep 0.05; done
    }
    [[ $case == durable ]] && start_consumer
    c0=$(cpu_ticks)
    s=$("$mbload" send --broker "$uri" --as bund.bench.sender --to "$rcpt" --count 50000000 \
        --size "$size" --window "$(window "$senders")" --senders "$senders" --seconds "$secs" \
        --drain-seconds 30 2>"$tmp/send.err" | grep '^result' || true)
    c1=$(cpu_ticks)
    [[ $case == sendonly ]] && start_consumer
    wait "$rpid" || true
    r=$(grep '^result' "$tmp/recv.out" || true)
    local acc dist rate drate
    acc=$(field "$s" accepted) dist=$(field "$r" distinct)
    rate=$(field "$s" msgs_per_s) drate=$(field "$r" msgs_per_s)
    if [[ -z $acc || -z $dist || $(field "$s" unanswered) != 0 || $(field "$r" corrupt) != 0 ||
        $dist -lt $acc ]]; then
        failed=1
        log "$case size=$size senders=$senders rep=$rep FAILED: send: ${s:-none} $(tail -n 2 "$tmp/send.err") recv: ${r:-none} $(tail -n 2 "$tmp/recv.err")"
    fi
    echo "case=$case size=$size senders=$senders rep=$rep rate=${rate:-0} delivered_rate=${drate:-0} accepted=${acc:-0} delivered=${dist:-0} p50_ms=$(field "$s" p50_ms) p99_ms=$(field "$s" p99_ms) broker_cpu_s=$(awk -v a="$c0" -v b="$c1" -v t="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / t }')" |
        tee -a "$runs" >&2
}

# baseline SIZE SENDERS REP: CALL round trips through the same broker
baseline() {
    local size=$1 senders=$2 rep=$3 s c0 c1
    c0=$(cpu_ticks)
    s=$("$mbload" call --broker "$uri" --as bund.bench.caller --service bench.v1.Echo/Echo \
        --count 50000000 --size "$size" --window "$(window "$senders")" --senders "$senders" \
        --seconds "$secs" 2>"$tmp/call.err" | grep '^result' || true)
    c1=$(cpu_ticks)
    if [[ -z $s || $(field "$s" errors) != 0 || $(field "$s" corrupt) != 0 ]]; then
        failed=1
        log "baseline size=$size senders=$senders rep=$rep FAILED: ${s:-none} $(tail -n 2 "$tmp/call.err")"
    fi
    echo "case=baseline size=$size senders=$senders rep=$rep rate=$(field "$s" msgs_per_s) p50_ms=$(field "$s" p50_ms) p99_ms=$(field "$s" p99_ms) broker_cpu_s=$(awk -v a="$c0" -v b="$c1" -v t="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / t }')" |
        tee -a "$runs" >&2
}

# fanout REP: 1 publisher, 10 durable subscribers
fanout() {
    local rep=$1 p r
    # the same 10 durable subscriptions every repetition (each drains what it got): new names
    # per repetition would leave earlier subscriptions matching, storing events nobody takes
    "$mbload" sub --broker "$uri" --as land.bench.abo --topic 'bench.fanout.>' \
        --durable bench --credit 500 --ack --subscribers 10 --size 1024 --idle-ms 3000 \
        --seconds $((secs + 60)) >"$tmp/sub.out" 2>"$tmp/sub.err" &
    local spid=$!
    pids+=("$spid")
    for _ in $(seq 200); do
        [[ $(grep -c 'ready (subscribed)' "$tmp/sub.err" 2>/dev/null) -ge 10 ]] && break
        sleep 0.05
    done
    p=$("$mbload" pub --broker "$uri" --as bund.bench.publisher --topic bench.fanout.meldung \
        --count 50000000 --size 1024 --window 64 --seconds "$secs" 2>"$tmp/pub.err" | grep '^result' || true)
    wait "$spid" || true
    r=$(grep '^result' "$tmp/sub.out" || true)
    local acc dist
    acc=$(field "$p" accepted) dist=$(field "$r" distinct)
    if [[ -z $acc || -z $dist || $dist -lt $((acc * 10)) || $(field "$r" corrupt) != 0 ]]; then
        failed=1
        log "fan-out rep=$rep FAILED: pub: ${p:-none} $(tail -n 2 "$tmp/pub.err") sub: ${r:-none} $(tail -n 2 "$tmp/sub.err")"
    fi
    echo "case=fanout size=1024 senders=1 rep=$rep rate=$(field "$p" msgs_per_s) delivered_rate=$(field "$r" msgs_per_s) accepted=${acc:-0} delivered=${dist:-0} p50_ms=$(field "$p" p50_ms) p99_ms=$(field "$p" p99_ms)" |
        tee -a "$runs" >&2
}

# the echo providers for the baseline
"$mbload" serve --broker "$uri" --as kommune.bench.echo --service bench.v1.Echo/Echo --senders 2 \
    --seconds 3600 >"$tmp/serve.out" 2>"$tmp/serve.err" &
pids+=("$!")
for _ in $(seq 200); do grep -qx ready "$tmp/serve.out" && break; sleep 0.05; done
grep -qx ready "$tmp/serve.out" || die "mbload serve did not become ready: $(cat "$tmp/serve.err")"

started=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq "$reps"); do
    for size in 100 1024; do
        for senders in 1 16; do
            # alternate the order so that neither side always runs on a warmer broker
            if (((rep + senders) % 2)); then
                durable "$size" "$senders" "$rep"
                baseline "$size" "$senders" "$rep"
                durable "$size" "$senders" "$rep" sendonly
            else
                durable "$size" "$senders" "$rep" sendonly
                baseline "$size" "$senders" "$rep"
                durable "$size" "$senders" "$rep"
            fi
        done
    done
    fanout "$rep"
done
elapsed=$(($(date +%s) - started))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
data_size=$(du -sh "$tmp/data" | cut -f1)

# ---- report -----------------------------------------------------------------------------------
# median CASE SIZE SENDERS FIELD
median() {
    awk -v c="$1" -v s="$2" -v n="$3" -v f="$4" '
        { delete kv; for (i = 1; i <= NF; i++) { split($i, a, "="); kv[a[1]] = a[2] } }
        kv["case"] == c && kv["size"] == s && kv["senders"] == n { print kv[f] }' "$runs" |
        sort -g | awk '{ v[NR] = $0 } END { print NR ? v[int((NR + 1) / 2)] : "-" }'
}
all() {
    awk -v c="$1" -v s="$2" -v n="$3" -v f="$4" '
        { delete kv; for (i = 1; i <= NF; i++) { split($i, a, "="); kv[a[1]] = a[2] } }
        kv["case"] == c && kv["size"] == s && kv["senders"] == n { printf "%s ", kv[f] }' "$runs"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }

mkdir -p "$here/results"
out=$here/results/mailbox-$(date -u +%Y-%m-%d-%H%M%S).md
goal=$(median durable 1024 16 rate)
{
    echo "# Mailboxes: durable SEND vs CALL through the same broker"
    echo
    echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(uname -r)," \
        "data directory on $fstype ($(df --output=source "$tmp" | tail -n 1)), tcp://127.0.0.1," \
        "$reps repetition(s) of $secs s per case, $elapsed s in all; load average $load_start -> $load_end;" \
        "built from $build_rev."
    echo "Broker defaults (synchronous=FULL WAL, one transaction per loop turn). Load from mbload"
    echo "(tests/tools/mbload.c) on the same 2 cores: 1024 messages in flight in all (1 sender x 1024 or"
    echo "16 senders x 64), every sender its own connection and participant. Durable: a consumer"
    echo "(credit 1000, ACK each) drains the mailbox concurrently; the DELIVERED receipts are stored in"
    echo "the senders' mailboxes and not read. Baseline: CALL to 2 echo providers."
    echo
    echo "| size | senders | durable accepted/s | consumer delivered/s | send-only accepted/s | CALL round trips/s | durable / CALL | durable p50 / p99 ms | CALL p50 / p99 ms | broker CPU s (durable / CALL) |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"
    for size in 100 1024; do
        for senders in 1 16; do
            d=$(median durable "$size" "$senders" rate)
            b=$(median baseline "$size" "$senders" rate)
            printf '| %s | %s | %s | %s | %s | %s | %s | %s / %s | %s / %s | %s / %s |\n' "$size" "$senders" \
                "$d" "$(median durable "$size" "$senders" delivered_rate)" \
                "$(median sendonly "$size" "$senders" rate)" "$b" "$(ratio "$d" "$b")" \
                "$(median durable "$size" "$senders" p50_ms)" "$(median durable "$size" "$senders" p99_ms)" \
                "$(median baseline "$size" "$senders" p50_ms)" "$(median baseline "$size" "$senders" p99_ms)" \
                "$(median durable "$size" "$senders" broker_cpu_s)" "$(median baseline "$size" "$senders" broker_cpu_s)"
        done
    done
    echo
    echo "Events, 1 publisher -> 10 durable subscribers (1 KiB, window 64, each subscriber credit 500 and ACK):"
    echo "published $(median fanout 1024 1 rate)/s, delivered $(median fanout 1024 1 delivered_rate) events/s over all subscribers"
    echo "(publish p50 / p99 $(median fanout 1024 1 p50_ms) / $(median fanout 1024 1 p99_ms) ms)."
    echo
    echo "Goal (the issue): >= 80,000 durable messages/s at 1 KiB with 16 senders on this 2-core machine."
    echo "Measured at 1 KiB x 16: accepted $goal/s while a consumer reads (which delivered $(median durable 1024 16 delivered_rate)/s:"
    echo "when it is slower, a backlog grows), $(median sendonly 1024 16 rate)/s send-only (accepted with a consumer: $(awk -v g="$goal" 'BEGIN { if (g == "-") print "no result"; else if (g >= 80000) print "goal met"; else printf "%.0f %% of the goal", 100 * g / 80000 }'))."
    echo
    echo "Runs (accepted/s, per repetition):"
    echo
    for c in durable sendonly baseline; do
        for size in 100 1024; do
            for senders in 1 16; do
                echo "- $c $size B, $senders sender(s): $(all "$c" "$size" "$senders" rate)"
            done
        done
    done
    echo "- fan-out published/s: $(all fanout 1024 1 rate); delivered/s: $(all fanout 1024 1 delivered_rate)"
    echo
    echo "Store size at the end: $data_size. $( ((failed)) && echo 'SOME RUNS FAILED (see the log).' || echo 'Every run: nothing unanswered, nothing corrupt, every accepted message delivered.')"
} | tee "$out"
log "written: $out"
exit "$failed"
