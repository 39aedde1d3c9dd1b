#!/usr/bin/env bash
# A full disk: the broker refuses SENDs with UNAVAILABLE (and does not crash), /readyz says it
# is not ready, and once there is space again the same messages are accepted and every accepted
# one is delivered intact.
#
# The data directory lies on a small tmpfs (64 MiB: the store checkpoints its WAL only every
# 4096 pages, so the WAL alone may take 16 MiB), so it needs root for the mount; without root the
# test FAILS, it does not skip. A filler file takes all but 3 MiB of it after the broker started;
# mbload sends 4 KiB messages (and retries each refused one with the same id) until the first
# UNAVAILABLE; then /readyz is checked, the filler removed, and the same sender must get every
# message accepted; a receiver drains the mailbox and checks each payload.
#
# MIN_FREE (default 0) is the broker's --min-free-bytes. With 0 the disk really fills and SQLite's
# writes fail (SQLITE_FULL: the turn is rolled back and answered UNAVAILABLE); with 8 MiB the
# broker refuses SENDs while less than that is free, before any write fails, and a consumer can
# still drain the mailbox (its acknowledgements write too) while the disk stays low.
#   test_disk_full.sh BROKER_BIN MBLOAD_BIN [MIN_FREE]
set -uo pipefail
BROKER=$1
MBLOAD=$2
MIN_FREE=${3:-0}
if [ "$(id -u)" != 0 ]; then
  echo "not ok - test_disk_full.sh needs root: it mounts a 64 MiB tmpfs (mount -t tmpfs) for the"
  echo "         broker's data directory; run it as root (CI does), e.g. sudo ctest -R test_disk_full"
  exit 1
fi
work=$(mktemp -d /tmp/amtsbote-diskfull-XXXXXX)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mnt=$work/tmpfs
mkdir -p "$mnt"
mount -t tmpfs -o size=64m,mode=0700 tmpfs "$mnt" || { echo "not ok - mount -t tmpfs failed"; rm -rf "$work"; exit 1; }
# processes first (they hold files on the tmpfs), then the mount, then lib.sh's cleanup
cleanup_mounted() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  for p in "${pids[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null; done
  pids=()
  umount "$mnt" 2>/dev/null || umount -l "$mnt"
  cleanup
}
trap cleanup_mounted EXIT

mkfifo "$work/broker.out"
"$BROKER" --listen 'tcp://127.0.0.1:*' --insecure-plain-identities --data "$mnt/data" \
  --metrics 127.0.0.1:0 --log-level warn --min-free-bytes "$MIN_FREE" \
  >"$work/broker.out" 2>"$work/broker.log" &
broker_pid=$!
pids+=("$broker_pid")
await_broker "$work/broker.out" && [ -n "$metrics" ] ||
  { echo "not ok - broker did not start"; cat "$work/broker.log"; exit 1; }

http_status /readyz >"$work/ready0"
expect "/readyz ready before the disk fills" 0 0 "$work/ready0" "200"

# all but 3 MiB of the tmpfs for the filler
avail=$(df --output=avail -B1 "$mnt" | tail -n 1)
fill=$((avail - 3 * 1024 * 1024))
# with a low-water mark: room for some messages above it, so that there is something to drain
[ "$MIN_FREE" != 0 ] && fill=$((avail - MIN_FREE - 6 * 1024 * 1024))
head -c "$fill" /dev/zero >"$mnt/filler" 2>/dev/null
echo "tmpfs: $(df -h --output=size,used,avail "$mnt" | tail -n 1)"

rcpt=land.voll.empfang
count=2500 # 10 MiB of payloads: more than is left, and with a 16 MiB WAL less than the tmpfs
"$MBLOAD" send --broker "$uri" --as bund.voll --to "$rcpt" --count $count --size 4096 --window 8 \
  --accepted-log "$work/accepted" --attempted-log "$work/attempted" --seconds 90 \
  --drain-seconds 30 >"$work/send.out" 2>"$work/send.err" &
send_pid=$!
pids+=("$send_pid")

got=0
for _ in $(seq 600); do
  grep -q "first UNAVAILABLE" "$work/send.err" && { got=1; break; }
  kill -0 "$send_pid" 2>/dev/null || break
  sleep 0.1
done
if [ "$got" = 1 ]; then
  ok "the full disk is answered with UNAVAILABLE ($(grep -o 'first UNAVAILABLE.*' "$work/send.err"))"
else
  bad "no UNAVAILABLE within 60 s: $(cat "$work/send.out") $(tail -n 3 "$work/send.err")"
fi
sleep 0.5
kill -0 "$broker_pid" 2>/dev/null && ok "the broker still runs on a full disk" ||
  { bad "the broker exited on a full disk: $(tail -n 5 "$work/broker.log")"; finish; exit 1; }
http_status /readyz >"$work/ready1"
if [ "$(head -n 1 "$work/ready1")" != 200 ]; then
  ok "/readyz not ready while the disk is full: $(head -n 1 "$work/ready1") $(sed -n 2,3p "$work/ready1" | tr '\n' ' ')"
else
  bad "/readyz says ready while the store cannot write: $(tr '\n' ' ' <"$work/ready1")"
fi
accepted_full=$(wc -l <"$work/accepted")

if [ "$MIN_FREE" != 0 ]; then
  grep -q "min_free_bytes" "$work/send.err" && ok "the refusal names min_free_bytes" ||
    bad "the refusal does not name min_free_bytes: $(grep -o 'first UNAVAILABLE.*' "$work/send.err")"
  # below the low-water mark the consumer can still take and acknowledge what was accepted
  "$MBLOAD" recv --broker "$uri" --as "$rcpt" --credit 100 --ack --size 4096 --idle-ms 2000 \
    --count "$accepted_full" --seconds 30 --received-log "$work/received" >"$work/recv0.out" \
    2>"$work/recv0.err"
  drained=$(sed -n 's/.* distinct=\([0-9]*\).*/\1/p' "$work/recv0.out")
  [ "${drained:-0}" -ge "$accepted_full" ] && [ "$accepted_full" -gt 0 ] &&
    ok "acknowledgements drain the mailbox while the disk is low ($drained of $accepted_full)" ||
    bad "drained ${drained:-?} of $accepted_full while the disk was low: $(cat "$work/recv0.out")"
fi

# space again: the same sender's retries must now get through
rm -f "$mnt/filler"
wait "$send_pid"
send_rc=$?
cat "$work/send.out"
accepted=$(sed -n 's/.* accepted=\([0-9]*\).*/\1/p' "$work/send.out")
[ "$send_rc" = 0 ] && [ "${accepted:-0}" = "$count" ] &&
  ok "after space was freed every message was accepted ($accepted_full before, $count in all)" ||
  bad "after space was freed: exit $send_rc, accepted ${accepted:-?} of $count: $(tail -n 3 "$work/send.err")"
ready=0
for _ in $(seq 100); do
  http_status /readyz >"$work/ready2"
  [ "$(head -n 1 "$work/ready2")" = 200 ] && { ready=1; break; }
  sleep 0.1
done
[ "$ready" = 1 ] && ok "/readyz ready again" || bad "/readyz still not ready: $(tr '\n' ' ' <"$work/ready2")"

"$MBLOAD" recv --broker "$uri" --as "$rcpt" --credit 100 --ack --size 4096 --idle-ms 3000 \
  --seconds 60 --received-log "$work/received.2" >"$work/recv.out" 2>"$work/recv.err"
recv_rc=$?
cat "$work/received.2" >>"$work/received"
cat "$work/recv.out"
sort -u "$work/accepted" >"$work/accepted.u"
sort -u "$work/attempted" >"$work/attempted.u"
awk '$6 == "new" || $6 == "dup" { print $3 }' "$work/received" 2>/dev/null | sort -u >"$work/received.u"
lost=$(comm -23 "$work/accepted.u" "$work/received.u" | wc -l)
invented=$(comm -13 "$work/attempted.u" "$work/received.u" | wc -l)
[ "$recv_rc" = 0 ] && ok "every delivery intact" || bad "recv: exit $recv_rc: $(grep -m 3 CORRUPT "$work/recv.err")"
[ "$lost" = 0 ] && ok "every accepted message delivered ($(wc -l <"$work/received.u") distinct)" ||
  bad "$lost accepted message(s) not delivered"
[ "$invented" = 0 ] && ok "nothing delivered that was not sent" || bad "$invented invented message(s)"
# "UNAVAILABLE: nothing was stored": a retry of a refused SEND must not make a second copy
twice=$(awk '$6 == "new" || $6 == "dup" { print $3, $5 }' "$work/received" | sort -u |
  awk '{ n[$1]++ } END { c = 0; for (k in n) if (n[k] > 1) c++; print c }')
[ "$twice" = 0 ] && ok "no message stored twice" || bad "$twice message(s) stored twice (two sequence numbers)"
kill -0 "$broker_pid" 2>/dev/null && ok "the broker still runs" || bad "the broker exited: $(tail -n 5 "$work/broker.log")"
finish
