#!/usr/bin/env bash
# Soak herd and nginx with the same chaos: a closed loop of new connections
# runs while the master reloads (HUP), upgrades its binary (USR2) and has
# idle workers SIGKILLed. Prints one line per server: requests, failures and
# their kinds. Loopback only; every run is bounded by --duration.
#
#   bench/soak.sh                 # defaults below
#   DURATION=30s RELOADS=10 bench/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-20s} RELOADS=${RELOADS:-5} UPGRADES=${UPGRADES:-1} KILLS=${KILLS:-3}
WORKERS=${WORKERS:-4} CLIENTS=${CLIENTS:-8}
STRATEGIES=${STRATEGIES:-accept exclusive reuseport fdpass}

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/herd" ./cmd/herd
chaos=(--chaos --duration "$DURATION" --reloads "$RELOADS" --upgrades "$UPGRADES" --kills "$KILLS"
	--workers "$WORKERS" --concurrency "$CLIENTS")

for s in $STRATEGIES; do
	"$bin/herd" bench "${chaos[@]}" --strategies "$s" 2>/dev/null
done

if ! command -v nginx >/dev/null; then
	echo "nginx not installed (apt-get install nginx): skipping it" >&2
	exit 0
fi
nginx_bin=$(command -v nginx)
for reuse in "" " reuseport"; do
	dir=$(mktemp -d)
	chmod 755 "$dir" # nginx's workers run as an unprivileged user
	printf 'Hello, world\n' > "$dir/hello.txt"
	port=$((20000 + RANDOM % 20000))
	cat > "$dir/nginx.conf" <<CONF
worker_processes $WORKERS;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 1024; }
http {
	access_log off;
	sendfile on;
	server { listen 127.0.0.1:$port$reuse; root $dir; }
}
CONF
	name="nginx${reuse// /-}"
	# nginx daemonizes: with "daemon off" it ignores USR2 (its parent never
	# changes, so it takes itself for the new binary of an upgrade).
	"$bin/herd" bench "${chaos[@]}" --strategies "$name" --pid-file "$dir/nginx.pid" \
		--command "$nginx_bin -c $dir/nginx.conf" --target "127.0.0.1:$port" 2>/dev/null
	rm -rf "$dir"
done
