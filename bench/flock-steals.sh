#!/usr/bin/env bash
# Who takes the flock accept lock, and what it costs: herd's flock strategy
# and Apache's prefork MPM (Mutex flock, two Listen lines so that it
# serialises accept) on seed 002's load (8 workers, 4 clients, a new
# connection per request). For each server, perf records the flock(2)
# syscalls of the whole machine for one second in the middle of a run of
# DURATION, and the script counts:
#
#   acquisitions  LOCK_EX calls that returned
#   waited        those that slept (took 10 µs or more)
#   retaken       those that did not sleep although others were waiting in
#                 flock: the lock was free between an unlock and the woken
#                 waiter's turn, and this caller took it first
#   by unlocker   retaken by the thread that had made the last unlock
#   relock µs     median time from a thread's unlock to its next LOCK_EX
#
# and, from the scheduler's wakeup tracepoint in a second run, the wakeups
# per connection made by flock's re-queueing (a woken waiter that finds the
# lock taken is queued again, and every waiter queued behind it is woken:
# __locks_insert_block -> __locks_wake_up_blocks) and by its unlocks, and
# how many of the unlocks' wakeups queue the waiter on the unlocker's CPU.
# Loopback only; every run is bounded by DURATION.
#
#   bench/flock-steals.sh
#   OUT=/tmp/steals.txt DURATION=3s bench/flock-steals.sh    # elsewhere than results/
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-4s} OUT=${OUT:-results/flock-steals.txt}
install_missing apache2=apache2-bin perf=linux-perf

dir=$(mktemp -d)
chmod 755 "$dir"
trap 'rm -rf "$dir"' EXIT
go build -o "$dir/herd" ./cmd/herd
mkdir "$dir/www"
printf 'Hello, world\n' >"$dir/www/hello.txt"
chmod -R a+rX "$dir/www"
cat >"$dir/apache.conf" <<EOF
ServerRoot $dir
ServerName 127.0.0.1
LoadModule mpm_prefork_module /usr/lib/apache2/modules/mod_mpm_prefork.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
Listen 127.0.0.1:18480
Listen 127.0.0.1:18481
PidFile $dir/apache.pid
ErrorLog $dir/apache.error.log
User nobody
Group nogroup
Mutex flock:$dir mpm-accept
StartServers 8
MinSpareServers 8
MaxSpareServers 8
ServerLimit 8
MaxRequestWorkers 8
KeepAlive Off
EnableSendfile On
DocumentRoot $dir/www
<Directory />
	AllowOverride None
</Directory>
<Directory $dir/www>
	Require all granted
</Directory>
EOF

# bench NAME ARGS...: a run of herd bench in the background, its report in
# $dir/NAME.out.
bench() {
	local name=$1
	shift
	"$dir/herd" bench --workers 8 --concurrency 4 --mode close --duration "$DURATION" --requests 0 --json "$dir/$name.json" "$@" >"$dir/$name.out" 2>&1 &
	sleep 1.5
}

# analyse: reads perf script lines of flock enter/exit tracepoints.
analyse() {
	python3 -c '
import re, sys
inflock, last_un, last_unlocker = {}, {}, None
acq = waited = retaken = by_unlocker = 0
gaps = []
for line in sys.stdin:
    m = re.match(r"\s*(\d+)\s+([\d.]+):\s+syscalls:sys_(enter|exit)_flock:\s*(.*)", line)
    if not m:
        continue
    tid, t, kind, rest = int(m[1]), float(m[2]), m[3], m[4]
    if kind == "enter":
        inflock[tid] = (t, int(rest.split("cmd: ")[1], 16))
        continue
    if tid not in inflock:
        continue
    entered, cmd = inflock.pop(tid)
    if cmd == 8:  # LOCK_UN
        last_unlocker, last_un[tid] = tid, t
        continue
    acq += 1
    if tid in last_un:
        gaps.append(entered - last_un[tid])
    if t - entered >= 10e-6:
        waited += 1
    elif any(c == 2 and e < entered for e, c in inflock.values()):
        retaken += 1
        by_unlocker += tid == last_unlocker
gaps.sort()
relock = gaps[len(gaps) // 2] * 1e6 if gaps else 0
print(f"acquisitions {acq}  waited {waited}  retaken {retaken} ({retaken / max(acq, 1):.0%})  by unlocker {by_unlocker} ({by_unlocker / max(retaken, 1):.0%})  relock median {relock:.0f} µs")
'
}

# field NAME KEY: a field of the run in $dir/NAME.json (herd bench --json),
# read by name: the table's columns move when the lab adds one.
field() {
	python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["runs"][0][sys.argv[2]])' "$dir/$1.json" "$2"
}

# wakeups NAME: flock wakeups per connection, from $dir/wake.data (a perf
# record of sched_wakeup with call chains) and the run's req/s.
wakeups() {
	local rps
	rps=$(field "$1" rps | cut -d. -f1)
	perf script -i "$dir/wake.data" -F cpu,event,trace,ip,sym 2>/dev/null | awk -v rps="$rps" '
		/sched:sched_wakeup/ { waker = $1; gsub(/[^0-9]/, "", waker); match($0, /target_cpu=[0-9]+/); target = substr($0, RSTART + 11, RLENGTH - 11) }
		/__locks_wake_up_blocks/ {
			getline next_frame
			if (next_frame ~ /locks_unlink_lock_ctx/) { unlock++; same += (waker + 0 == target + 0) } else requeue++
		}
		END { printf "flock wakeups per connection: re-queueing %.2f, unlocks %.2f (at %d req/s); unlock wakeups queued on the unlocker'"'"'s CPU %.0f%%\n", requeue / rps, unlock / rps, rps, 100 * same / (unlock ? unlock : 1) }'
}

{
	echo "# bench/flock-steals.sh, $(date -u +%F), $(nproc) CPUs, kernel $(uname -r), $(apache2 -v | head -1)"
	for server in herd apache; do
		args=(--strategies flock)
		[ "$server" = apache ] && args=(--strategies apache-flock --command "apache2 -f $dir/apache.conf -DFOREGROUND" --target 127.0.0.1:18480)
		bench "$server" "${args[@]}"
		perf record -q -e syscalls:sys_enter_flock,syscalls:sys_exit_flock -a -o "$dir/flock.data" -- sleep 1 >/dev/null 2>&1
		wait
		echo "$server: $(perf script -i "$dir/flock.data" -F tid,time,event,trace 2>/dev/null | analyse)"
		bench "$server" "${args[@]}"
		perf record -q -e sched:sched_wakeup -g -a -o "$dir/wake.data" -- sleep 1 >/dev/null 2>&1
		wait
		echo "$server: $(wakeups "$server")"
		printf '  %s: %.0f req/s, %.2f context switches per connection, %.0f µs CPU per request\n' \
			"$(field "$server" strategy)" "$(field "$server" rps)" "$(field "$server" ctx_switches_per_request)" "$(field "$server" cpu_us_per_request)"
	done
} | tee "$OUT"
