#!/bin/sh
# Render a run's report.html in headless Chromium (Debian: apt-get install chromium) and
# save a full-page screenshot, to look at what a reader of the report sees.
#   scripts/render_report.sh RUN_DIR [OUT.png]
set -eu
run=$(cd "$1" && pwd)
out=${2:-$run/report.png}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
    echo "no chromium found: apt-get install chromium" >&2
    exit 1
fi
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1200,4200 --screenshot="$out" "file://$run/report.html" 2>/dev/null
echo "$out"
