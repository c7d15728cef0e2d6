#!/usr/bin/env bash
# Installs the headless browser the studio tier drives: Debian's chromium and chromium-driver
# (a matching pair; never a browser download). Idempotent: when both are present it only prints
# their paths, one per line as NAME=PATH:
#   chromium=/usr/bin/chromium
#   chromedriver=/usr/bin/chromedriver
# Exit 2 when they are missing and cannot be installed here (not root, no sudo, no apt-get).
set -euo pipefail

find_binaries() {
  chromium="$(command -v chromium || command -v chromium-browser || true)"
  chromedriver="$(command -v chromedriver || true)"
  [ -n "$chromium" ] && [ -n "$chromedriver" ]
}

if ! find_binaries; then
  if [ "$(id -u)" = 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    echo "install-browser: chromium/chromedriver missing; as root run:" \
      "apt-get update && apt-get install -y chromium chromium-driver" >&2
    exit 2
  fi
  if ! command -v apt-get >/dev/null; then
    echo "install-browser: chromium/chromedriver missing and apt-get is not available" >&2
    exit 2
  fi
  echo "install-browser: installing Debian's chromium and chromium-driver" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${as_root[@]}" apt-get update -qq >&2
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
  find_binaries || { echo "install-browser: installed, but the binaries are not on PATH" >&2; exit 2; }
fi
echo "chromium=$chromium"
echo "chromedriver=$chromedriver"
