#!/usr/bin/env bash
# bench/run.sh [--quick] [--reps N] [--only SYSTEMS] [--scenarios LIST] - Amtsbote and its peers
# (raw libzmq through stunnel, NATS, Mosquitto, RabbitMQ) side by side on this machine, all with
# mutual TLS, in one run; writes bench/results/peers-<date>.json, .md and PNG charts.
#
# Installs what is missing from Debian (as root), builds the load generators, makes a throwaway
# PKI, starts every server on 127.0.0.1 with client certificates required, runs each scenario
# against each system (the order of the systems reversed on every other case), stops every
# process it started by PID, and hands the runs to bench_report for the tables and charts.
#
#   --quick          a smoke run: 1 repetition, 1.5 s windows, 1,000 idle connections (< 3 min
#                    once built); default 3 repetitions, 3 s windows, 10,000 idle connections
#   --reps N         repetitions (default 3, --quick 1)
#   --only LIST      systems, comma-separated: amtsbote,floor,nats,mosquitto,rabbitmq
#   --scenarios LIST call-latency,call-throughput,stream,durable,fanout,idle
#   AMTSBOTE_BUILD_DIR   build tree (default <repo>/build-bench, RelWithDebInfo)
#   AMTSBOTE_BENCH_DATA  where the durable stores live (default /var/tmp; a disk, not tmpfs)
# Exit status 1 when a server did not start or a run failed (the report lists failed runs); the
# goals are reported, never asserted.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
build=${AMTSBOTE_BUILD_DIR:-$root/build-bench}
datadir=${AMTSBOTE_BENCH_DATA:-/var/tmp}

quick=0 reps="" only="amtsbote,floor,nats,mosquitto,rabbitmq"
scen_list="call-latency,call-throughput,stream,durable,fanout,idle"
usage() { sed -n '2,19s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
while (($#)); do
    case "$1" in
    --quick) quick=1 ;;
    --reps) reps=${2:?--reps takes a number}; shift ;;
    --only) only=${2:?--only takes a list}; shift ;;
    --scenarios) scen_list=${2:?--scenarios takes a list}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench/run.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[[ $reps =~ ^[0-9]*$ ]] || { echo "bench/run.sh: --reps takes a number, not '$reps'" >&2; exit 2; }
for s in ${only//,/ }; do
    [[ $s =~ ^(amtsbote|floor|nats|mosquitto|rabbitmq)$ ]] || { echo "bench/run.sh: unknown system '$s'" >&2; exit 2; }
done
for s in ${scen_list//,/ }; do
    [[ $s =~ ^(call-latency|call-throughput|stream|durable|fanout|idle)$ ]] ||
        { echo "bench/run.sh: unknown scenario '$s'" >&2; exit 2; }
done
if ((quick)); then
    reps=${reps:-1} secs=1.5 lat_secs=2 idle_conns=1000 warm=500
else
    reps=${reps:-3} secs=3 lat_secs=5 idle_conns=10000 warm=2000
fi
want() { [[ ,$only, == *,$1,* ]]; }
want_scen() { [[ ,$scen_list, == *,$1,* ]]; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/amtsbote-peers.XXXXXX")
data=$(mktemp -d "$datadir/amtsbote-peers-data.XXXXXX")
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
    rm -rf "$tmp" "$data"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }
die() {
    log "bench/run.sh: $*"
    exit 1
}

# ---- what the peers need, from Debian ---------------------------------------------------------
need=()
command -v stunnel >/dev/null || need+=(stunnel4)
command -v openssl >/dev/null || need+=(openssl)
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists jansson 2>/dev/null || need+=(libjansson-dev)
if want nats; then
    command -v nats-server >/dev/null || need+=(nats-server)
    pkg-config --exists libnats 2>/dev/null || need+=(libnats-dev)
fi
if want mosquitto; then
    command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || need+=(mosquitto)
    pkg-config --exists libmosquitto 2>/dev/null || need+=(libmosquitto-dev)
fi
if want rabbitmq; then
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || need+=(rabbitmq-server)
    pkg-config --exists librabbitmq 2>/dev/null || need+=(librabbitmq-dev)
fi
if ((${#need[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "bench/run.sh: installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # policy-rc.d keeps the packages' own services (rabbitmq-server, mosquitto, nats-server)
        # from starting: this script starts private instances with their own ports and PKI
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            rm_policy=1
        fi
        { timeout 600 apt-get update -qq &&
            timeout 900 apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
            >"$tmp/apt.log" 2>&1 || { tail -n 20 "$tmp/apt.log" >&2; die "apt-get install ${need[*]} failed"; }
        [[ ${rm_policy:-0} == 1 ]] && rm -f /usr/sbin/policy-rc.d
    else
        die "missing ${need[*]}: sudo apt-get install -y ${need[*]} (or leave systems out with --only)"
    fi
fi
# The packaged services must not run beside the private instances (ports, CPU): say so.
for svc in beam.smp mosquitto nats-server; do
    if pgrep -x "$svc" >/dev/null 2>&1; then
        log "bench/run.sh: note: a $svc is already running on this machine; its CPU use skews the figures"
    fi
done

# 10,000 mTLS connections: the broker needs 3 descriptors per TLS session (client socket, its
# relay to the internal endpoint, libzmq's end of it). A container without CAP_SYS_RESOURCE
# cannot raise the hard limit: then as many thousands as fit.
if [[ $(id -u) -eq 0 ]]; then ulimit -Hn 200000 2>/dev/null || true; fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < 3 * idle_conns + 1000)); then
    idle_conns=$((($(ulimit -n) - 1000) / 3 / 1000 * 1000))
    echo "Idle connections: ${idle_conns} instead of 10,000: the open-files limit here is $(ulimit -n) (hard), and the broker needs 3 descriptors per TLS session." >>"$tmp/extra-notes"
    log "bench/run.sh: note: open files limited to $(ulimit -n); $idle_conns idle connections"
fi

# ---- build ------------------------------------------------------------------------------------
if [[ ! -f $build/CMakeCache.txt ]]; then
    log "bench/run.sh: configuring $build (RelWithDebInfo)"
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$tmp/build.log" 2>&1 ||
        { tail -n 40 "$tmp/build.log" >&2; die "cmake configure failed (log above)"; }
else
    # again, so that peer libraries installed since are found
    cmake "$build" >"$tmp/build.log" 2>&1 || { tail -n 40 "$tmp/build.log" >&2; die "cmake failed"; }
fi
targets=(amtsbote-broker bench_calls bench_flow floor_forwarder bench_report)
want_scen idle && targets+=(bench_idle)
want nats && targets+=(bench_nats)
want mosquitto && targets+=(bench_mqtt)
want rabbitmq && targets+=(bench_amqp)
log "bench/run.sh: building ${targets[*]} in $build"
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" >>"$tmp/build.log" 2>&1 ||
    { tail -n 40 "$tmp/build.log" >&2; die "build failed (log above)"; }
bin=$build/bench

# ---- helpers the peers' start functions use ---------------------------------------------------
free_port() {
    local p
    for _ in $(seq 500); do
        p=$((20000 + RANDOM % 40000))
        ss -Htln "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
    done
    die "no free port found"
}

# wait_ready LOGFILE PID NAME [PATTERN]: up to 20 s for PATTERN (default "^ready") in LOGFILE.
wait_ready() {
    local pat=${4:-'^ready\b'}
    for _ in $(seq 200); do
        grep -qE "$pat" "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || { tail -n 20 "$1" >&2; die "$3 exited before it was ready"; }
        sleep 0.1
    done
    tail -n 20 "$1" >&2
    die "$3 not ready within 20 s"
}

# rss_kib PID
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# ---- PKI --------------------------------------------------------------------------------------
pki=$tmp/pki
{
    bash "$root/certs/pki.sh" init "$pki" &&
        bash "$root/certs/pki.sh" broker "$pki" broker &&
        bash "$root/certs/pki.sh" issue "$pki" bund.bench &&
        bash "$root/certs/pki.sh" issue "$pki" kommune.bench.worker
} >"$tmp/pki.log" 2>&1 || { cat "$tmp/pki.log" >&2; die "certs/pki.sh failed"; }
ca=$pki/ca/chain.pem
ccert=$pki/bund.bench.crt
ckey=$pki/bund.bench.key
tlsargs=(--ca "$ca" --cert "$ccert" --key "$ckey")

# ---- servers ----------------------------------------------------------------------------------
versions=()
declare -A server_pid

if want amtsbote; then
    mkdir -p "$data/amtsbote"
    "$build/amtsbote-broker" --listen 'tls://127.0.0.1:*' --tls-cert "$pki/broker.crt" \
        --tls-key "$pki/broker.key" --tls-ca "$ca" --tls-crl "$pki/ca/crl.pem" \
        --data "$data/amtsbote" --max-connections $((idle_conns + 200)) --max-connections-per-participant $((idle_conns + 200)) \
        >"$tmp/amtsbote.log" 2>&1 &
    server_pid[amtsbote]=$!
    pids+=("${server_pid[amtsbote]}")
    wait_ready "$tmp/amtsbote.log" "${server_pid[amtsbote]}" amtsbote-broker
    amtsbote_url=$(sed -n 's/^listening on \(tls:\/\/.*\)$/\1/p' "$tmp/amtsbote.log" | head -n 1)
    [[ -n $amtsbote_url ]] || die "the broker named no tls:// address"
    versions+=("\"amtsbote\":\"$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)\"")
fi

if want floor; then
    # calls: floor_forwarder's ROUTER behind a stunnel server (broker certificate, client
    # certificates verified against the chain and CRL, TLS 1.3), reached through a stunnel client
    floor_port=$(free_port)
    "$bin/floor_forwarder" "tcp://127.0.0.1:$floor_port" >"$tmp/floor.log" 2>&1 &
    server_pid[floor]=$!
    pids+=("${server_pid[floor]}")
    wait_ready "$tmp/floor.log" "${server_pid[floor]}" floor_forwarder
    st_srv=$(free_port) st_cli=$(free_port)
    cat >"$tmp/stunnel-server.conf" <<CONF
foreground = yes
pid =
[floor-server]
accept = 127.0.0.1:$st_srv
connect = 127.0.0.1:$floor_port
cert = $pki/broker.crt
key = $pki/broker.key
CAfile = $ca
CRLfile = $pki/ca/crl.pem
verifyChain = yes
sslVersionMin = TLSv1.3
CONF
    cat >"$tmp/stunnel-client.conf" <<CONF
foreground = yes
pid =
[floor-client]
client = yes
accept = 127.0.0.1:$st_cli
connect = 127.0.0.1:$st_srv
cert = $ccert
key = $ckey
CAfile = $ca
verifyChain = yes
checkHost = localhost
sslVersionMin = TLSv1.3
CONF
    stunnel "$tmp/stunnel-server.conf" >"$tmp/stunnel-server.log" 2>&1 &
    pids+=($!)
    wait_ready "$tmp/stunnel-server.log" $! "stunnel (server)" 'Configuration successful'
    stunnel "$tmp/stunnel-client.conf" >"$tmp/stunnel-client.log" 2>&1 &
    pids+=($!)
    wait_ready "$tmp/stunnel-client.log" $! "stunnel (client)" 'Configuration successful'
    floor_url=tcp://127.0.0.1:$st_cli
    # the one-way stream: PUSH -> stunnel -> PULL/PUSH forwarder -> stunnel -> PULL
    # shellcheck source=bench/peers/floor.sh
    source "$here/peers/floor.sh"
    floor_stream_start "$tmp/floor-stream" "$pki" "$bin/floor_forwarder" ||
        die "the stream floor did not start"
    pids+=("${FLOOR_STREAM_PIDS[@]}")
    versions+=("\"stunnel\":\"$(stunnel -version 2>&1 | awk '/^stunnel/ { print $2; exit }')\"")
fi

if want nats; then
    # shellcheck source=bench/peers/nats.sh
    source "$here/peers/nats.sh"
    mkdir -p "$tmp/nats"
    nats_start "$tmp/nats" "$pki" || die "nats-server did not start"
    server_pid[nats]=$NATS_PID
    pids+=("$NATS_PID")
    versions+=("\"nats-server\":\"$(nats_version)\"")
fi

if want mosquitto; then
    # shellcheck source=bench/peers/mosquitto.sh
    source "$here/peers/mosquitto.sh"
    mkdir -p "$data/mosquitto"
    mosquitto_start "$data/mosquitto" "$pki" || die "mosquitto did not start"
    server_pid[mosquitto]=$MOSQUITTO_PID
    pids+=("$MOSQUITTO_PID")
    versions+=("\"mosquitto\":\"$(mosquitto_version)\"")
fi

if want rabbitmq; then
    # shellcheck source=bench/peers/rabbitmq.sh
    source "$here/peers/rabbitmq.sh"
    mkdir -p "$data/rabbitmq"
    rabbitmq_start "$data/rabbitmq" "$pki" || die "rabbitmq-server did not start"
    server_pid[rabbitmq]=$RABBITMQ_PID
    # the node (beam.smp, not this shell's child), then its wrapper, which stops our epmd
    pids+=("$RABBITMQ_PID" "$RABBITMQ_WRAPPER_PID")
    [[ -n ${RABBITMQ_EPMD_PID:-} ]] && pids+=("$RABBITMQ_EPMD_PID")
    versions+=("\"rabbitmq-server\":\"$(rabbitmq_version)\"")
fi
versions+=("\"libzmq\":\"$(pkg-config --modversion libzmq 2>/dev/null || echo unknown)\""
    "\"openssl\":\"$(openssl version | awk '{ print $2 }')\"")

# ---- the runs ---------------------------------------------------------------------------------
# cases: "scenario size inflight systems..." (one line each)
cases=()
want_scen call-latency && cases+=("call-latency 100 1 amtsbote floor nats")
if want_scen call-throughput; then
    for s in 100 1024; do
        for f in 100 1000; do cases+=("call-throughput $s $f amtsbote floor nats"); done
    done
fi
if want_scen stream; then
    for s in 100 1024 65536; do cases+=("stream $s 0 amtsbote floor nats mosquitto"); done
fi
if want_scen durable; then
    # per publisher (4 of them); RabbitMQ is faster with the smaller window here, so both
    for s in 100 1024; do
        for f in 32 256; do cases+=("durable $s $f amtsbote rabbitmq mosquitto"); done
    done
fi
want_scen fanout && cases+=("fanout 1024 0 amtsbote nats mosquitto")
want_scen idle && cases+=("idle 100 $idle_conns amtsbote nats")

runs=$tmp/runs.jsonl
: >"$runs"
failed=0
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)

# command SYSTEM SCENARIO SIZE INFLIGHT: the load generator's command line, in cmd[].
command_for() {
    local sys=$1 scen=$2 size=$3 fl=$4 w=$secs
    [[ $scen == call-latency ]] && w=$lat_secs
    cmd=()
    case "$sys/$scen" in
    amtsbote/call-*)
        cmd=("$bin/bench_calls" --mode amtsbote --broker "$amtsbote_url" --pki "$pki"
            --hop-pid "${server_pid[amtsbote]}" --size "$size" --seconds "$w" --count 50000000)
        ;;
    floor/call-*)
        cmd=("$bin/bench_calls" --mode floor --endpoint "$floor_url" --hop-pid "${server_pid[floor]}"
            --size "$size" --seconds "$w" --count 50000000)
        ;;
    nats/call-*)
        cmd=("$bin/bench_nats" call --url "$NATS_URL" "${tlsargs[@]}" --server-pid "$NATS_PID"
            --size "$size" --seconds "$w")
        ;;
    amtsbote/stream | amtsbote/fanout | amtsbote/durable)
        cmd=("$bin/bench_flow" "$scen" --broker "$amtsbote_url" --pki "$pki"
            --server-pid "${server_pid[amtsbote]}" --size "$size" --seconds "$w")
        ;;
    floor/stream)
        cmd=("$bin/bench_flow" floor-stream --push "$FLOOR_STREAM_IN" --pull "$FLOOR_STREAM_OUT"
            --server-pid "$FLOOR_STREAM_HOP_PID" --size "$size" --seconds "$w")
        ;;
    nats/stream | nats/fanout)
        cmd=("$bin/bench_nats" "$scen" --url "$NATS_URL" "${tlsargs[@]}" --server-pid "$NATS_PID"
            --size "$size" --seconds "$w")
        ;;
    mosquitto/*)
        cmd=("$bin/bench_mqtt" "$scen" --host 127.0.0.1 --port "$MOSQUITTO_PORT" "${tlsargs[@]}"
            --server-pid "$MOSQUITTO_PID" --size "$size" --seconds "$w")
        ;;
    rabbitmq/durable)
        cmd=("$bin/bench_amqp" durable --host 127.0.0.1 --port "$RABBITMQ_PORT" "${tlsargs[@]}"
            --server-pid "$RABBITMQ_PID" --size "$size" --seconds "$w")
        ;;
    amtsbote/idle | nats/idle)
        cmd=("$bin/bench_idle" --system "$sys" --connections "$fl" --url "$idle_url" "${tlsargs[@]}"
            --server-pid "$idle_pid" --pki "$pki" --connect-seconds 240 --seconds 60
            --heartbeat-ms 10000)
        return
        ;;
    *) die "no command for $sys $scen" ;;
    esac
    case "$scen" in
    call-latency) cmd+=(--latency --warmup 500) ;;
    call-throughput) cmd+=(--inflight "$fl" --warmup "$warm") ;;
    durable) cmd+=(--inflight "$fl" --publishers 4 --warmup "$warm") ;;
    fanout) cmd+=(--subscribers 10 --warmup "$warm") ;;
    stream) cmd+=(--warmup "$warm") ;;
    esac
}

# to_json REP SYSTEM SCENARIO SIZE INFLIGHT OK ERROR < result line: one run as a JSON object.
# bench_calls' fields are mapped to the common names (calls_per_s -> rate, cpu_hop_us ->
# cpu_server_us, calls -> msgs).
to_json() {
    awk -v rep="$1" -v sys="$2" -v scen="$3" -v size="$4" -v fl="$5" -v ok="$6" -v err="$7" '
        { line = $0 }
        END {
            gsub(/["\\]/, "", err)
            m = ""; n = split(line, f, " ")
            for (i = 2; i <= n; i++) {
                if (split(f[i], kv, "=") != 2) continue
                k = kv[1]; v = kv[2]
                if (k == "calls_per_s") k = "rate"
                else if (k == "cpu_hop_us") k = "cpu_server_us"
                else if (k == "calls") k = "msgs"
                if (v !~ /^-?[0-9.]+([eE][-+]?[0-9]+)?$/ || k in seen) continue
                seen[k] = 1
                m = m (m == "" ? "" : ",") "\"" k "\":" (v ~ /^\./ ? "0" v : v)
            }
            printf "{\"rep\":%d,\"system\":\"%s\",\"scenario\":\"%s\",\"size\":%d,\"inflight\":%d,\"ok\":%s,\"error\":\"%s\",\"metrics\":{%s}}\n",
                rep, sys, scen, size, fl, ok, err, m
        }'
}

# idle_start SYSTEM / idle_stop: a fresh server for each idle run (neither gives memory back to
# the system when connections close, so a used one would measure its past). Amtsbote's heartbeat
# is set to 10 s (timeout 30 s) for it, as bench_idle's clients do: with the default 1 s every
# idle session costs libzmq a timer operation per second (nats-server pings every 2 minutes).
idle_start() {
    if [[ $1 == amtsbote ]]; then
        rm -rf "$data/idle"
        mkdir -p "$data/idle"
        "$build/amtsbote-broker" --listen 'tls://127.0.0.1:*' --tls-cert "$pki/broker.crt" \
            --tls-key "$pki/broker.key" --tls-ca "$ca" --tls-crl "$pki/ca/crl.pem" \
            --data "$data/idle" --max-connections $((idle_conns + 100)) --max-connections-per-participant $((idle_conns + 100)) \
            --heartbeat-ms 10000 --heartbeat-timeout-ms 30000 >"$tmp/idle-broker.log" 2>&1 &
        idle_pid=$!
        wait_ready "$tmp/idle-broker.log" "$idle_pid" "amtsbote-broker (idle)"
        idle_url=$(sed -n 's/^listening on \(tls:\/\/.*\)$/\1/p' "$tmp/idle-broker.log" | head -n 1)
    else
        local keep_pid=$NATS_PID keep_url=$NATS_URL
        rm -rf "$tmp/nats-idle"
        mkdir -p "$tmp/nats-idle"
        nats_start "$tmp/nats-idle" "$pki" || die "nats-server (idle) did not start"
        idle_pid=$NATS_PID idle_url=$NATS_URL
        NATS_PID=$keep_pid NATS_URL=$keep_url
    fi
    pids+=("$idle_pid")
}
idle_stop() {
    kill -TERM "$idle_pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$idle_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$idle_pid" 2>/dev/null || true
    wait "$idle_pid" 2>/dev/null || true
}

k=0
for rep in $(seq "$reps"); do
    for c in "${cases[@]}"; do
        read -r scen size fl systems <<<"$c"
        order=()
        for s in $systems; do want "$s" && order+=("$s"); done
        ((${#order[@]})) || continue
        # alternate: reversed on every other case, so no system always runs first or last
        if ((k % 2)); then
            rev=()
            for ((i = ${#order[@]} - 1; i >= 0; i--)); do rev+=("${order[$i]}"); done
            order=("${rev[@]}")
        fi
        k=$((k + 1))
        for sys in "${order[@]}"; do
            [[ $scen == idle ]] && idle_start "$sys"
            command_for "$sys" "$scen" "$size" "$fl"
            log "bench/run.sh: rep $rep/$reps $scen ${size} B, $fl in flight: $sys"
            rc=0
            out=$(timeout -k 5 400 "${cmd[@]}" 2>"$tmp/err.txt") || rc=$?
            [[ $scen == idle ]] && idle_stop
            out=$(grep '^result ' <<<"$out" | tail -n 1 || true)
            if [[ $rc -ne 0 || -z $out ]]; then
                failed=1
                why="exit $rc: $(grep -v '^\s*$' "$tmp/err.txt" | tail -n 1 | cut -c1-300)"
                log "bench/run.sh: FAILED $sys $scen size=$size ($why)"
                to_json "$rep" "$sys" "$scen" "$size" "$fl" false "$why" <<<"${out:-result}" >>"$runs"
            else
                log "  $out"
                to_json "$rep" "$sys" "$scen" "$size" "$fl" true "" <<<"$out" >>"$runs"
            fi
        done
    done
done
elapsed=$(($(date +%s) - started))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- results and report -----------------------------------------------------------------------
stamp=$(date +%Y-%m-%d-%H%M%S)
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$root" diff --quiet HEAD 2>/dev/null || commit="$commit+dirty"
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo | tr -d '"\\')
mem=$(awk '/^MemTotal:/ { printf "%d", $2 / 1048576 + 0.5 }' /proc/meminfo)
mkdir -p "$here/results"
json=$here/results/peers-$stamp.json
notes=(
    "\"Durable: Amtsbote answers SEND after its SQLite commit with synchronous=FULL (fsync); RabbitMQ confirms a persistent message on a durable queue after it is written and fsync'd (batched); Mosquitto acknowledges QoS 1 (PUBACK) before its persistence file is written (autosave), so its figure is not acknowledged after an fsync.\""
    "\"Floor: raw libzmq through stunnel client and server with the same certificates; its server CPU is the forwarder's only (stunnel's is not counted).\""
    "\"Runs took ${elapsed} s; windows ${secs} s (latency ${lat_secs} s); ${idle_conns} idle connections.\""
)
[[ -f $tmp/extra-notes ]] && while IFS= read -r n; do notes+=("\"$n\""); done <"$tmp/extra-notes"
{
    printf '{"format":1,"date":"%s","commit":"%s","quick":%s,"repetitions":%d,\n' \
        "$(date '+%Y-%m-%d %H:%M:%S')" "$commit" "$( ((quick)) && echo true || echo false)" "$reps"
    printf '"machine":{"cores":%d,"cpu":"%s","kernel":"%s","memory_gib":%d},\n' \
        "$(nproc)" "$cpu" "$(uname -sr)" "$mem"
    printf '"versions":{%s},\n' "$(IFS=,; echo "${versions[*]}")"
    printf '"load":{"before":"%s","after":"%s"},\n' "$load_start" "$load_end"
    printf '"notes":[%s],\n' "$(IFS=,; echo "${notes[*]}")"
    printf '"runs":[\n'
    sed '$!s/$/,/' "$runs"
    printf ']}\n'
} >"$json"
"$bin/bench_report" "$json" || die "bench_report failed on $json"
log "bench/run.sh: wrote $json, ${json%.json}.md and its charts"
sed -n '/^## Goals/,/^!\[goals\]/p' "${json%.json}.md"
exit "$failed"
