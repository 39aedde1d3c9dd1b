#!/usr/bin/env bash
# tests/soak/run.sh [MINUTES | --seconds N] [options] - the soak test: calls, mailboxes and
# events over mutual TLS through a real broker for a fixed time, by clients that connect and
# leave; the broker's RSS and open descriptors must stay flat (growth < 5 % after the warm-up)
# and every message must be accounted for. Ends by itself. See tests/soak/README.md.
#
#   MINUTES              how long the load runs (default 30)
#   --seconds N          the same in seconds (the CTest variant runs 40)
#   --results DIR        keep the CSV (soak.csv), the summary (summary.txt) and the broker's
#                        log (broker.log, no payloads) in DIR; otherwise they are removed
#   --broker-bin FILE    amtsbote-broker (default: $AMTSBOTE_BUILD_DIR or <repo>/build)
#   --soak-bin FILE      soak_client (default: <build>/tests/soak_client)
#   --seed N             the load's random choices (default: from the clock; printed)
#   --calls-per-s N, --sends-per-s N, --publishes-per-s N   the load (100, 20, 20)
#   -h, --help           this text
#
# Exit status: 0 every check passed; 1 a check failed (the last line names each); 2 usage.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${AMTSBOTE_BUILD_DIR:-$root/build}

usage() { sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() {
    echo "run.sh: $*" >&2
    exit 1
}
die_usage() {
    echo "run.sh: $*" >&2
    echo "run.sh: see 'tests/soak/run.sh --help'" >&2
    exit 2
}

seconds=1800 results="" broker_bin="" soak_bin="" extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --seconds)
        [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die_usage "--seconds needs a whole number of seconds, not '${2:-}'"
        seconds=$2
        shift
        ;;
    --results)
        [ -n "${2:-}" ] || die_usage "--results needs a directory"
        results=$2
        shift
        ;;
    --broker-bin | --soak-bin)
        [ -n "${2:-}" ] || die_usage "$1 needs a file"
        if [ "$1" = --broker-bin ]; then broker_bin=$2; else soak_bin=$2; fi
        shift
        ;;
    --seed | --calls-per-s | --sends-per-s | --publishes-per-s)
        [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die_usage "$1 needs a positive whole number, not '${2:-}'"
        extra+=("$1" "$2")
        shift
        ;;
    -*) die_usage "unknown option '$1'" ;;
    *)
        [[ $1 =~ ^[1-9][0-9]*$ ]] || die_usage "MINUTES must be a positive whole number, not '$1'"
        seconds=$(($1 * 60))
        ;;
    esac
    shift
done
broker_bin=${broker_bin:-$build/amtsbote-broker}
soak_bin=${soak_bin:-$build/tests/soak_client}
[ -x "$broker_bin" ] || die "no broker at $broker_bin (build it: cmake --build build --target amtsbote-broker)"
[ -x "$soak_bin" ] || die "no soak_client at $soak_bin (configure with -DAMTSBOTE_TESTS=ON and build the target soak_client)"

work=$(mktemp -d "${TMPDIR:-/tmp}/soak-amtsbote.XXXXXX")
broker_pid=""
cleanup() {
    if [ -n "$broker_pid" ]; then
        kill -TERM "$broker_pid" 2>/dev/null
        wait "$broker_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- a throwaway PKI: the broker and the five participants of the load ----------------------
pki=$work/pki
{
    bash "$root/certs/pki.sh" init "$pki" &&
        bash "$root/certs/pki.sh" broker "$pki" broker &&
        for p in bund.soak kommune.soak.provider kommune.soak.inbox land.soak.stats land.soak.watch; do
            bash "$root/certs/pki.sh" issue "$pki" "$p" || exit 1
        done
} >"$work/pki.log" 2>&1 || {
    cat "$work/pki.log" >&2
    die "certs/pki.sh failed"
}

# ---- the broker: tls:// on loopback, its own data directory, metrics ----------------------
# The soak looks for memory that grows without a bound, not for data the broker keeps on purpose
# and a cache that is still filling: the caches are small (8 MiB each instead of 64), and the
# dedup window is 1 minute instead of 24 hours, so that the timelines of ended messages (the
# store's `sent` table, whose pages SQLite caches) reach their steady state within the warm-up
# and the purge of old ones runs all along.
mkfifo "$work/broker.out"
"$broker_bin" --listen 'tls://127.0.0.1:*' --tls-cert "$pki/broker.crt" --tls-key "$pki/broker.key" \
    --tls-ca "$pki/ca/chain.pem" --tls-crl "$pki/ca/crl.pem" --data "$work/data" \
    --metrics 127.0.0.1:0 --store-cache-bytes 8388608 --cache-bytes 8388608 \
    --dedup-window-ms 60000 --log-level info >"$work/broker.out" 2>"$work/broker.log" &
broker_pid=$!
exec 3<"$work/broker.out"
uri="" metrics=""
while IFS= read -r -t 20 line <&3; do
    case "$line" in
    "listening on tls://"*) uri=${line#listening on } ;;
    "metrics on http://"*) metrics=${line#metrics on } ;;
    ready) break ;;
    esac
done
[ -n "$uri" ] && [ -n "$metrics" ] || {
    cat "$work/broker.log" >&2
    die "the broker did not start"
}
cat <&3 >/dev/null &
echo "run.sh: broker pid $broker_pid on $uri, metrics $metrics, data in $work/data; load for $seconds s"

# http_get URL: the response to GET (status line, headers, body), through bash's /dev/tcp
http_get() {
    local hp=${1#http://}
    hp=${hp%%/*}
    timeout 10 bash -c 'exec 5<>"/dev/tcp/$1/$2" && printf "GET /%s HTTP/1.0\r\n\r\n" "$3" >&5 &&
        cat <&5' _ "${hp%:*}" "${hp##*:}" "${1#http://"$hp"/}"
}
# ---- the load --------------------------------------------------------------------------------
# one look at /metrics while the clients are connected (participants online)
(sleep $((seconds < 20 ? seconds / 2 : 10)); http_get "$metrics" >"$work/metrics-load.txt" 2>/dev/null) &
probe_pid=$!
"$soak_bin" --broker "$uri" --pki "$pki" --broker-pid "$broker_pid" --seconds "$seconds" \
    --csv "$work/soak.csv" "${extra[@]}" >"$work/summary.txt"
rc=$?
if [ ! -s "$work/summary.txt" ]; then
    echo "soak: FAILED: soak_client ended with status $rc and no summary" >"$work/summary.txt"
elif [ $rc != 0 ] && [ $rc != 1 ]; then
    # e.g. LeakSanitizer's status after a leak in the client library (its report is above)
    echo "soak: FAILED: soak_client ended with status $rc after its summary" >>"$work/summary.txt"
fi
[ $rc = 0 ] || [ $rc = 1 ] || rc=1

# ---- the broker, idle again: what it still holds, then a clean stop --------------------------
extra_fail=""
if http_get "$metrics" >"$work/metrics.txt" && head -n 1 "$work/metrics.txt" | grep -q '^HTTP/1\.[01] 200'; then
    metric() { awk -v n="$1" '$1 == n { print $2 }' "$work/metrics.txt"; }
    wait "$probe_pid" 2>/dev/null
    online=$(awk '$1 == "amtsbote_participants_online" { print $2 }' "$work/metrics-load.txt" 2>/dev/null)
    echo "soak: broker under load: amtsbote_participants_online ${online:-?}" >>"$work/summary.txt"
    [ "${online:-0}" -ge 1 ] 2>/dev/null ||
        extra_fail+="${extra_fail:+; }amtsbote_participants_online was ${online:-missing} under load"
    for m in amtsbote_tls_sessions amtsbote_calls_in_flight amtsbote_providers amtsbote_mailbox_messages \
        amtsbote_mailbox_receipts amtsbote_participants_online; do
        v=$(metric $m)
        echo "soak: broker at the end: $m ${v:-?}" >>"$work/summary.txt"
        [ "${v:-x}" = 0 ] || extra_fail+="${extra_fail:+; }$m is ${v:-missing} with every client gone"
    done
    echo "soak: broker counted: calls received $(metric amtsbote_calls_received_total)," \
        "replies routed $(metric amtsbote_replies_routed_total), late $(metric amtsbote_replies_late_total)," \
        "lost $(metric amtsbote_replies_lost_total); TLS handshakes accepted" \
        "$(metric amtsbote_tls_handshakes_accepted_total), refused $(metric amtsbote_tls_handshakes_refused_total)" \
        >>"$work/summary.txt"
else
    extra_fail+="${extra_fail:+; }GET $metrics failed"
fi
kill -TERM "$broker_pid"
wait "$broker_pid"
brc=$?
broker_pid=""
[ $brc = 0 ] || extra_fail+="${extra_fail:+; }the broker exited with status $brc on SIGTERM"
errors=$(grep -c 'level=error' "$work/broker.log")
echo "soak: broker log: $errors lines at level error" >>"$work/summary.txt"
[ "$errors" = 0 ] || extra_fail+="${extra_fail:+; }the broker logged $errors errors (first: $(grep -m1 'level=error' "$work/broker.log"))"
if [ -n "$extra_fail" ]; then
    echo "soak: FAILED: $extra_fail" >>"$work/summary.txt"
    rc=1
fi

cat "$work/summary.txt"
if [ -n "$results" ]; then
    mkdir -p "$results" && cp "$work/soak.csv" "$work/summary.txt" "$work/broker.log" "$results/" &&
        echo "run.sh: CSV, summary and broker log in $results"
fi
exit $rc
