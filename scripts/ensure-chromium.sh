#!/usr/bin/env bash
# Browser tests drive Debian's Chromium through playwright-core (no browser download works here).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then echo "[chromium] $(/usr/bin/chromium --version 2>/dev/null)"; exit 0; fi
if [ "$(id -u)" != "0" ]; then echo "[chromium] /usr/bin/chromium is missing; install Debian's chromium" >&2; exit 1; fi
echo "[chromium] installing Debian's chromium..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
