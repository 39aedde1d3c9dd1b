# shellcheck shell=bash
# bench/peers/mosquitto.sh - starts Mosquitto for the peer comparison; sourced by bench/run.sh.
#
#   mosquitto_start TMPDIR PKIDIR   mosquitto with mutual TLS (TLS 1.3) on a free 127.0.0.1 port;
#                                   sets MOSQUITTO_PID, MOSQUITTO_PORT and MOSQUITTO_URL
#                                   (mqtts://127.0.0.1:PORT); config, log and persistence file
#                                   in TMPDIR
#   mosquitto_version               the broker's version, e.g. "mosquitto 2.0.11"
#
# PKIDIR is a certs/pki.sh directory with the broker certificate (broker.crt/.key, SAN localhost
# and 127.0.0.1), the CA bundle (ca/chain.pem) and the CRL (ca/crl.pem). Clients must present a
# certificate issued by that CA (require_certificate); the certificate's CN becomes the MQTT
# username (use_identity_as_username), so no client connects without one. Uses free_port from
# the caller; the caller stops MOSQUITTO_PID.
#
# What Mosquitto's QoS 1 "durability" means (Mosquitto 2.0; say so next to the figures):
# the broker sends PUBACK once the message is in its memory and queued for the subscribers. It
# writes nothing to disk per message and never fsyncs for a message: with `persistence true` it
# saves a snapshot of the whole in-memory state (sessions, subscriptions, queued and retained
# messages) to mosquitto.db only every autosave_interval seconds (1800 by default, kept here), on
# SIGUSR1 and when it shuts down cleanly; the snapshot is written to mosquitto.db.new, fflush()ed
# and fsync()ed, then renamed over mosquitto.db (the directory is not fsynced). A crash or
# SIGKILL loses every message acknowledged since the last snapshot; a PUBACK does not imply that
# anything reached the disk. A subscriber with clean session off keeps its queue across its own
# disconnects (up to max_queued_messages, beyond which QoS 1 messages are dropped silently,
# although the publisher got its PUBACK).
#
# Limits set here. A QoS 1 PUBACK is not end-to-end flow control: the broker acknowledges a
# publisher whatever the subscriber's backlog, so the publishers' windows do not bound that
# backlog. max_inflight_messages 65535 (QoS 1/2 messages sent to a client and not yet
# acknowledged by it) and max_queued_messages 100000 (held beyond those, per client) are far
# above what a durable run of a few seconds accumulates, so nothing is dropped. Once a backlog
# exceeds max_inflight_messages it goes to the queue, which Mosquitto drains only as the
# subscriber's PUBACKs arrive, one per event-loop turn, while it reads a PUBLISH from each
# publisher in the same turn: with 1000 in flight and 4000 queued the backlog ran away within a
# 2 s run and acknowledged messages were dropped. The same max_queued_messages bounds QoS 0: a subscriber that falls
# more than 100000 packets behind loses QoS 0 messages (bench_mqtt reports lost=); 0 (no limit)
# would let the broker's memory grow without bound. max_queued_bytes 0: no byte limit.

# the mosquitto binary (Debian puts it in /usr/sbin, which is not always in PATH)
mosquitto_bin() {
  command -v mosquitto 2>/dev/null || { [[ -x /usr/sbin/mosquitto ]] && echo /usr/sbin/mosquitto; }
}

mosquitto_version() {
  local bin v
  bin=$(mosquitto_bin) || { echo "mosquitto: mosquitto not found" >&2; return 1; }
  # `mosquitto -h` prints the version and exits non-zero; the caller may run with pipefail
  v=$({ "$bin" -h 2>&1 || true; } | sed -n 's/^mosquitto version \([^ ]*\).*/\1/p')
  echo "mosquitto ${v:-unknown}"
}

mosquitto_start() {
  local tmp=$1 pki=$2 port conf log bin i f
  if [[ -z $tmp || -z $pki ]]; then
    echo "mosquitto: usage: mosquitto_start TMPDIR PKIDIR" >&2
    return 1
  fi
  bin=$(mosquitto_bin) || { echo "mosquitto: no mosquitto in PATH or /usr/sbin" >&2; return 1; }
  for f in "$pki/broker.crt" "$pki/broker.key" "$pki/ca/chain.pem" "$pki/ca/crl.pem"; do
    [[ -r $f ]] || { echo "mosquitto: cannot read $f" >&2; return 1; }
  done
  mkdir -p "$tmp" || return 1
  tmp=$(cd "$tmp" && pwd) # persistence_location and log_dest need absolute paths
  port=$(free_port) || { echo "mosquitto: no free port" >&2; return 1; }
  conf=$tmp/mosquitto.conf
  log=$tmp/mosquitto.log
  # user root: started as root, mosquitto would otherwise switch to the user "mosquitto", which
  # cannot read the broker key or write TMPDIR. set_tcp_nodelay: as the clients do (and ZeroMQ).
  cat >"$conf" <<EOF
per_listener_settings false
user root
allow_anonymous false
persistence true
persistence_location $tmp/
persistence_file mosquitto.db
autosave_interval 1800
max_inflight_messages 65535
max_queued_messages 100000
max_queued_bytes 0
set_tcp_nodelay true
log_dest file $log
log_type error
log_type warning
log_type notice
log_type information
connection_messages true

listener $port 127.0.0.1
cafile $pki/ca/chain.pem
crlfile $pki/ca/crl.pem
certfile $pki/broker.crt
keyfile $pki/broker.key
require_certificate true
use_identity_as_username true
tls_version tlsv1.3
EOF
  : >"$log"
  "$bin" -c "$conf" >"$tmp/mosquitto.out" 2>&1 &
  MOSQUITTO_PID=$!
  # shellcheck disable=SC2034 # for the caller
  MOSQUITTO_PORT=$port MOSQUITTO_URL=mqtts://127.0.0.1:$port
  for ((i = 0; i < 100; i++)); do
    if ss -Htln "sport = :$port" 2>/dev/null | grep -q .; then
      return 0
    fi
    if ! kill -0 "$MOSQUITTO_PID" 2>/dev/null; then
      echo "mosquitto: mosquitto exited at start (log $log):" >&2
      tail -n 5 "$log" "$tmp/mosquitto.out" >&2
      MOSQUITTO_PID=
      return 1
    fi
    sleep 0.1
  done
  echo "mosquitto: not listening on 127.0.0.1:$port after 10 s (log $log)" >&2
  kill "$MOSQUITTO_PID" 2>/dev/null
  MOSQUITTO_PID=
  return 1
}
