#!/usr/bin/env bash
# Fetch Prometheus (the Debian package pinned in versions.env) into a cache directory keyed by its
# version, without root: `apt-get download` into a temporary directory, then `dpkg-deb -x`.
# A no-op once cached, so it works offline afterwards. build.sh runs it.
#
#   tests/cluster/fetch-prometheus.sh        fetch (no-op when cached); exit 1 when it cannot
#   tests/cluster/fetch-prometheus.sh bin    print the path of the prometheus binary (cached or not)
#
# When the system's package lists do not have the pinned version (never updated, or older), the
# lists are refreshed into a private directory (no root needed, system state untouched).
# Environment: KUBETUNE_CACHE (default $HOME/.cache/kubetune).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"

DEST="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/prometheus/${PROMETHEUS_DEB_VERSION}"
BIN="$DEST/root/usr/bin/prometheus"
STAMP="$DEST/.complete"

download() {
  local work="$1" pkg="prometheus=${PROMETHEUS_DEB_VERSION}"
  # Run as root, apt drops to its _apt user, which cannot write a private temporary directory.
  local apt=(apt-get -q -o APT::Sandbox::User=root)
  if (cd "$work" && "${apt[@]}" download "$pkg"); then return 0; fi
  echo "fetch-prometheus: $pkg not in the system package lists; refreshing private lists"
  mkdir -p "$work/lists/partial" "$work/archives/partial"
  local private=(-o "Dir::State::Lists=$work/lists" -o "Dir::Cache::archives=$work/archives"
                 -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")
  "${apt[@]}" "${private[@]}" update
  (cd "$work" && "${apt[@]}" "${private[@]}" download "$pkg")
}

fetch() {
  if [[ -f "$STAMP" && -x "$BIN" ]]; then
    echo "fetch-prometheus: up to date: $BIN"
    return 0
  fi
  for tool in apt-get dpkg-deb; do
    if ! command -v "$tool" >/dev/null; then
      echo "fetch-prometheus: $tool not found (a Debian-based system is needed)" >&2
      return 1
    fi
  done
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  download "$work"
  local deb
  deb="$(ls "$work"/prometheus_*.deb)"
  if [[ "$(dpkg --print-architecture)" == amd64 ]]; then
    echo "${PROMETHEUS_DEB_SHA256_AMD64}  $deb" | sha256sum --check --quiet
  fi
  rm -rf "$DEST"
  mkdir -p "$DEST"
  dpkg-deb -x "$deb" "$DEST/root"
  "$BIN" --version | sed -n 1p
  date -u +%FT%TZ >"$STAMP"
  echo "fetch-prometheus: done -> $BIN"
}

case "${1:-fetch}" in
  fetch) fetch ;;
  bin) echo "$BIN" ;;
  *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
