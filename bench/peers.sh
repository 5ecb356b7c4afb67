#!/usr/bin/env bash
# herd against nginx on the same machine, same files, same worker count,
# measured with wrk in interleaved rounds; prints medians, herd/nginx ratios
# of requests/s, and CPU per request. Loopback only; every run is bounded by
# DURATION.
#
# Two nginx servers run: "nginx" as the issue configures it (sendfile,
# tcp_nopush, open_file_cache) and "nginx+d", the same with "listen ...
# deferred" (TCP_DEFER_ACCEPT), which herd turns on by default — so the
# table shows what herd's default buys and what its engine does against an
# nginx given the same socket option.
#
#   bench/peers.sh                   # defaults below
#   ROUNDS=5 DURATION=10s bench/peers.sh
#   ONLY=close bench/peers.sh        # one scenario: close, keepalive, 4k or 1m
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5s} WORKERS=${WORKERS:-2} STRATEGY=${STRATEGY:-exclusive}

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

dir=$(mktemp -d)
chmod 755 "$dir"
cleanup() {
	for p in "$dir"/nginx*.pid; do [ -f "$p" ] && kill -QUIT "$(cat "$p")" 2>/dev/null; done
	[ -f "$dir/herd.pid" ] && kill -TERM "$(cat "$dir/herd.pid")" 2>/dev/null || true
	sleep 0.5
	rm -rf "$dir"
}
trap cleanup EXIT
mkdir "$dir/www"
printf 'Hello, world\n' > "$dir/www/hello.txt"           # 13 bytes
head -c 4096 /dev/urandom > "$dir/www/4k.bin"
head -c 1048576 /dev/urandom > "$dir/www/1m.bin"
chmod 755 "$dir/www"; chmod 644 "$dir/www"/*

base=$((20000 + RANDOM % 10000))
declare -A port=([nginx]=$base [nginx+d]=$((base + 1)) [herd]=$((base + 2)))
servers=(nginx nginx+d herd)

# nginx_conf NAME LISTEN-OPTIONS
nginx_conf() {
	cat > "$dir/$1.conf" <<CONF
worker_processes $WORKERS;
pid $dir/$1.pid;
error_log $dir/$1.error.log;
events { worker_connections 4096; }
http {
	access_log off;
	sendfile on; tcp_nopush on; tcp_nodelay on;
	open_file_cache max=1000 inactive=60s; open_file_cache_valid 60s;
	keepalive_requests 1000000;
	server { listen 127.0.0.1:${port[$1]}$2; root $dir/www; }
}
CONF
	nginx -c "$dir/$1.conf"
}
nginx_conf nginx ""
nginx_conf nginx+d " deferred"
go build -o "$dir/herd" ./cmd/herd
"$dir/herd" serve "$dir/www" --listen "127.0.0.1:${port[herd]}" --workers "$WORKERS" --strategy "$STRATEGY" \
	--pid "$dir/herd.pid" 2>"$dir/herd.log" &
for _ in $(seq 50); do [ -s "$dir/herd.pid" ] && grep -q "herd ready" "$dir/herd.log" && break; sleep 0.1; done

scenarios=(
	"close|-c8|/hello.txt|new connection per request, 13 B"
	"keepalive|-c64|/hello.txt|keep-alive, 13 B"
	"4k|-c64|/4k.bin|keep-alive, 4 KiB"
	"1m|-c16|/1m.bin|keep-alive, 1 MiB"
)
if [ -n "${ONLY:-}" ]; then
	kept=()
	for sc in "${scenarios[@]}"; do [[ $sc == "$ONLY|"* ]] && kept+=("$sc"); done
	[ ${#kept[@]} -gt 0 ] || { echo "ONLY=$ONLY: no such scenario (close, keepalive, 4k, 1m)" >&2; exit 2; }
	scenarios=("${kept[@]}")
fi
declare -A rps cpu
for round in $(seq "$ROUNDS"); do
	for sc in "${scenarios[@]}"; do
		IFS='|' read -r name args path _ <<<"$sc"
		for server in "${servers[@]}"; do
			pid=$(cat "$dir/$server.pid")
			extra=()
			[ "$name" = close ] && extra=(-H "Connection: close")
			before=$(cpu_ticks "$pid")
			# shellcheck disable=SC2086
			out=$(wrk -t1 $args "${extra[@]}" -d"$DURATION" "http://127.0.0.1:${port[$server]}$path")
			after=$(cpu_ticks "$pid")
			r=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
			n=$(awk '/requests in/ {print $1}' <<<"$out")
			if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "warning: $server $name: $(grep -E 'Non-2xx|Socket errors' <<<"$out")" >&2; fi
			rps[$server,$name]+="$r "
			cpu[$server,$name]+="$(awk -v t=$((after - before)) -v n="$n" 'BEGIN {printf "%.1f", t * 10000 / n}') "
			echo "round $round/$ROUNDS  $name  $server  $r req/s" >&2
		done
	done
done

printf '\n%-34s %9s %9s %9s %7s %9s %17s\n' "requests/s ($WORKERS workers, $ROUNDS rounds)" nginx nginx+d herd "herd/" "herd/" "CPU µs/request"
printf '%-34s %9s %9s %9s %7s %9s %17s\n' "" "" "" "" nginx nginx+d "nginx nginx+d herd"
for sc in "${scenarios[@]}"; do
	IFS='|' read -r name _ _ label <<<"$sc"
	declare -A m=() c=()
	for server in "${servers[@]}"; do
		m[$server]=$(median <<<"${rps[$server,$name]}")
		c[$server]=$(median <<<"${cpu[$server,$name]}")
	done
	printf '%-34s %9.0f %9.0f %9.0f %7s %9s %17s\n' "$label" "${m[nginx]}" "${m[nginx+d]}" "${m[herd]}" \
		"$(ratio "${m[herd]}" "${m[nginx]}")" "$(ratio "${m[herd]}" "${m[nginx+d]}")" "${c[nginx]} ${c[nginx+d]} ${c[herd]}"
done
echo "(herd --strategy $STRATEGY, defaults otherwise; nginx $(nginx -v 2>&1 | cut -d/ -f2), sendfile on, tcp_nopush on, open_file_cache;"
echo " nginx+d: the same with listen ... deferred; wrk -t1 on the same cores; CPU = server utime+stime per request)"
