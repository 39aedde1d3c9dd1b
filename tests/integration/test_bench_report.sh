#!/usr/bin/env bash
# test_bench_report.sh BENCH_REPORT FIXTURE - bench_report (bench/run.sh's report generator) on a
# results file with known numbers: medians, min/max, ratios, goal verdicts, failed runs left out,
# charts (when gnuplot is installed) and every bad input with a clear error.
set -uo pipefail
report=$1 fixture=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
ok() { printf 'ok   %s\n' "$1"; }
bad() { printf 'FAIL %s\n' "$1"; fails=$((fails + 1)); }
has() { # has FILE TEXT: a line with TEXT (fixed string)
    if grep -qF -- "$2" "$1"; then ok "$3"; else bad "$3: no line with '$2' in $1"; sed 's/^/    /' "$1"; fi
}

cp "$fixture" "$tmp/peers.json"
if "$report" "$tmp/peers.json" --no-charts 2>"$tmp/err"; then ok "exit 0"; else bad "exit $? ($(cat "$tmp/err"))"; fi
md=$tmp/peers.md
[[ -s $md ]] && ok "report next to the results" || bad "no $md"
# medians of three runs and the ratios between them
has "$md" "| 100 B | 100 | calls/s | 31,000 [30,000 - 32,000] | 40,000 [39,000 - 41,000] | 11,000 [10,000 - 12,000] | 0.78 | 2.82 |" "median, min, max and ratios per system"
has "$md" "| 2.82 (31,000 / 11,000) | met |" "a met goal"
has "$md" "| 0.78 (31,000 / 40,000) | NOT met: 3 % short of 0.8 |" "a missed goal says by how much"
has "$md" "| 1.16 (110 / 95) | NOT met: 16 % above 1 x NATS |" "a latency goal (lower is better)"
has "$md" "| 45,000 | NOT met: 46 % above the bound |" "memory per connection against its bound"
# the failed RabbitMQ run is left out: the median of the other two is their mean
has "$md" "| 1 KiB | 256 | received/s | 40,000 [40,000 - 40,000] | 22,500 [20,000 - 25,000] | 1.78 |" "failed run not counted"
has "$md" "- rabbitmq durable, 1024 B, 256 in flight, repetition 3: rabbitmq: connection reset" "failed run listed"
has "$md" "| no data (a run failed or was not part of this run) |" "a goal without data"
has "$md" "Machine: 2 cores (Test CPU), Linux 6.1, 24 GiB" "machine line"
has "$md" "nats-server 2.9.10" "peer versions"
has "$md" "- Mosquitto QoS 1 acknowledges" "notes"
has "$md" "(No charts: --no-charts.)" "no charts when asked"

# charts, with gnuplot when it is installed (bench/run.sh installs gnuplot-nox)
if command -v gnuplot >/dev/null; then
    "$report" "$tmp/peers.json" --md "$tmp/charts.md" --charts "$tmp/png" 2>"$tmp/err" || bad "charts run: $(cat "$tmp/err")"
    for s in goals call-latency call-throughput stream durable idle; do
        f=$tmp/png/peers-$s.png
        if [[ -s $f ]] && [[ $(head -c 4 "$f" | od -An -c | tr -d ' ') == '211PNG' ]]; then ok "chart $s"; else bad "no PNG $f"; fi
    done
    has "$tmp/charts.md" "![goals](peers-goals.png)" "charts linked from the report"
else
    "$report" "$tmp/peers.json" --md "$tmp/charts.md" 2>/dev/null || bad "run without gnuplot"
    has "$tmp/charts.md" "gnuplot was not found" "no gnuplot: said so"
fi

# bad inputs: each a clear error naming the file, exit 1; usage exit 2
printf '{"format":1,"runs":[\n{"system":"nats",}\n]}\n' >"$tmp/broken.json"
"$report" "$tmp/broken.json" --no-charts 2>"$tmp/err"
rc=$?
[[ $rc -eq 1 ]] && grep -q "broken.json: line 2" "$tmp/err" && ok "broken JSON: file and line named" || bad "broken JSON: exit $rc, $(cat "$tmp/err")"
echo '{"format":2,"runs":[]}' >"$tmp/v2.json"
"$report" "$tmp/v2.json" 2>"$tmp/err"
rc=$?
[[ $rc -eq 1 ]] && grep -q "not a results file of format 1" "$tmp/err" && ok "other format refused" || bad "format 2: exit $rc"
echo '{"format":1,"runs":[{"system":"nats","size":1}]}' >"$tmp/norun.json"
"$report" "$tmp/norun.json" 2>"$tmp/err"
rc=$?
[[ $rc -eq 1 ]] && grep -q 'run 1 needs "system", "scenario" and "size"' "$tmp/err" && ok "incomplete run named" || bad "incomplete run: exit $rc"
"$report" "$tmp/missing.json" 2>"$tmp/err"
rc=$?
[[ $rc -eq 1 ]] && grep -q "missing.json" "$tmp/err" && ok "missing file named" || bad "missing file: exit $rc"
"$report" 2>/dev/null
rc=$?
[[ $rc -eq 2 ]] && ok "usage" || bad "no argument: exit $rc"

((fails == 0)) || { echo "$fails check(s) failed"; exit 1; }
echo "all checks passed"
