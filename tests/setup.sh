#!/usr/bin/env bash
# Installs the system packages callme needs on a fresh Debian machine: cmake (the vendored
# libopus is built with it). With --tests also what the test suite drives: Debian's chromium
# (with playwright-core from npm), coturn, and the network-namespace tools.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v cmake >/dev/null || missing+=(cmake)
if [ "${1:-}" = "--tests" ]; then
  command -v chromium >/dev/null || missing+=(chromium)
  command -v turnserver >/dev/null || missing+=(coturn)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v unshare >/dev/null || missing+=(util-linux)
  command -v npm >/dev/null || missing+=(npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ "${1:-}" = "--tests" ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
