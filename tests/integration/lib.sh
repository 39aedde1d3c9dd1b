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
