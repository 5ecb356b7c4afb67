#!/usr/bin/env bash
# The lab's peers preset on this machine: herd's strategies beside uWSGI
# (default and --thunder-lock), nginx (accept_mutex off: EPOLLEXCLUSIVE;
# accept_mutex on; reuseport) and gunicorn's sync workers, on seed 002's
# load (8 workers, 4 clients, a new connection per request), every server
# counted by the kernel's tracepoints with perf. Installs what it needs
# from Debian, writes results/lab-peers.{txt,json,html} (and a PNG when
# Chromium is installed). Loopback only; every run is bounded by REQUESTS.
#
#   bench/lab-peers.sh
#   REQUESTS=3000 STRATEGIES=accept,flock,mutex,reuseport,fdpass,exclusive,epoll,go bench/lab-peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-3000}
STRATEGIES=${STRATEGIES:-accept,flock,mutex,reuseport,fdpass,exclusive,nginx,epoll,go}

need=()
command -v uwsgi >/dev/null || need+=(uwsgi uwsgi-plugin-python3)
command -v nginx >/dev/null || need+=(nginx)
command -v gunicorn >/dev/null || need+=(gunicorn)
command -v perf >/dev/null || need+=(linux-perf)
if [ ${#need[@]} -gt 0 ]; then
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/herd" ./cmd/herd
{
	echo "# REQUESTS=$REQUESTS bench/lab-peers.sh, $(date -u +%F), $(nproc) CPUs, kernel $(uname -r)"
	"$bin/herd" bench --preset peers --strategies "$STRATEGIES" --requests "$REQUESTS" \
		--json results/lab-peers.json --html results/lab-peers.html
} | tee results/lab-peers.txt
if command -v chromium >/dev/null; then
	HEIGHT=3600 bench/screenshot.sh results/lab-peers.html results/lab-peers.png
fi
