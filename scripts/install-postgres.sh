#!/usr/bin/env bash
# Installs the PostgreSQL server the studio tier starts (Debian's postgresql-15). Idempotent:
# when it is present it only prints its bin directory, as bindir=PATH.
# Exit 2 when it is missing and cannot be installed here (not root, no sudo, no apt-get).
set -euo pipefail
VERSION=15
bindir="/usr/lib/postgresql/$VERSION/bin"

if [ ! -x "$bindir/initdb" ] || [ ! -x "$bindir/pg_ctl" ]; then
  if [ "$(id -u)" = 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    echo "install-postgres: PostgreSQL $VERSION missing; as root run:" \
      "apt-get update && apt-get install -y postgresql-$VERSION" >&2
    exit 2
  fi
  if ! command -v apt-get >/dev/null; then
    echo "install-postgres: PostgreSQL $VERSION missing and apt-get is not available" >&2
    exit 2
  fi
  echo "install-postgres: installing Debian's postgresql-$VERSION" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${as_root[@]}" apt-get update -qq >&2
  # The package's own cluster is not needed: tests run their own server in a temp dir.
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "postgresql-$VERSION" >&2
fi
echo "bindir=$bindir"
