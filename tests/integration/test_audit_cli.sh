#!/usr/bin/env bash
# Integration test of `amtsbote audit verify|query` on a log directory read offline: a log
# written by bench_audit and signed with a broker key from certs/pki.sh, then damaged on disk.
#   test_audit_cli.sh CLI_BIN BENCH_AUDIT_BIN PKI_SH
set -uo pipefail
CLI=$1
GEN=$2
PKI=$3
work=$(mktemp -d /tmp/amtsbote-audit-cli-XXXXXX)
trap 'rm -rf "$work"' EXIT
unset AMTSBOTE_PROFILE
export XDG_CONFIG_HOME=$work
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $1"; }
bad() { failed=$((failed + 1)); echo "not ok - $1"; }
# expect NAME WANT_CODE GOT_CODE FILE NEEDLE
expect() {
  if [ "$3" != "$2" ]; then bad "$1: exit code $3, want $2: $(head -c 300 "$4")"; return; fi
  if ! grep -qF -- "$5" "$4"; then bad "$1: '$5' not in: $(head -c 300 "$4")"; return; fi
  ok "$1"
}

bash "$PKI" init "$work/pki" >/dev/null 2>&1 || { echo "pki init failed"; exit 1; }
bash "$PKI" broker "$work/pki" broker >/dev/null 2>&1 || { echo "pki broker failed"; exit 1; }
bash "$PKI" broker "$work/pki" other >/dev/null 2>&1 || { echo "pki broker failed"; exit 1; }
fresh() {
  rm -rf "$work/log"
  "$GEN" "$work/log" --records 300 --batch 10 --max-file-bytes 20000 \
    --key "$work/pki/broker.key" --cert "$work/pki/broker.crt" >/dev/null || exit 1
}

fresh
"$CLI" audit verify "$work/log" --cert "$work/pki/broker.crt" >"$work/out" 2>&1
expect "verify intact" 0 $? "$work/out" "intact: 300 records in"
grep -qF "every seal's signature verified" "$work/out" && ok "signatures checked" || bad "signatures checked"
"$CLI" audit verify "$work/log" >"$work/out" 2>&1
expect "verify without --cert" 0 $? "$work/out" "signatures not checked"
"$CLI" audit verify "$work/log" --cert "$work/pki/other.crt" >"$work/out" 2>&1
expect "another broker's certificate" 9 $? "$work/out" "forged: audit-000001.log:"

# a flipped byte in the third line of the second file
sed -i '3s/kommune/kommunE/' "$work/log/audit-000002.log"
"$CLI" audit verify "$work/log" --cert "$work/pki/broker.crt" >"$work/out" 2>&1
expect "flipped byte" 9 $? "$work/out" "changed: audit-000002.log:3:"

fresh
sed -i '5d' "$work/log/audit-000002.log"
"$CLI" audit verify "$work/log" >"$work/out" 2>&1
expect "deleted record" 9 $? "$work/out" "removed: audit-000002.log:5:"

fresh
awk 'NR == 4 { held = $0; next } NR == 5 { print; print held; next } { print }' \
  "$work/log/audit-000002.log" >"$work/swapped" && mv "$work/swapped" "$work/log/audit-000002.log"
"$CLI" audit verify "$work/log" >"$work/out" 2>&1
expect "swapped records" 9 $? "$work/out" "reordered: audit-000002.log:4:"

fresh
truncate -s -30 "$work/log/audit-000001.log"
"$CLI" audit verify "$work/log" >"$work/out" 2>&1
expect "truncated file" 9 $? "$work/out" "truncated: audit-000001.log:"

fresh
rm "$work/log/audit-000002.log"
"$CLI" audit verify "$work/log" >"$work/out" 2>&1
expect "deleted file" 9 $? "$work/out" "file-missing: audit-000002.log:"

# query: sender kommune.09160003 is every tenth record; purposes alternate by record
fresh
"$CLI" audit query "$work/log" --participant kommune.09160003 >"$work/out" 2>&1
expect "query participant" 0 $? "$work/out" " kommune.09160003 -> bund.bmi "
[ "$(wc -l <"$work/out")" = 30 ] && ok "query: 30 lines" || bad "query: $(wc -l <"$work/out") lines, want 30"
"$CLI" audit query "$work/log" --participant kommune.09160003 --purpose 'BMG §34' >"$work/out" 2>&1
expect "query purpose" 0 $? "$work/out" 'purpose="BMG §34"'
[ "$(wc -l <"$work/out")" = 30 ] && ok "query purpose: 30 lines" || bad "query purpose: $(wc -l <"$work/out") lines"
"$CLI" audit query "$work/log" --participant kommune.09160003 --purpose 'AO §93' >"$work/out" 2>&1
[ "$(wc -l <"$work/out")" = 0 ] && ok "query other purpose: none" || bad "query other purpose"
"$CLI" audit query "$work/log" --participant bund.bmi --since 2999-01-01T00:00:00Z >"$work/out" 2>&1
[ $? = 0 ] && [ "$(wc -l <"$work/out")" = 0 ] && ok "query --since future: none" || bad "query --since"
"$CLI" audit query "$work/log" --participant bund.bmi --since 0 >"$work/out" 2>&1
[ "$(wc -l <"$work/out")" = 300 ] && ok "query --since 0: all" || bad "query --since 0"
"$CLI" audit query "$work/log" --participant bund.bmi --since yesterday >"$work/out" 2>&1
expect "query bad --since" 2 $? "$work/out" "--since needs"
"$CLI" audit query "$work/log" >"$work/out" 2>&1
expect "query without --participant" 2 $? "$work/out" "--participant"
"$CLI" audit verify "$work/nonexistent" >"$work/out" 2>&1
expect "verify a missing directory" 1 $? "$work/out" "cannot list"

echo "passed $passed, failed $failed"
[ "$failed" = 0 ]
