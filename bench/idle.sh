#!/usr/bin/env bash
# What an idle herd costs: for each strategy, herd serves with WORKERS
# workers, answers one request, and is left alone; then the context
# switches of the master and of each worker (all threads, /proc) are
# counted over SECONDS and printed per second. An idle nginx worker makes
# none. Builds herd from the work tree, or uses HERD=path.
#
#   bench/idle.sh
#   STRATEGIES="exclusive accept" SECONDS_IDLE=10 bench/idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
WORKERS=${WORKERS:-2} SECONDS_IDLE=${SECONDS_IDLE:-5}
STRATEGIES=${STRATEGIES:-exclusive reuseport nginx epoll go accept flock mutex fdpass}
install_missing curl

dir=$(mktemp -d)
master=
cleanup() {
	[ -n "$master" ] && kill -TERM "$master" 2>/dev/null || true
	sleep 0.3
	rm -rf "$dir"
}
trap cleanup EXIT
mkdir "$dir/www"
printf 'Hello, world\n' >"$dir/www/hello.txt"
herd=${HERD:-}
if [ -z "$herd" ]; then
	go build -o "$dir/herd" ./cmd/herd
	herd=$dir/herd
fi

echo "# bench/idle.sh: WORKERS=$WORKERS SECONDS_IDLE=$SECONDS_IDLE; $(nproc) CPUs, kernel $(uname -r), $(date -u +%F)"
printf '%-10s %8s  %s\n' strategy master "workers (context switches a second, each)"
for s in $STRATEGIES; do
	port=$((20000 + RANDOM % 10000))
	rm -f "$dir/herd.pid"
	"$herd" serve "$dir/www" --listen "127.0.0.1:$port" --workers "$WORKERS" --strategy "$s" \
		--pid "$dir/herd.pid" 2>"$dir/herd.log" &
	master=$!
	await_http "http://127.0.0.1:$port/hello.txt" || { echo "$s: herd does not serve: $(tail -3 "$dir/herd.log")" >&2; exit 1; }
	sleep 2 # past the loop's second of held waits
	procs=("$master" $(cat /proc/"$master"/task/*/children))
	declare -A before=()
	for p in "${procs[@]}"; do before[$p]=$(proc_switches "$p"); done
	sleep "$SECONDS_IDLE"
	rates=()
	for p in "${procs[@]}"; do
		rates+=("$(awk -v a="${before[$p]}" -v b="$(proc_switches "$p")" -v t="$SECONDS_IDLE" 'BEGIN {printf "%.0f", (b - a) / t}')")
	done
	printf '%-10s %8s  %s\n' "$s" "${rates[0]}" "${rates[*]:1}"
	kill -TERM "$master"
	wait "$master" 2>/dev/null || true
	master=
done
