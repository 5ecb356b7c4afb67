#!/usr/bin/env bash
# Render a herd lab HTML report to PNG with headless Chromium (Debian's
# chromium package), to see what a person sees.
#   bench/screenshot.sh results/seed002.html results/seed002.png
set -euo pipefail
html=${1:?usage: screenshot.sh REPORT.html OUT.png}
png=${2:?usage: screenshot.sh REPORT.html OUT.png}
chromium=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$chromium" ]; then
	echo "screenshot: chromium is not installed (apt-get install chromium)" >&2
	exit 1
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# No network: the page is self-contained, and these flags keep Chromium
# from trying to reach anything of its own.
"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
	--disable-background-networking --disable-component-update --disable-sync \
	--user-data-dir="$profile" --hide-scrollbars --window-size=1100,${HEIGHT:-2600} \
	--screenshot="$(realpath -m "$png")" "file://$(realpath "$html")" 2>/dev/null
test -s "$png"
echo "wrote $png"
