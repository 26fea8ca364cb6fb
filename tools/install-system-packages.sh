#!/usr/bin/env bash
# Installs the system packages the test suite needs, where missing: PostgreSQL (its initdb
# makes the suite's throwaway clusters), Redis, and Chromium with its driver and a Chinese font
# for the browser tests. Uses apt-get (as root, or through sudo).
set -euo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# Java runs the Nu HTML Checker that the page tests validate every page with.
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
# A Chinese font, so the browser tests' screenshots show the pages' Chinese text.
fc-list :lang=zh 2>/dev/null | grep -q . || missing+=(fonts-wqy-zenhei)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}"
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  as_root=(sudo)
fi
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged servers; the suite runs its own on free ports instead.
if command -v systemctl >/dev/null 2>&1; then
  "${as_root[@]}" systemctl stop redis-server >/dev/null 2>&1 || true
fi
