#!/usr/bin/env bash
# Two or more builds of herd side by side: each serves the same files with
# the same flags, and wrk loads them in turn, ROUNDS times, so that the
# machine's drift falls on every build alike. Per build: requests a second
# (median and the rounds' lowest-highest), the server's CPU and context
# switches per request (master and workers, all threads, from /proc), and
# wrk's CPU per request: over loopback the sender's system calls carry much
# of the receiver's TCP work, so a change can move CPU between server and
# client without changing the total.
# Loopback only; every wrk run is bounded by DURATION.
#
# A build is a git revision (built from `git archive`, the work tree is not
# touched) or the path of a herd binary.
#
#   bench/ab.sh HEAD~1 HEAD                     # keep-alive, 4 KiB, 64 connections
#   FILE=1m CONNS=16 WORKERS=1 bench/ab.sh /tmp/herd-a /tmp/herd-b
#   CLOSE=1 CONNS=8 FILE=13 bench/ab.sh main HEAD
#
# On this 2-core machine one server's rounds can spread by more than the
# difference sought: take 15 rounds (the default) before believing 5%.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${ROUNDS:-15} DURATION=${DURATION:-3s} WORKERS=${WORKERS:-2} CONNS=${CONNS:-64} FILE=${FILE:-4k}
THREADS=${THREADS:-1} CLOSE=${CLOSE:-} FLAGS=${FLAGS:-}
[ $# -ge 2 ] || { echo "usage: bench/ab.sh BUILD BUILD... (git revisions or herd binaries)" >&2; exit 2; }
case $FILE in 13 | 4k | 1m) ;; *) echo "FILE=$FILE: 13, 4k or 1m" >&2; exit 2 ;; esac

install_missing wrk curl

dir=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	sleep 0.5
	rm -rf "$dir"
}
trap cleanup EXIT
mkdir "$dir/www"
printf 'Hello, world\n' >"$dir/www/13"
head -c 4096 /dev/urandom >"$dir/www/4k"
head -c 1048576 /dev/urandom >"$dir/www/1m"

bins=() names=()
for i in $(seq $#); do
	build=${!i}
	if [ -x "$build" ] && [ -f "$build" ]; then
		bins+=("$build")
	else
		src="$dir/src$i"
		mkdir "$src"
		git archive "$build" | tar -x -C "$src"
		(cd "$src" && go build -o "$dir/herd$i" ./cmd/herd)
		bins+=("$dir/herd$i")
	fi
	names+=("$build")
done

base=$((20000 + RANDOM % 10000))
for i in "${!bins[@]}"; do
	# shellcheck disable=SC2086
	"${bins[$i]}" serve "$dir/www" --listen "127.0.0.1:$((base + i))" --workers "$WORKERS" \
		--pid "$dir/herd$i.pid" $FLAGS 2>"$dir/herd$i.log" &
	pids+=($!)
done
for i in "${!bins[@]}"; do
	await_http "http://127.0.0.1:$((base + i))/13" ||
		{ echo "${names[$i]} does not serve: $(tail -3 "$dir/herd$i.log")" >&2; exit 1; }
done

extra=()
[ -n "$CLOSE" ] && extra=(-H "Connection: close")
declare -A rps cpu cs wrkcpu
hz=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
	printf '\rround %d of %d' "$round" "$ROUNDS" >&2
	for i in "${!bins[@]}"; do
		pid=$(cat "$dir/herd$i.pid")
		t0=$(cpu_ticks "$pid") c0=$(ctx_switches "$pid")
		children_ms w0
		out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" "${extra[@]}" "http://127.0.0.1:$((base + i))/$FILE")
		children_ms w1
		t1=$(cpu_ticks "$pid") c1=$(ctx_switches "$pid")
		n=$(awk '/requests in/ {print $1}' <<<"$out")
		r=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
		rps[$i]+="$r "
		cpu[$i]+="$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}') "
		cs[$i]+="$(awk -v c=$((c1 - c0)) -v n="$n" 'BEGIN {printf "%.4f", c / n}') "
		wrkcpu[$i]+="$(awk -v ms=$((w1 - w0)) -v n="$n" 'BEGIN {printf "%.2f", ms * 1000 / n}') "
	done
done
echo >&2
echo "# bench/ab.sh: ROUNDS=$ROUNDS DURATION=$DURATION WORKERS=$WORKERS CONNS=$CONNS FILE=$FILE THREADS=$THREADS${CLOSE:+ CLOSE=1}${FLAGS:+ FLAGS=\"$FLAGS\"}; $(nproc) CPUs, $(date -u +%F)"
printf '%-24s %10s %15s %14s %12s %14s\n' build req/s low-high "cpu µs/req" "cs/req" "wrk µs/req"
for i in "${!bins[@]}"; do
	printf '%-24s %10.0f %15s %14.1f %12.3f %14.1f\n' "${names[$i]}" "$(median <<<"${rps[$i]}")" "$(spread <<<"${rps[$i]}")" \
		"$(median <<<"${cpu[$i]}")" "$(median <<<"${cs[$i]}")" "$(median <<<"${wrkcpu[$i]}")"
done
