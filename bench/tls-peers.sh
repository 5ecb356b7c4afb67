#!/usr/bin/env bash
# herd's HTTPS against nginx's on the same machine: the same ECDSA P-256
# certificate (made here with openssl), the same files and worker count,
# interleaved rounds; prints medians, herd/nginx and CPU per request.
# Loopback only; every run is bounded by DURATION.
#
#   bench/tls-peers.sh
#   ROUNDS=5 DURATION=5s bench/tls-peers.sh
#
# Scenarios: a new TLS connection per request (a full handshake each: wrk
# keeps no session), keep-alive 4 KiB over HTTP/1.1 (wrk), keep-alive 4 KiB
# over HTTP/2 (h2load, 16 connections, 10 streams each).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5s} WORKERS=${WORKERS:-2}

install_missing nginx wrk h2load=nghttp2-client openssl

dir=$(mktemp -d)
chmod 755 "$dir"
cleanup() {
	[ -f "$dir/nginx.pid" ] && kill -QUIT "$(cat "$dir/nginx.pid")" 2>/dev/null
	[ -f "$dir/herd.pid" ] && kill -TERM "$(cat "$dir/herd.pid")" 2>/dev/null || true # INT: ignored by a background job
	sleep 0.5
	rm -rf "$dir"
}
trap cleanup EXIT
mkdir "$dir/www"
head -c 4096 /dev/urandom > "$dir/www/4k.bin"
printf 'Hello, world\n' > "$dir/www/hello.txt"
chmod 755 "$dir/www"; chmod 644 "$dir/www"/*
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=127.0.0.1 \
	-addext subjectAltName=IP:127.0.0.1 -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null

base=$((20000 + RANDOM % 10000))
declare -A port=([nginx]=$base [herd]=$((base + 1)))
servers=(nginx herd)
cat > "$dir/nginx.conf" <<CONF
worker_processes $WORKERS;
pid $dir/nginx.pid;
error_log $dir/nginx.error.log;
events { worker_connections 4096; }
http {
	access_log off;
	sendfile on; tcp_nopush on; tcp_nodelay on;
	open_file_cache max=1000 inactive=60s; open_file_cache_valid 60s;
	keepalive_requests 1000000;
	ssl_protocols TLSv1.2 TLSv1.3;
	ssl_session_cache shared:SSL:10m;
	server {
		listen 127.0.0.1:${port[nginx]} ssl http2;
		ssl_certificate $dir/cert.pem; ssl_certificate_key $dir/key.pem;
		root $dir/www;
	}
}
CONF
nginx -c "$dir/nginx.conf"
go build -o "$dir/herd" ./cmd/herd
"$dir/herd" serve "$dir/www" --tls-listen "127.0.0.1:${port[herd]}" --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem" \
	--workers "$WORKERS" --pid "$dir/herd.pid" 2>"$dir/herd.log" &
for _ in $(seq 50); do [ -s "$dir/herd.pid" ] && grep -q "herd ready" "$dir/herd.log" && break; sleep 0.1; done

# run NAME SERVER: requests/s and requests, one line.
run() {
	local url="https://127.0.0.1:${port[$2]}" out
	case $1 in
	handshake) out=$(wrk -t1 -c8 -H "Connection: close" -d"$DURATION" "$url/hello.txt")
		awk '/Requests\/sec/ {r=$2} /requests in/ {n=$1} END {print r, n}' <<<"$out" ;;
	h1-4k) out=$(wrk -t1 -c64 -d"$DURATION" "$url/4k.bin")
		awk '/Requests\/sec/ {r=$2} /requests in/ {n=$1} END {print r, n}' <<<"$out" ;;
	h2-4k) out=$(h2load -c16 -m10 -D"${DURATION%s}" "$url/4k.bin" 2>/dev/null)
		awk '/^finished in/ {gsub(",","",$4); r=$4} /^requests:/ {n=$8} END {print r, n}' <<<"$out" ;;
	esac
}

scenarios=("handshake|new TLS connection per request (full handshake)" "h1-4k|keep-alive 4 KiB, HTTP/1.1 (64)" "h2-4k|keep-alive 4 KiB, HTTP/2 (16 x 10 streams)")
declare -A rps cpu
for round in $(seq "$ROUNDS"); do
	for sc in "${scenarios[@]}"; do
		name=${sc%%|*}
		for server in "${servers[@]}"; do
			pid=$(cat "$dir/$server.pid")
			before=$(cpu_ticks "$pid")
			read -r r n <<<"$(run "$name" "$server")"
			after=$(cpu_ticks "$pid")
			rps[$server,$name]+="$r "
			cpu[$server,$name]+="$(awk -v t=$((after - before)) -v n="$n" 'BEGIN {printf "%.1f", (n > 0) ? t * 10000 / n : 0}') "
			echo "round $round/$ROUNDS  $name  $server  $r req/s" >&2
		done
	done
done

printf '\n%-52s %9s %9s %11s %17s\n' "requests/s ($WORKERS workers, $ROUNDS rounds)" nginx herd herd/nginx "CPU µs/req n · h"
for sc in "${scenarios[@]}"; do
	name=${sc%%|*} label=${sc#*|}
	n=$(median <<<"${rps[nginx,$name]}") h=$(median <<<"${rps[herd,$name]}")
	printf '%-52s %9.0f %9.0f %11s %17s\n' "$label" "$n" "$h" "$(ratio "$h" "$n")" \
		"$(median <<<"${cpu[nginx,$name]}") · $(median <<<"${cpu[herd,$name]}")"
done
echo "(nginx $(nginx -v 2>&1 | cut -d/ -f2) with ssl http2, ssl_session_cache; herd --tls-listen, defaults otherwise;"
echo " the same ECDSA P-256 certificate; wrk -t1 and h2load on the same cores; CPU = server utime+stime per request)"
