#!/usr/bin/env bash
# Installs what the browser test needs (Debian's chromium, playwright-core from npm, both
# cached) and runs tests/server/browser.mjs against the server scripts/test-server started.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
home="${LLMOS_HOME:-$HOME/.cache/llmos}"
if [ ! -x /usr/bin/chromium ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium >/dev/null
fi
node_dir="$home/node-browser"
if [ ! -d "$node_dir/node_modules/playwright-core" ]; then
  mkdir -p "$node_dir"
  (cd "$node_dir" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund playwright-core@1)
fi
export SHOTS="${SHOTS:-$home/screenshots}"
mkdir -p "$SHOTS"
cp "$here/browser.mjs" "$node_dir/browser.mjs"
node "$node_dir/browser.mjs"
echo "screenshots in $SHOTS"
