#!/usr/bin/env bash
# The lab's peers preset on this machine: herd's strategies beside Apache's
# prefork MPM (its accept mutex as flock and as a pthread mutex), uWSGI
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
. bench/lib.sh
REQUESTS=${REQUESTS:-3000}
STRATEGIES=${STRATEGIES:-accept,flock,mutex,reuseport,fdpass,exclusive,nginx,epoll,go}

install_missing apache2=apache2-bin uwsgi=uwsgi,uwsgi-plugin-python3 nginx gunicorn perf=linux-perf

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
