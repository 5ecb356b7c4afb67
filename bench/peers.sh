#!/usr/bin/env bash
# herd against the static servers Debian ships, on the same machine, same
# files, same worker count, measured with wrk in interleaved rounds; prints
# medians, herd against nginx and against the best peer of each row, and
# CPU per request. Loopback only; every run is bounded by DURATION.
#
# The peers, configured as an operator who knows each would:
# - "nginx": sendfile, tcp_nopush, tcp_nodelay, open_file_cache, access log
#   off, WORKERS worker processes; "nginx+d", the same with "listen ...
#   deferred" (TCP_DEFER_ACCEPT), which herd turns on by default.
# - "h2o": num-threads WORKERS (h2o is one process with threads), file.dir,
#   no access log.
# - "lighttpd": server.max-worker WORKERS (forked workers),
#   network-backend sendfile, keep-alive requests unbounded as nginx's, no
#   access log.
#
#   bench/peers.sh                   # defaults below
#   ROUNDS=5 DURATION=10s bench/peers.sh
#   ONLY=close bench/peers.sh        # one scenario: close, keepalive, 4k or 1m
#   THREADS=2 bench/peers.sh         # wrk threads (default 1)
#   HERD_FLAGS=--multi-accept bench/peers.sh   # more herd serve flags
#
# A second table says where each row's time went: the server's CPU and
# wrk's per request, the machine's idle share during the run, TCP segments
# per request, and how wrk's kept-alive connections fell to the server's
# processes in each round (all to one worker, or spread over both: on two
# cores shared with wrk, that alone moves a round; README). With THREADS=1
# wrk is one thread: when its core is the bound (the machine idle while
# wrk's CPU per request is all its core can give), the row measures wrk,
# not the server.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5s} WORKERS=${WORKERS:-2} STRATEGY=${STRATEGY:-exclusive} THREADS=${THREADS:-1}
HERD_FLAGS=${HERD_FLAGS:-}

install_missing nginx h2o lighttpd wrk curl ss=iproute2

dir=$(mktemp -d)
chmod 755 "$dir"
cleanup() {
	for p in "$dir"/nginx*.pid; do [ -f "$p" ] && kill -QUIT "$(cat "$p")" 2>/dev/null; done
	for p in "$dir"/h2o.pid "$dir"/lighttpd.pid; do [ -f "$p" ] && kill -TERM "$(cat "$p")" 2>/dev/null; done
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
declare -A port=([nginx]=$base [nginx+d]=$((base + 1)) [h2o]=$((base + 2)) [lighttpd]=$((base + 3)) [herd]=$((base + 4)))
servers=(nginx nginx+d h2o lighttpd herd)
peers=(nginx nginx+d h2o lighttpd)

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
cat > "$dir/h2o.conf" <<CONF
num-threads: $WORKERS
user: $(id -un)
pid-file: $dir/h2o.pid
error-log: $dir/h2o.error.log
listen:
  host: 127.0.0.1
  port: ${port[h2o]}
hosts:
  default:
    paths:
      /:
        file.dir: $dir/www
CONF
h2o -c "$dir/h2o.conf" >"$dir/h2o.log" 2>&1 &
cat > "$dir/lighttpd.conf" <<CONF
server.document-root = "$dir/www"
server.bind = "127.0.0.1"
server.port = ${port[lighttpd]}
server.pid-file = "$dir/lighttpd.pid"
server.errorlog = "$dir/lighttpd.error.log"
server.max-worker = $WORKERS
server.network-backend = "sendfile"
server.max-keep-alive-requests = 1000000
server.max-keep-alive-idle = 75
mimetype.assign = (".txt" => "text/plain", ".bin" => "application/octet-stream")
CONF
# In a session of its own: lighttpd with workers stops them by signalling
# its whole process group, which would otherwise be this script's.
setsid lighttpd -D -f "$dir/lighttpd.conf" >"$dir/lighttpd.log" 2>&1 &
go build -o "$dir/herd" ./cmd/herd
# shellcheck disable=SC2086
"$dir/herd" serve "$dir/www" --listen "127.0.0.1:${port[herd]}" --workers "$WORKERS" --strategy "$STRATEGY" \
	--pid "$dir/herd.pid" $HERD_FLAGS 2>"$dir/herd.log" &
for _ in $(seq 50); do [ -s "$dir/herd.pid" ] && grep -q "herd ready" "$dir/herd.log" && break; sleep 0.1; done
for server in "${servers[@]}"; do
	for _ in $(seq 50); do [ -s "$dir/$server.pid" ] && curl -s -o /dev/null "http://127.0.0.1:${port[$server]}/hello.txt" && break; sleep 0.1; done
	curl -sf -o /dev/null "http://127.0.0.1:${port[$server]}/hello.txt" || { echo "$server does not serve: $(cat "$dir/$server"*.log 2>/dev/null | tail -3)" >&2; exit 1; }
done

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
declare -A rps cpu client idle segs split
cpus=$(nproc) hz=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
	for sc in "${scenarios[@]}"; do
		IFS='|' read -r name args path _ <<<"$sc"
		for server in "${servers[@]}"; do
			pid=$(cat "$dir/$server.pid")
			extra=()
			[ "$name" = close ] && extra=(-H "Connection: close")
			before=$(cpu_ticks "$pid") idle0=$(idle_ticks) segs0=$(tcp_segments)
			children_ms wrk0
			start=$EPOCHREALTIME
			# shellcheck disable=SC2086
			wrk -t"$THREADS" $args "${extra[@]}" -d"$DURATION" "http://127.0.0.1:${port[$server]}$path" >"$dir/wrk.out" &
			wp=$!
			# How wrk's connections fell to the server's processes: they
			# are made at the start and kept (but for the close row).
			sleep 0.3
			spread_now=-
			[ "$name" = close ] || spread_now=$(conn_split "${port[$server]}")
			wait "$wp"
			out=$(<"$dir/wrk.out")
			children_ms wrk1
			elapsed=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN {print b - a}')
			after=$(cpu_ticks "$pid") idle1=$(idle_ticks) segs1=$(tcp_segments)
			r=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
			n=$(awk '/requests in/ {print $1}' <<<"$out")
			if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "warning: $server $name: $(grep -E 'Non-2xx|Socket errors' <<<"$out")" >&2; fi
			rps[$server,$name]+="$r "
			split[$server,$name]+="$spread_now:${r%.*} "
			cpu[$server,$name]+="$(awk -v t=$((after - before)) -v n="$n" 'BEGIN {printf "%.1f", t * 10000 / n}') "
			client[$server,$name]+="$(awk -v t=$((wrk1 - wrk0)) -v n="$n" 'BEGIN {printf "%.1f", t * 1000 / n}') "
			idle[$server,$name]+="$(awk -v t=$((idle1 - idle0)) -v e="$elapsed" -v c="$cpus" -v hz="$hz" 'BEGIN {printf "%.0f", 100 * t / hz / (e * c)}') "
			segs[$server,$name]+="$(awk -v t=$((segs1 - segs0)) -v n="$n" 'BEGIN {printf "%.2f", t / n}') "
			echo "round $round/$ROUNDS  $name  $server  $r req/s" >&2
		done
	done
done

printf '\n%-34s %9s %9s %9s %9s %9s %7s %7s %7s  %s\n' "requests/s ($WORKERS workers, $ROUNDS rounds)" nginx nginx+d h2o lighttpd herd "herd/" "herd/" "herd/" "CPU µs/request"
printf '%-34s %9s %9s %9s %9s %9s %7s %7s %7s  %s\n' "" "" "" "" "" "" nginx nginx+d best "nginx nginx+d h2o lighttpd herd"
for sc in "${scenarios[@]}"; do
	IFS='|' read -r name _ _ label <<<"$sc"
	declare -A m=() c=()
	best=0
	for server in "${servers[@]}"; do
		m[$server]=$(median <<<"${rps[$server,$name]}")
		c[$server]=$(median <<<"${cpu[$server,$name]}")
	done
	for server in "${peers[@]}"; do best=$(awk -v a="$best" -v b="${m[$server]}" 'BEGIN {print (b > a) ? b : a}'); done
	printf '%-34s %9.0f %9.0f %9.0f %9.0f %9.0f %7s %7s %7s  %s\n' "$label" "${m[nginx]}" "${m[nginx+d]}" "${m[h2o]}" "${m[lighttpd]}" "${m[herd]}" \
		"$(ratio "${m[herd]}" "${m[nginx]}")" "$(ratio "${m[herd]}" "${m[nginx+d]}")" "$(ratio "${m[herd]}" "$best")" \
		"${c[nginx]} ${c[nginx+d]} ${c[h2o]} ${c[lighttpd]} ${c[herd]}"
done
# Round by round: every server of a row runs back to back within a round,
# so a slow spell of the machine falls on all of them alike, where the
# medians above can each come from a different spell.
printf '\n%-34s %s\n' "herd / the best peer of its round" "median (lowest-highest), rounds herd led"
for sc in "${scenarios[@]}"; do
	IFS='|' read -r name _ _ label <<<"$sc"
	awk -v label="$label" -v herd="${rps[herd,$name]}" -v peers="${rps[nginx,$name]}|${rps[nginx+d,$name]}|${rps[h2o,$name]}|${rps[lighttpd,$name]}" 'BEGIN {
		n = split(herd, h, " "); np = split(peers, p, "|")
		for (j = 1; j <= np; j++) { split(p[j], one, " "); for (i = 1; i <= n; i++) r[j, i] = one[i] + 0 }
		for (i = 1; i <= n; i++) {
			best = 0
			for (j = 1; j <= np; j++) if (r[j, i] > best) best = r[j, i]
			x = h[i] / best; led += x > 1
			for (k = i - 1; k >= 1 && q[k] > x; k--) q[k + 1] = q[k]
			q[k + 1] = x
		}
		med = (n % 2) ? q[(n + 1) / 2] : (q[n / 2] + q[n / 2 + 1]) / 2
		printf "%-34s %.2f (%.2f-%.2f), %d of %d\n", label, med, q[1], q[n], led, n
	}'
done
echo "(herd --strategy $STRATEGY${HERD_FLAGS:+ $HERD_FLAGS}, defaults otherwise; nginx $(nginx -v 2>&1 | cut -d/ -f2), sendfile on, tcp_nopush on, open_file_cache;"
echo " nginx+d: the same with listen ... deferred; h2o $(h2o --version 2>/dev/null | head -1 | awk '{print $3}'), num-threads $WORKERS;"
echo " lighttpd $(lighttpd -v 2>/dev/null | head -1 | cut -d/ -f2 | cut -d' ' -f1), max-worker $WORKERS, sendfile;"
echo " wrk -t$THREADS on the same cores; CPU = server utime+stime per request; best = the best peer of the row)"

printf '\n%-34s %-9s %9s %15s %11s %11s %7s %9s  %s\n' "where the time went (medians)" server "req/s" "rounds' req/s" "server CPU" "wrk CPU" "idle" "segments" "each round: connections"
printf '%-34s %-9s %9s %15s %11s %11s %7s %9s  %s\n' "" "" "" "low-high" "µs/request" "µs/request" "%" "/request" "per process:req/s"
for sc in "${scenarios[@]}"; do
	IFS='|' read -r name _ _ label <<<"$sc"
	for server in "${servers[@]}"; do
		printf '%-34s %-9s %9.0f %15s %11s %11s %7s %9s  %s\n' "$label" "$server" "$(median <<<"${rps[$server,$name]}")" \
			"$(spread <<<"${rps[$server,$name]}")" "$(median <<<"${cpu[$server,$name]}")" "$(median <<<"${client[$server,$name]}")" \
			"$(median <<<"${idle[$server,$name]}")" "$(median <<<"${segs[$server,$name]}")" "${split[$server,$name]% }"
		label=""
	done
done
echo "(wrk's CPU from the shell's times; idle: the machine's $cpus CPUs during wrk's run, /proc/stat; segments: /proc/net/snmp OutSegs, both ends;"
echo " each round: how wrk's connections were spread over the server's processes, busiest first (ss -p; h2o is one process), and the round's req/s)"
