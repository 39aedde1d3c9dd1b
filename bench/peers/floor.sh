# shellcheck shell=bash
# bench/peers/floor.sh - the raw-libzmq floor of the one-way stream, behind mutual TLS; sourced
# by bench/run.sh.
#
#   floor_stream_start TMPDIR PKIDIR FLOOR_BIN
#       starts FLOOR_BIN --stream (floor_forwarder: PULL bound on IN, PUSH bound on OUT, every
#       message moved untouched) on two free 127.0.0.1 ports, a stunnel server in front of it
#       (the broker's certificate; requires and verifies a client certificate against the chain
#       and the CRL, TLS 1.3 only, as amtsbote-broker does) and a stunnel client (bund.bench's
#       certificate; verifies the server's chain and name), each with two services, "in" and
#       "out". Sets
#         FLOOR_STREAM_IN       tcp://127.0.0.1:PORT the publisher's PUSH connects to
#         FLOOR_STREAM_OUT      tcp://127.0.0.1:PORT the subscriber's PULL connects to
#         FLOOR_STREAM_HOP_PID  the forwarder
#         FLOOR_STREAM_SERVER_PID, FLOOR_STREAM_CLIENT_PID  the two stunnels
#         FLOOR_STREAM_PIDS     all three (an array; the caller stops them)
#       Configurations and logs go to TMPDIR. Returns non-zero with a message on failure (and
#       stops what it had started).
#   floor_stream_version   the stunnel version, e.g. "stunnel 5.68"
#
# The path of a message, one TLS hop on each side as with Amtsbote:
#   PUSH -> stunnel client -TLS-> stunnel server -> forwarder PULL | PUSH -> stunnel server
#        -TLS-> stunnel client -> PULL
# PKIDIR is a certs/pki.sh directory with broker.crt/.key, bund.bench.crt/.key, ca/chain.pem and
# ca/crl.pem. Uses free_port from the caller.

floor_stream_version() {
  local v
  v=$(stunnel -version 2>&1 | awk '/^stunnel/ { print $2; exit }')
  [[ -n $v ]] || { echo "floor: stunnel not found" >&2; return 1; }
  echo "stunnel $v"
}

# _floor_wait LOG PID NAME PATTERN: up to 10 s for PATTERN in LOG while PID runs.
_floor_wait() {
  local i
  for ((i = 0; i < 100; i++)); do
    grep -qE "$4" "$1" 2>/dev/null && return 0
    if ! kill -0 "$2" 2>/dev/null; then
      echo "floor: $3 exited at start (log $1):" >&2
      tail -n 5 "$1" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "floor: $3 not ready after 10 s (log $1)" >&2
  return 1
}

# _floor_stop: stops what floor_stream_start has started so far.
_floor_stop() {
  local pid
  for pid in "${FLOOR_STREAM_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${FLOOR_STREAM_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  FLOOR_STREAM_PIDS=()
}

floor_stream_start() {
  local tmp=$1 pki=$2 bin=$3 f p ports=() in_port out_port srv_in srv_out cli_in cli_out
  # shellcheck disable=SC2034 # the caller's
  FLOOR_STREAM_PIDS=() FLOOR_STREAM_IN='' FLOOR_STREAM_OUT='' FLOOR_STREAM_HOP_PID=''
  FLOOR_STREAM_SERVER_PID='' FLOOR_STREAM_CLIENT_PID=''
  if [[ -z $tmp || -z $pki || -z $bin ]]; then
    echo "floor: usage: floor_stream_start TMPDIR PKIDIR FLOOR_BIN" >&2
    return 1
  fi
  [[ -x $bin ]] || { echo "floor: $bin is not an executable" >&2; return 1; }
  command -v stunnel >/dev/null || { echo "floor: stunnel not found in PATH (Debian: stunnel4)" >&2; return 1; }
  for f in broker.crt broker.key bund.bench.crt bund.bench.key ca/chain.pem ca/crl.pem; do
    [[ -r $pki/$f ]] || { echo "floor: cannot read $pki/$f" >&2; return 1; }
  done
  mkdir -p "$tmp" || return 1
  # six different free ports
  for ((f = 0; f < 50 && ${#ports[@]} < 6; f++)); do
    p=$(free_port) || { echo "floor: no free port" >&2; return 1; }
    [[ " ${ports[*]} " == *" $p "* ]] || ports+=("$p")
  done
  ((${#ports[@]} == 6)) || { echo "floor: no six free ports" >&2; return 1; }
  read -r in_port out_port srv_in srv_out cli_in cli_out <<<"${ports[*]}"

  "$bin" --stream "tcp://127.0.0.1:$in_port" "tcp://127.0.0.1:$out_port" >"$tmp/forwarder.log" 2>&1 &
  FLOOR_STREAM_HOP_PID=$!
  FLOOR_STREAM_PIDS+=("$FLOOR_STREAM_HOP_PID")
  _floor_wait "$tmp/forwarder.log" "$FLOOR_STREAM_HOP_PID" "floor_forwarder --stream" '^ready' ||
    { _floor_stop; return 1; }

  # server side: what amtsbote-broker's tls:// listener enforces
  cat >"$tmp/stunnel-server.conf" <<CONF
foreground = yes
pid =
[in]
accept = 127.0.0.1:$srv_in
connect = 127.0.0.1:$in_port
cert = $pki/broker.crt
key = $pki/broker.key
CAfile = $pki/ca/chain.pem
CRLfile = $pki/ca/crl.pem
verifyChain = yes
sslVersionMin = TLSv1.3
[out]
accept = 127.0.0.1:$srv_out
connect = 127.0.0.1:$out_port
cert = $pki/broker.crt
key = $pki/broker.key
CAfile = $pki/ca/chain.pem
CRLfile = $pki/ca/crl.pem
verifyChain = yes
sslVersionMin = TLSv1.3
CONF
  # client side: what libamtsbote's TLS relay does (certificate, chain and host name checked)
  cat >"$tmp/stunnel-client.conf" <<CONF
foreground = yes
pid =
[in]
client = yes
accept = 127.0.0.1:$cli_in
connect = 127.0.0.1:$srv_in
cert = $pki/bund.bench.crt
key = $pki/bund.bench.key
CAfile = $pki/ca/chain.pem
verifyChain = yes
checkHost = localhost
sslVersionMin = TLSv1.3
[out]
client = yes
accept = 127.0.0.1:$cli_out
connect = 127.0.0.1:$srv_out
cert = $pki/bund.bench.crt
key = $pki/bund.bench.key
CAfile = $pki/ca/chain.pem
verifyChain = yes
checkHost = localhost
sslVersionMin = TLSv1.3
CONF
  stunnel "$tmp/stunnel-server.conf" >"$tmp/stunnel-server.log" 2>&1 &
  FLOOR_STREAM_SERVER_PID=$!
  FLOOR_STREAM_PIDS+=("$FLOOR_STREAM_SERVER_PID")
  _floor_wait "$tmp/stunnel-server.log" "$FLOOR_STREAM_SERVER_PID" "stunnel (stream server)" \
    'Configuration successful' || { _floor_stop; return 1; }
  stunnel "$tmp/stunnel-client.conf" >"$tmp/stunnel-client.log" 2>&1 &
  FLOOR_STREAM_CLIENT_PID=$!
  FLOOR_STREAM_PIDS+=("$FLOOR_STREAM_CLIENT_PID")
  _floor_wait "$tmp/stunnel-client.log" "$FLOOR_STREAM_CLIENT_PID" "stunnel (stream client)" \
    'Configuration successful' || { _floor_stop; return 1; }

  # shellcheck disable=SC2034 # the caller's
  FLOOR_STREAM_IN=tcp://127.0.0.1:$cli_in FLOOR_STREAM_OUT=tcp://127.0.0.1:$cli_out
  return 0
}
