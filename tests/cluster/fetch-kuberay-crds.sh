#!/usr/bin/env bash
# Fetch KubeRay's own RayJob and RayCluster CRDs (the version pinned in versions.env) from its Go
# module, into a cache directory keyed by that version beside the control plane's binaries.
# A no-op once cached, so it works offline afterwards. build.sh runs it.
#
#   tests/cluster/fetch-kuberay-crds.sh        fetch (no-op when cached); exit 1 when it cannot
#   tests/cluster/fetch-kuberay-crds.sh dir    print the directory holding the CRD files
#
# `go mod download` reads the module through GOPROXY (from the environment, as for build.sh) and
# checks it against the checksum database; the CRDs are KubeRay's generated
# config/crd/bases/ray.io_{rayjobs,rayclusters}.yaml, copied unchanged.
# Environment: KUBETUNE_CACHE (default $HOME/.cache/kubetune), GO (go binary).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"

MODULE="github.com/ray-project/kuberay/ray-operator"
CRDS=(ray.io_rayjobs.yaml ray.io_rayclusters.yaml)
DEST="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/cluster/kuberay-${KUBERAY_VERSION}"
STAMP="$DEST/.complete"

GO="${GO:-$(command -v go || true)}"
if [[ -z "$GO" && -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go; fi

cached() {
  [[ -f "$STAMP" ]] || return 1
  local f
  for f in "${CRDS[@]}"; do [[ -s "$DEST/crds/$f" ]] || return 1; done
}

fetch() {
  if cached; then
    echo "fetch-kuberay-crds: up to date: $DEST/crds"
    return 0
  fi
  if [[ -z "$GO" ]]; then
    echo "fetch-kuberay-crds: no go toolchain found (set GO=...)" >&2
    return 1
  fi
  local work module_dir f
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  # Outside any module (a go.mod in the working directory would be consulted otherwise).
  module_dir="$(cd "$work" && GOFLAGS=-mod=mod "$GO" mod download -json "${MODULE}@${KUBERAY_VERSION}" |
                python3 -c 'import json, sys
info = json.load(sys.stdin)
if info.get("Error"):
    sys.exit("go mod download: " + info["Error"])
print(info["Dir"])')"
  mkdir -p "$work/crds"
  for f in "${CRDS[@]}"; do
    if ! grep -q '^kind: CustomResourceDefinition' "$module_dir/config/crd/bases/$f"; then
      echo "fetch-kuberay-crds: $module_dir/config/crd/bases/$f is not a CRD" >&2
      return 1
    fi
    cp "$module_dir/config/crd/bases/$f" "$work/crds/$f"
  done
  rm -rf "$DEST"
  mkdir -p "$DEST"
  mv "$work/crds" "$DEST/crds"
  chmod -R u+w "$DEST"
  echo "${MODULE}@${KUBERAY_VERSION}" >"$DEST/source"
  date -u +%FT%TZ >"$STAMP"
  echo "fetch-kuberay-crds: done -> $DEST/crds"
}

case "${1:-fetch}" in
  fetch) fetch ;;
  dir) echo "$DEST/crds" ;;
  *) sed -n '2,8p' "$0" >&2; exit 2 ;;
esac
