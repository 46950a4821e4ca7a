#!/usr/bin/env bash
# Opens a run's report.html in headless Chromium (Debian's `chromium`: apt install chromium),
# fails on any console message, checks that the parsed page holds every section, and takes a
# full-length screenshot to look at.
#
#   scripts/check-report-browser.sh runs/finetune/report.html [report.png] [height-px]
#
# The flags keep Chromium off the network (the page needs none: everything is inline) and
# out of the user's profile.
set -euo pipefail
report=${1:?usage: $0 REPORT.html [SCREENSHOT.png] [HEIGHT]}
shot=${2:-${report%.html}.png}
height=${3:-6000}
[ -f "$report" ] || { echo "error: $report: no such file" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "error: no chromium on PATH (Debian: apt install chromium)" >&2; exit 1; }
url="file://$(realpath "$report")"
profile=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$profile" "$log"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
  --disable-background-networking --disable-component-update --disable-sync
  --user-data-dir="$profile" --enable-logging=stderr --v=0 --hide-scrollbars)

dom=$(timeout 120 "$browser" "${flags[@]}" --dump-dom "$url" 2>"$log")
missing=0
# The ids of cv_train::run_report::SECTIONS.
for id in summary curves confusion per-class most-confused top-losses recipe; do
  if ! grep -q "id=\"$id\"" <<<"$dom"; then
    echo "error: $report: the parsed page has no section \"$id\"" >&2
    missing=1
  fi
done
timeout 120 "$browser" "${flags[@]}" --window-size="1280,$height" --screenshot="$(realpath -m "$shot")" "$url" 2>>"$log" >/dev/null
if grep -q "CONSOLE" "$log"; then
  echo "error: $report: console messages:" >&2
  grep "CONSOLE" "$log" >&2
  exit 1
fi
[ "$missing" = 0 ] || exit 1
[ -s "$shot" ] || { echo "error: no screenshot written to $shot" >&2; exit 1; }
echo "ok: $report opened in $("$browser" --version 2>/dev/null | head -1) with no console message; every section present; screenshot $shot"
