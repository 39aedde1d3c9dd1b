# shellcheck shell=bash
# bench/peers/rabbitmq.sh - starts a private RabbitMQ node for the peer comparison; sourced by
# bench/run.sh.
#
#   rabbitmq_start TMPDIR PKIDIR  a RabbitMQ node with AMQP over mutual TLS on a free 127.0.0.1
#                                 port and nothing else (no plain listener, no plugins); sets
#                                 RABBITMQ_PID, RABBITMQ_PORT (and RABBITMQ_EPMD_PID,
#                                 RABBITMQ_WRAPPER_PID, RABBITMQ_NODE); everything in TMPDIR
#   rabbitmq_version              the server version, e.g. "3.10.8 (Erlang/OTP 25.2.3)"
#
# PKIDIR is a certs/pki.sh directory: the node presents broker.crt/.key (SAN localhost and
# 127.0.0.1) and requires a client certificate issued by ca/chain.pem (ssl_options.verify =
# verify_peer, fail_if_no_peer_cert = true). TLS 1.3 only: RabbitMQ 3.10 on Erlang/OTP 25
# supports it. Login is guest/guest with PLAIN inside the TLS connection; guest may log in only
# from loopback, which is RabbitMQ's default and all this benchmark uses.
#
# Processes, all in the caller's process group:
#   wrapper (bash) -> epmd -port P (our own, on a free port, loopback only)
#                  -> /usr/lib/rabbitmq/bin/rabbitmq-server (sh) -> beam.smp (the node)
# RABBITMQ_PID is the beam.smp process: the one whose CPU time counts (--server-pid) and the one
# to stop. `kill $RABBITMQ_PID` (SIGTERM) shuts the node down cleanly in a second or two; then the
# Debian start script exits, and the wrapper stops its epmd and exits too, so nothing of the node
# is left. `wait $RABBITMQ_WRAPPER_PID` returns once all of that has happened (beam.smp is not a
# child of the caller, the wrapper is). Should the wrapper itself be killed instead, it stops the
# node and epmd first.
#
# The Debian /usr/sbin/rabbitmq-server switches to the rabbitmq user; the script under
# /usr/lib/rabbitmq/bin runs the node as whoever calls it (here root, who can read the 0600 keys
# in PKIDIR). HOME points into TMPDIR, so the node's Erlang cookie is written there, not to ~.
#
# What a publisher confirm means here (RabbitMQ 3.10.8, classic queue version 1, the default; read
# from the installed rabbit_amqqueue_process, rabbit_variable_queue, rabbit_queue_index and
# file_handle_cache): a persistent message (delivery_mode 2) routed to a durable classic queue is
# confirmed once it is on disk with an fsync(). Messages below queue_index_embed_msgs_below (4096
# B, so both the 100 B and the 1 KiB runs) go into the queue's own index journal; the queue
# fsyncs that journal whenever its mailbox runs empty, or at the latest 200 ms after a message
# waiting for a confirm arrived, and then confirms every message the fsync covered at once (a
# group commit). With a deep window (4 publishers x 256) the queue is rarely idle and confirms
# take up to the 200 ms (confirm p99 about 200 ms here); with a shallow one (3 x 32) it idles
# between bursts and fsyncs every few ms (confirm p50 about 8 ms). Delivery to the consumer does
# not wait for the fsync. The one confirm without an fsync of the message: when the journal is
# flushed into segment files (every 32768 journal entries), a message that has already been
# consumed and acked is dropped instead of written, and confirmed. (Messages of 4096 B and more
# go to the shared message store, which likewise confirms a message it never wrote when it was
# consumed and acked first.)

rabbitmq_version() {
    local app v otp
    app=$(ls /usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbit-*/ebin/rabbit.app 2>/dev/null |
        tail -n 1)
    [[ -n $app ]] || { echo "rabbitmq: no RabbitMQ under /usr/lib/rabbitmq" >&2; return 1; }
    v=$(sed -n 's/.*{vsn, *"\([^"]*\)".*/\1/p' "$app" | head -n 1)
    otp=$(cat /usr/lib/erlang/releases/*/OTP_VERSION 2>/dev/null | head -n 1)
    echo "${v:-unknown} (Erlang/OTP ${otp:-unknown})"
}

rabbitmq_start() {
    local tmp=$1 pki=$2 dir port dist epmd node f i server=/usr/lib/rabbitmq/bin/rabbitmq-server
    RABBITMQ_PID= RABBITMQ_EPMD_PID= RABBITMQ_WRAPPER_PID=
    if [[ -z $tmp || -z $pki ]]; then
        echo "rabbitmq: usage: rabbitmq_start TMPDIR PKIDIR" >&2
        return 1
    fi
    [[ -x $server ]] || { echo "rabbitmq: $server not found" >&2; return 1; }
    command -v epmd >/dev/null || { echo "rabbitmq: epmd not found in PATH" >&2; return 1; }
    command -v openssl >/dev/null || { echo "rabbitmq: openssl not found in PATH" >&2; return 1; }
    for f in "$pki/broker.crt" "$pki/broker.key" "$pki/ca/chain.pem"; do
        [[ -r $f ]] || { echo "rabbitmq: cannot read $f" >&2; return 1; }
    done
    dir=$tmp/rabbitmq
    mkdir -p "$dir/mnesia" "$dir/log" "$dir/home" || return 1
    port=$(free_port) && dist=$(free_port) && epmd=$(free_port) ||
        { echo "rabbitmq: no free port" >&2; return 1; }
    [[ $port != "$dist" && $port != "$epmd" && $dist != "$epmd" ]] ||
        { echo "rabbitmq: free_port gave the same port twice" >&2; return 1; }
    node=bench$$x$RANDOM@localhost

    # ssl_options.depth 2: client certificate <- issuing CA <- root CA.
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp = none
listeners.ssl.default = 127.0.0.1:$port
ssl_options.cacertfile = $pki/ca/chain.pem
ssl_options.certfile = $pki/broker.crt
ssl_options.keyfile = $pki/broker.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
ssl_options.depth = 2
ssl_options.versions.1 = tlsv1.3
loopback_users.guest = true
log.console = false
log.file.level = info
EOF
    echo '[].' >"$dir/enabled_plugins"
    : >"$dir/rabbitmq-env.conf" # instead of /etc/rabbitmq/rabbitmq-env.conf

    (
        rpid= epid= rc=
        # A signal to the wrapper stops the node first (the start script forwards SIGTERM to
        # beam.smp and waits for it), then epmd.
        trap '[[ -n $rpid ]] && kill -TERM $rpid 2>/dev/null && wait $rpid
              [[ -n $epid ]] && kill -TERM $epid 2>/dev/null && wait $epid
              exit 0' TERM INT HUP
        epmd -port "$epmd" -address 127.0.0.1 >"$dir/log/epmd.out" 2>&1 &
        epid=$!
        echo "$epid" >"$dir/epmd.pid"
        for ((i = 0; i < 50; i++)); do # the node must find our epmd, not start its own
            ERL_EPMD_PORT=$epmd epmd -names >/dev/null 2>&1 && break
            sleep 0.1
        done
        env HOME="$dir/home" \
            RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
            RABBITMQ_NODENAME="$node" \
            RABBITMQ_MNESIA_BASE="$dir/mnesia" \
            RABBITMQ_LOG_BASE="$dir/log" \
            RABBITMQ_PID_FILE="$dir/beam.pid" \
            RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
            RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
            RABBITMQ_DIST_PORT="$dist" \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
            ERL_EPMD_PORT="$epmd" \
            ERL_EPMD_ADDRESS=127.0.0.1 \
            "$server" >"$dir/log/server.out" 2>&1 &
        rpid=$!
        wait "$rpid"
        rc=$?
        kill -TERM "$epid" 2>/dev/null
        wait "$epid"
        exit "$rc"
    ) &
    RABBITMQ_WRAPPER_PID=$!
    RABBITMQ_PORT=$port
    RABBITMQ_NODE=$node

    # Up when the start script reports the broker started (all boot steps done, listeners open)
    # and a TLS handshake shows what clients will meet: TLS 1.3, the broker certificate verified
    # against the CA bundle and 127.0.0.1, then the server's alert that a client certificate is
    # required (this probe brings none). RabbitMQ reads the key files only at the first
    # handshake, so a bad key shows up here, not at start.
    local probe tries=0 deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        [[ -z $RABBITMQ_EPMD_PID && -s $dir/epmd.pid ]] && RABBITMQ_EPMD_PID=$(<"$dir/epmd.pid")
        [[ -z $RABBITMQ_PID && -s $dir/beam.pid ]] && RABBITMQ_PID=$(<"$dir/beam.pid")
        if [[ -n $RABBITMQ_PID ]] && grep -q 'Starting broker.*completed' "$dir/log/server.out"
        then
            probe=$(timeout 5 openssl s_client -connect "127.0.0.1:$port" -brief \
                -CAfile "$pki/ca/chain.pem" -verify_return_error -verify_ip 127.0.0.1 \
                < <(sleep 1) 2>&1)
            # (stdin open for a second: TLS 1.3's "certificate required" alert comes after the
            # handshake, and an s_client whose stdin ends at once may leave before reading it)
            if grep -q '^Protocol version: TLSv1.3' <<<"$probe" &&
                grep -q '^Verification: OK' <<<"$probe" &&
                grep -q 'alert certificate required' <<<"$probe"; then
                if [[ $(cat "/proc/$RABBITMQ_PID/comm" 2>/dev/null) != beam.smp ]]; then
                    echo "rabbitmq: pid file $dir/beam.pid names no beam.smp" >&2
                    break
                fi
                return 0
            fi
            if ((++tries >= 3)); then
                echo "rabbitmq: the node is up but TLS on 127.0.0.1:$port is not as configured" \
                    "(want TLSv1.3, broker certificate verified, client certificate required;" \
                    "logs in $dir/log); openssl s_client said:" >&2
                grep -E '^(Protocol|Verification)|alert|error' <<<"$probe" | head -n 5 >&2
                grep -qE '^(Protocol|Verification)' <<<"$probe" ||
                    echo "  no handshake (a bad broker.crt or broker.key closes it silently)" >&2
                break
            fi
        fi
        if ! kill -0 "$RABBITMQ_WRAPPER_PID" 2>/dev/null; then
            echo "rabbitmq: the node exited at start (logs in $dir/log):" >&2
            tail -n 15 "$dir/log/server.out" >&2
            RABBITMQ_PID= RABBITMQ_EPMD_PID= RABBITMQ_WRAPPER_PID=
            return 1
        fi
        sleep 0.1
    done
    ((SECONDS < deadline)) || echo "rabbitmq: node $node not up on 127.0.0.1:$port within 60 s" \
        "(logs in $dir/log)" >&2
    kill -TERM "$RABBITMQ_WRAPPER_PID" 2>/dev/null
    wait "$RABBITMQ_WRAPPER_PID" 2>/dev/null
    RABBITMQ_PID= RABBITMQ_EPMD_PID= RABBITMQ_WRAPPER_PID=
    return 1
}
