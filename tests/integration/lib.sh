# tests/integration/lib.sh - what the shell integration tests share. Source it after setting
# `work` (a fresh temporary directory): nothing of the caller's own environment or profile leaks
# in, processes in `pids` are stopped and `work` removed at exit, and ok/bad/expect count results.
unset AMTSBOTE_BROKER AMTSBOTE_AS AMTSBOTE_CERT AMTSBOTE_KEY AMTSBOTE_CA AMTSBOTE_CRL AMTSBOTE_PROFILE
export XDG_CONFIG_HOME=$work
pids=()
passed=0
failed=0
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

ok() { passed=$((passed + 1)); echo "ok - $1"; }
bad() { failed=$((failed + 1)); echo "not ok - $1"; }
# expect NAME WANT_CODE GOT_CODE [FILE NEEDLE]...: the exit code, then each needle in its file
expect() {
  local name=$1 want=$2 got=$3
  shift 3
  if [ "$got" != "$want" ]; then bad "$name: exit code $got, want $want: $(head -c 400 "${1:-/dev/null}")"; return; fi
  while [ $# -ge 2 ]; do
    if ! grep -qF -- "$2" "$1"; then bad "$name: '$2' not in: $(head -c 400 "$1")"; return; fi
    shift 2
  done
  ok "$name"
}
# finish: the summary line, and the exit status of the test
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ]
}
# await_broker FIFO: reads the start lines a broker writes to FIFO (its stdout) and sets `uri`
# (its first listener) and `metrics` (HOST:PORT, when it serves metrics); then keeps draining the
# FIFO so the broker never blocks on it. Fails when there was no "ready" within 15 s.
await_broker() {
  local line up=0 fd
  exec {fd}<"$1"
  uri="" metrics=""
  while IFS= read -r -t 15 line <&$fd; do
    case "$line" in
      "listening on "*) [ -z "$uri" ] && uri=${line#listening on } ;;
      "metrics on http://"*) metrics=${line#metrics on http://}; metrics=${metrics%/metrics} ;;
      ready) up=1; break ;;
    esac
  done
  cat <&$fd >/dev/null &
  pids+=($!)
  [ "$up" = 1 ] && [ -n "$uri" ]
}
# http_status PATH: GET http://$metrics/PATH; prints the status code, then the body
http_status() {
  python3 - "$metrics" "$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen("http://" + sys.argv[1] + sys.argv[2], timeout=5) as r:
        print(r.status); sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); sys.stdout.write(e.read().decode())
except Exception as e:
    print("000"); print(e)
PY
}
# wait_for FILE TEXT SECONDS: 0 as soon as FILE contains TEXT (grep -e), 1 after SECONDS
wait_for() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    grep -q -e "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
