#!/usr/bin/env bash
# Does prefork cost anything? The same hello-world and 4 KiB handlers served
# by one plain net/http process, by herd.Server (the library's defaults:
# one worker per CPU, the default strategy) and by fasthttp's prefork,
# measured with wrk in interleaved rounds on this machine; prints medians,
# herd against plain net/http, and CPU per request. bench/library/ is a
# module of its own, so herd does not depend on fasthttp. Loopback only;
# every run is bounded by DURATION.
#
#   bench/library.sh
#   ROUNDS=5 DURATION=5s bench/library.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5s}
install_missing wrk curl

dir=$(mktemp -d)
pids=()
cleanup() {
	# TERM: a background job of a script starts with SIGINT ignored.
	for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
	sleep 0.5
	rm -rf "$dir"
}
trap cleanup EXIT
(cd bench/library && go build -o "$dir/library" .)

base=$((20000 + RANDOM % 10000))
# herd: herd.Server with its defaults (for a Handler on TCP: reuseport,
# one P per worker and the anchor's); herd-go: strategy go, the default
# before (every worker's netpoller on one shared socket); herd-x: strategy
# exclusive (and the Ps its accepting thread needs); fasthttp: its prefork.
declare -A port=([plain]=$base [herd]=$((base + 1)) [herd-go]=$((base + 2)) [herd-x]=$((base + 3)) [fasthttp]=$((base + 4)))
declare -A args=([plain]="-mode plain" [herd]="-mode herd" [herd-go]="-mode herd -strategy go" [herd-x]="-mode herd -strategy exclusive" [fasthttp]="-mode fasthttp")
servers=(plain herd herd-go herd-x fasthttp)
for s in "${servers[@]}"; do
	# shellcheck disable=SC2086
	setsid "$dir/library" ${args[$s]} -listen "127.0.0.1:${port[$s]}" -pid "$dir/$s.pid" >"$dir/$s.log" 2>&1 &
	pids+=($!)
	declare "pid_${s//-/_}=$!"
done
for s in "${servers[@]}"; do
	for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:${port[$s]}/hello" && break; sleep 0.1; done
done

scenarios=("close|-c8|/hello|new connection per request, hello" "keepalive|-c64|/hello|keep-alive, hello (64)" "4k|-c64|/4k|keep-alive, 4 KiB (64)")
declare -A rps cpu cs split
for round in $(seq "$ROUNDS"); do
	for sc in "${scenarios[@]}"; do
		IFS='|' read -r name args path _ <<<"$sc"
		for s in "${servers[@]}"; do
			pid_var="pid_${s//-/_}"
			extra=()
			[ "$name" = close ] && extra=(-H "Connection: close")
			before=$(cpu_ticks "${!pid_var}") csb=$(ctx_switches "${!pid_var}")
			# shellcheck disable=SC2086
			wrk -t1 $args "${extra[@]}" -d"$DURATION" "http://127.0.0.1:${port[$s]}$path" >"$dir/wrk.out" &
			wrk_pid=$!
			if [ "$name" = keepalive ]; then
				# How wrk's connections lie over the processes, a second in:
				# the busiest process's share.
				sleep 1
				split[$s]+="$(ss -Htnp state established "( sport = :${port[$s]} )" | grep -o 'pid=[0-9]*' | sort | uniq -c |
					awk '{n += $1; if ($1 > m) m = $1} END {printf "%d/%d", m, n}' || true) "
			fi
			wait "$wrk_pid"
			out=$(cat "$dir/wrk.out")
			after=$(cpu_ticks "${!pid_var}") csa=$(ctx_switches "${!pid_var}")
			r=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
			n=$(awk '/requests in/ {print $1}' <<<"$out")
			rps[$s,$name]+="$r "
			cpu[$s,$name]+="$(awk -v t=$((after - before)) -v n="$n" 'BEGIN {printf "%.1f", t * 10000 / n}') "
			cs[$s,$name]+="$(awk -v t=$((csa - csb)) -v n="$n" 'BEGIN {printf "%.3f", t / n}') "
			echo "round $round/$ROUNDS  $name  $s  $r req/s" >&2
		done
	done
done

printf '\n%-36s %9s %9s %9s %9s %9s %11s %14s %13s %14s %32s\n' "requests/s ($ROUNDS rounds)" plain herd herd-go herd-x fasthttp herd/plain herd-go/plain herd-x/plain fasthttp/herd "CPU µs/req p · h · g · x · f"
for sc in "${scenarios[@]}"; do
	IFS='|' read -r name _ _ label <<<"$sc"
	p=$(median <<<"${rps[plain,$name]}") h=$(median <<<"${rps[herd,$name]}") g=$(median <<<"${rps[herd-go,$name]}")
	x=$(median <<<"${rps[herd-x,$name]}") f=$(median <<<"${rps[fasthttp,$name]}")
	printf '%-36s %9.0f %9.0f %9.0f %9.0f %9.0f %11s %14s %13s %14s %32s\n' "$label" "$p" "$h" "$g" "$x" "$f" \
		"$(ratio "$h" "$p")" "$(ratio "$g" "$p")" "$(ratio "$x" "$p")" "$(ratio "$f" "$h")" \
		"$(median <<<"${cpu[plain,$name]}") · $(median <<<"${cpu[herd,$name]}") · $(median <<<"${cpu[herd-go,$name]}") · $(median <<<"${cpu[herd-x,$name]}") · $(median <<<"${cpu[fasthttp,$name]}")"
done
printf '\n%-36s %9s %9s %9s %9s %9s\n' "context switches per request" plain herd herd-go herd-x fasthttp
for sc in "${scenarios[@]}"; do
	IFS='|' read -r name _ _ label <<<"$sc"
	printf '%-36s %9s %9s %9s %9s %9s\n' "$label" "$(median <<<"${cs[plain,$name]}")" "$(median <<<"${cs[herd,$name]}")" \
		"$(median <<<"${cs[herd-go,$name]}")" "$(median <<<"${cs[herd-x,$name]}")" "$(median <<<"${cs[fasthttp,$name]}")"
done
echo
echo "keep-alive hello: the busiest process's share of wrk's connections, by round"
for s in "${servers[@]}"; do printf '  %-9s %s\n' "$s" "${split[$s]}"; done
echo "(plain: one net/http process; herd: herd.Server with its defaults ($(nproc) workers: strategy reuseport, one P each);"
echo " herd-go: strategy go; herd-x: strategy exclusive; fasthttp: prefork, $(nproc) children;"
echo " wrk -t1 on the same cores; CPU = utime+stime of the process tree per request)"
