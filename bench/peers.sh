#!/usr/bin/env bash
# herd against nginx on the same machine, same files, same worker count,
# measured with wrk in interleaved rounds; prints medians and herd/nginx
# ratios of requests/s and of CPU per request. Loopback only; every run is
# bounded by DURATION.
#
#   bench/peers.sh                   # defaults below
#   ROUNDS=5 DURATION=10s bench/peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
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
	[ -f "$dir/nginx.pid" ] && kill -QUIT "$(cat "$dir/nginx.pid")" 2>/dev/null || true
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

nport=$((20000 + RANDOM % 10000)); hport=$((nport + 1))
cat > "$dir/nginx.conf" <<CONF
worker_processes $WORKERS;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
	access_log off;
	sendfile on; tcp_nopush on; tcp_nodelay on;
	open_file_cache max=1000 inactive=60s; open_file_cache_valid 60s;
	keepalive_requests 1000000;
	server { listen 127.0.0.1:$nport; root $dir/www; }
}
CONF
nginx -c "$dir/nginx.conf"
go build -o "$dir/herd" ./cmd/herd
"$dir/herd" serve "$dir/www" --listen "127.0.0.1:$hport" --workers "$WORKERS" --strategy "$STRATEGY" \
	--pid "$dir/herd.pid" 2>"$dir/herd.log" &
for _ in $(seq 50); do [ -s "$dir/herd.pid" ] && grep -q "herd ready" "$dir/herd.log" && break; sleep 0.1; done

# cpu_ticks PID: utime+stime of PID and all its descendants.
cpu_ticks() {
	local pid=$1 total=0 t
	for t in $(awk '{print $14+$15}' "/proc/$pid/stat" 2>/dev/null); do total=$((total + t)); done
	for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do total=$((total + $(cpu_ticks "$c"))); done
	echo "$total"
}

scenarios=(
	"close|-c8|/hello.txt|new connection per request, 13 B"
	"keepalive|-c64|/hello.txt|keep-alive, 13 B"
	"4k|-c64|/4k.bin|keep-alive, 4 KiB"
	"1m|-c16|/1m.bin|keep-alive, 1 MiB"
)
declare -A rps cpu
for round in $(seq "$ROUNDS"); do
	for sc in "${scenarios[@]}"; do
		IFS='|' read -r name args path _ <<<"$sc"
		for server in nginx herd; do
			port=$nport; pid=$(cat "$dir/nginx.pid")
			[ $server = herd ] && port=$hport && pid=$(cat "$dir/herd.pid")
			extra=()
			[ "$name" = close ] && extra=(-H "Connection: close")
			before=$(cpu_ticks "$pid")
			# shellcheck disable=SC2086
			out=$(wrk -t1 $args "${extra[@]}" -d"$DURATION" "http://127.0.0.1:$port$path")
			after=$(cpu_ticks "$pid")
			r=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
			n=$(awk '/requests in/ {print $1}' <<<"$out")
			if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "warning: $server $name: $(grep -E 'Non-2xx|Socket errors' <<<"$out")" >&2; fi
			rps[$server,$name]+="$r "
			cpu[$server,$name]+="$(awk -v t=$((after - before)) -v n="$n" 'BEGIN {printf "%.1f", t * 10000 / n}') "
			echo "round $round  $name  $server  $r req/s" >&2
		done
	done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
printf '\n%-36s %12s %12s %8s %14s %14s\n' "scenario ($WORKERS workers, $ROUNDS rounds)" "nginx req/s" "herd req/s" "ratio" "nginx µs/req" "herd µs/req"
for sc in "${scenarios[@]}"; do
	IFS='|' read -r name _ _ label <<<"$sc"
	n=$(median <<<"${rps[nginx,$name]}"); h=$(median <<<"${rps[herd,$name]}")
	nc=$(median <<<"${cpu[nginx,$name]}"); hc=$(median <<<"${cpu[herd,$name]}")
	printf '%-36s %12.0f %12.0f %8.2f %14s %14s\n' "$label" "$n" "$h" "$(awk -v a="$h" -v b="$n" 'BEGIN {print a/b}')" "$nc" "$hc"
done
echo "(herd --strategy $STRATEGY; nginx $(nginx -v 2>&1 | cut -d/ -f2), sendfile on, tcp_nopush on, open_file_cache; wrk -t1 on the same cores; CPU = server utime+stime)"
