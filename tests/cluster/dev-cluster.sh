#!/usr/bin/env bash
# A persistent local dev cluster (same control plane as the e2e tier) with fake GPU nodes.
#
#   tests/cluster/dev-cluster.sh up      # start (or reuse); prints `export KUBECONFIG=...`
#   eval "$(tests/cluster/dev-cluster.sh up)"
#   tests/cluster/dev-cluster.sh claim NAME [NAMESPACE]   # a bound PersistentVolumeClaim
#   tests/cluster/dev-cluster.sh down    # delete it; no processes or ports left behind
#
# `up` also makes the default checkpoint claim kubetune-runs in namespace default, as the chart's
# storage.pvc.create does (this cluster has no volume provisioner: claims bind to static volumes).
#
# Env: DEV_GPU_NODES (default 4), KUBETUNE_CACHE (cluster state lives in $KUBETUNE_CACHE/dev-cluster).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
cmd="${1:-up}"
case "$cmd" in
  up|down) exec "$PY" "$HERE/cluster.py" "$cmd" --nodes "${DEV_GPU_NODES:-4}" ;;
  claim) exec "$PY" "$HERE/cluster.py" claim "${2:?claim name}" --namespace "${3:-default}" ;;
  *) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac
