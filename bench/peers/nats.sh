# shellcheck shell=bash
# bench/peers/nats.sh - starts nats-server for the peer comparison; sourced by bench/run.sh.
#
#   nats_start TMPDIR PKIDIR   nats-server with mutual TLS on a free 127.0.0.1 port; sets NATS_PID
#                              and NATS_URL (tls://127.0.0.1:PORT); config and log in TMPDIR
#   nats_version               the nats-server version, e.g. "nats-server 2.9.10"
#
# PKIDIR is a certs/pki.sh directory with the broker certificate (broker.crt/.key, SAN localhost
# and 127.0.0.1) and the CA bundle (ca/chain.pem). Clients must present a certificate issued by
# that CA (verify: true). Uses free_port from the caller; the caller stops NATS_PID.

nats_version() {
  local v
  v=$(nats-server --version 2>/dev/null) || { echo "nats: nats-server not found" >&2; return 1; }
  echo "nats-server ${v##* v}"
}

nats_start() {
  local tmp=$1 pki=$2 port conf log i
  if [[ -z $tmp || -z $pki ]]; then
    echo "nats: usage: nats_start TMPDIR PKIDIR" >&2
    return 1
  fi
  command -v nats-server >/dev/null || { echo "nats: nats-server not found in PATH" >&2; return 1; }
  for f in "$pki/broker.crt" "$pki/broker.key" "$pki/ca/chain.pem"; do
    [[ -r $f ]] || { echo "nats: cannot read $f" >&2; return 1; }
  done
  mkdir -p "$tmp/nats" || return 1
  port=$(free_port) || { echo "nats: no free port" >&2; return 1; }
  conf=$tmp/nats/nats.conf
  log=$tmp/nats/nats.log
  # max_payload is the default (1 MiB), stated because the largest message measured is 64 KiB.
  # No monitoring port, no JetStream: core NATS only.
  cat >"$conf" <<EOF
listen: 127.0.0.1:$port
max_payload: 1048576
tls {
  cert_file: "$pki/broker.crt"
  key_file: "$pki/broker.key"
  ca_file: "$pki/ca/chain.pem"
  verify: true
  timeout: 5
}
EOF
  : >"$log"
  nats-server -c "$conf" >"$log" 2>&1 &
  NATS_PID=$!
  NATS_URL=tls://127.0.0.1:$port
  for ((i = 0; i < 100; i++)); do
    if grep -q "Server is ready" "$log"; then
      return 0
    fi
    if ! kill -0 "$NATS_PID" 2>/dev/null; then
      echo "nats: nats-server exited at start (log $log):" >&2
      tail -n 5 "$log" >&2
      NATS_PID=
      return 1
    fi
    sleep 0.1
  done
  echo "nats: nats-server not ready on 127.0.0.1:$port after 10 s (log $log)" >&2
  kill "$NATS_PID" 2>/dev/null
  NATS_PID=
  return 1
}
