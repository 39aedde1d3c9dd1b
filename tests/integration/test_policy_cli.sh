#!/usr/bin/env bash
# `amtsbote policy check|explain`, offline (no broker): output and exit codes.
#   test_policy_cli.sh CLI_BIN EXAMPLE_POLICY
set -uo pipefail
CLI=$1
EXAMPLE=$2
work=$(mktemp -d /tmp/amtsbote-policy-XXXXXX)
trap 'rm -rf "$work"' EXIT
unset AMTSBOTE_BROKER AMTSBOTE_AS AMTSBOTE_CERT AMTSBOTE_KEY AMTSBOTE_CA AMTSBOTE_CRL AMTSBOTE_PROFILE
export XDG_CONFIG_HOME=$work
passed=0
failed=0
# expect NAME WANT_CODE NEEDLE -- COMMAND...: runs COMMAND, checks the exit code and that NEEDLE
# is in its stdout+stderr
expect() {
  local name=$1 want=$2 needle=$3
  shift 4
  "$@" >"$work/out" 2>&1
  local got=$?
  if [ "$got" != "$want" ]; then
    failed=$((failed + 1)); echo "not ok - $name: exit $got, want $want: $(head -c 400 "$work/out")"
  elif ! grep -qF -- "$needle" "$work/out"; then
    failed=$((failed + 1)); echo "not ok - $name: '$needle' not in: $(head -c 400 "$work/out")"
  else
    passed=$((passed + 1)); echo "ok - $name"
  fi
}

expect "check example" 0 "ok: 4 groups, 8 rules" -- "$CLI" policy check "$EXAMPLE"
expect "check missing file" 2 "cannot open the policy file" -- "$CLI" policy check "$work/none.yaml"
printf 'groups:\n  a: [x.*]\nrules:\n  - who: "@b"\n    action: call\n    resource: a.B/c\n' >"$work/p1.yaml"
expect "check unknown group" 2 "p1.yaml:4:10: unknown group 'b'" -- "$CLI" policy check "$work/p1.yaml"
printf 'rules:\n  - who: x\n    action: lesen\n    resource: a.B/c\n' >"$work/p2.yaml"
expect "check unknown action" 2 "p2.yaml:3:13: unknown action 'lesen'" -- "$CLI" policy check "$work/p2.yaml"
printf 'rules:\n  - who: x\n  action: call\n' >"$work/p3.yaml"
expect "check bad yaml" 2 "p3.yaml:3:" -- "$CLI" policy check "$work/p3.yaml"
expect "check no file" 2 "give one FILE" -- "$CLI" policy check
expect "policy help" 0 "policy explain FILE" -- "$CLI" policy --help
expect "unknown subcommand" 2 "unknown command 'frag'" -- "$CLI" policy frag

M=meldewesen.v1.Melderegister/Meldebescheinigung
expect "explain allowed" 0 "rule: melde-auskunft (" -- \
  "$CLI" policy explain "$EXAMPLE" --as bund.bmi call $M --purpose "BMG §34"
expect "explain allowed says so" 0 "allowed: bund.bmi call $M for 'BMG §34'" -- \
  "$CLI" policy explain "$EXAMPLE" --as bund.bmi call $M --purpose "BMG §34"
expect "explain purpose missing" 9 "requires one of the purposes 'BMG §34', 'BMG §45'" -- \
  "$CLI" policy explain "$EXAMPLE" --as bund.bmi call $M
expect "explain wrong who" 9 "only for @bund" -- \
  "$CLI" policy explain "$EXAMPLE" --as kommune.09162000.meldeamt call $M --purpose "BMG §34"
expect "explain no rule" 9 "rule: none" -- \
  "$CLI" policy explain "$EXAMPLE" --as bund.bmi call steuer.v1.Elster/Abruf
expect "explain topic" 0 "rule: meldewesen-abonnieren" -- \
  "$CLI" policy explain "$EXAMPLE" --as bund.bva subscribe 'meldewesen.umzug.*'
expect "explain classification denied" 9 "is cleared for OFFEN" -- \
  "$CLI" policy explain "$EXAMPLE" --as kommune.09162000.meldeamt send land.by.stmi \
  --classification VS-NUR-FUER-DEN-DIENSTGEBRAUCH
expect "explain classification allowed" 0 "allowed" -- \
  "$CLI" policy explain "$EXAMPLE" --as bund.bmi call $M --purpose "BMG §45" \
  --classification VS-NUR-FUER-DEN-DIENSTGEBRAUCH
expect "explain global --as" 0 "allowed" -- \
  "$CLI" --as land.by.stmi policy explain "$EXAMPLE" receive kommune.09162000.meldeamt
expect "explain without --as" 2 "give --as PARTICIPANT" -- \
  "$CLI" policy explain "$EXAMPLE" call $M
expect "explain unknown action" 2 "unknown action 'lesen'" -- \
  "$CLI" policy explain "$EXAMPLE" --as bund.bmi lesen $M
expect "explain bad level" 2 "--classification is OFFEN or" -- \
  "$CLI" policy explain "$EXAMPLE" --as bund.bmi call $M --classification GEHEIM
expect "explain bad file" 2 "p2.yaml:3:13" -- \
  "$CLI" policy explain "$work/p2.yaml" --as bund.bmi call $M

echo "# $passed passed, $failed failed"
[ "$failed" -eq 0 ]
