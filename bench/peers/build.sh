#!/usr/bin/env bash
# Build the peers bench/bench_operator.py measures kubetune against, from the Go module proxy at
# the exact versions in versions.env, into a cache directory keyed by those versions and the
# wrapper modules. A no-op when that directory is complete. Nothing built or downloaded here is
# committed.
#
#   bench/peers/build.sh           build (blocks; a lock serialises concurrent builds)
#   bench/peers/build.sh dir       print the cache directory (whether or not it is built)
#
# What lands in <dir>:
#   bin/jobset                       sigs.k8s.io/jobset's own main (its defaults)
#   bin/jobset-tuned                 jobset/main.go: the same manager plus --workers
#   bin/trainer-controller-manager   github.com/kubeflow/trainer/v2's own main (its defaults)
#   bin/trainer-tuned                trainer/main.go: the same manager plus QPS/burst/--workers
#   manifests/jobset.yaml            JobSet's Helm chart rendered with its default values
#   manifests/kubeflow-trainer.yaml  Kubeflow Trainer's Helm chart, default values, JobSet apart
#
# Each wrapper module (jobset/, trainer/) requires one upstream module and names its main as a
# `tool`, so its go.sum pins exactly the dependency versions upstream's go.mod selects.
# Charts are rendered with the helm that tests/cluster/build.sh builds (run that first).
# Environment: KUBETUNE_CACHE (default $HOME/.cache/kubetune), KUBETUNE_BUILD_JOBS (go build -p,
# default: number of CPUs, max 4), GO (go binary), GOCACHE/GOMODCACHE (shared with the user's).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"

GO="${GO:-$(command -v go || true)}"
if [[ -z "$GO" && -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go; fi

cache_key() {
  local h
  h="$(cat "$HERE/versions.env" "$HERE"/jobset/{go.mod,go.sum,main.go} \
        "$HERE"/trainer/{go.mod,go.sum,main.go} | sha256sum | cut -c1-10)"
  echo "jobset-${JOBSET_VERSION}_trainer-${TRAINER_VERSION}_${h}"
}

CACHE_ROOT="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/peers"
DEST="$CACHE_ROOT/$(cache_key)"
STAMP="$DEST/.complete"
BINARIES=(jobset jobset-tuned trainer-controller-manager trainer-tuned)
MANIFESTS=(jobset.yaml kubeflow-trainer.yaml)

up_to_date() {
  [[ -f "$STAMP" ]] || return 1
  local f
  for f in "${BINARIES[@]}"; do [[ -x "$DEST/bin/$f" ]] || return 1; done
  for f in "${MANIFESTS[@]}"; do [[ -s "$DEST/manifests/$f" ]] || return 1; done
}

timed() {
  local name="$1" t=$SECONDS
  shift
  "$@"
  echo "peers/build.sh: step $name took $((SECONDS - t))s"
}

module_dir() {
  # The upstream module's directory in the module cache (downloaded through GOPROXY, checked
  # against go.sum).
  (cd "$HERE/$1" && "$GO" mod download -json "$2" |
    python3 -c 'import json, sys
info = json.load(sys.stdin)
if info.get("Error"):
    sys.exit("go mod download: " + info["Error"])
print(info["Dir"])')
}

render_charts() {
  local helm jobset_dir trainer_dir work
  helm="$("$HERE/../../tests/cluster/build.sh" bin-dir)/helm"
  if [[ ! -x "$helm" ]]; then
    echo "peers/build.sh: $helm missing: run tests/cluster/build.sh first" >&2
    exit 1
  fi
  jobset_dir="$(module_dir jobset "sigs.k8s.io/jobset@${JOBSET_VERSION}")"
  trainer_dir="$(module_dir trainer "github.com/kubeflow/trainer/v2@${TRAINER_VERSION}")"
  work="$(mktemp -d)"
  cp -r "$jobset_dir/charts/jobset" "$trainer_dir/charts/kubeflow-trainer" "$work/"
  chmod -R u+w "$work"
  # The trainer chart pulls JobSet as an OCI sub-chart (no network here): JobSet is rendered on
  # its own above, so the dependency is dropped; `jobset.install=false` says the same.
  python3 - "$work/kubeflow-trainer/Chart.yaml" <<'PY'
import sys
path = sys.argv[1]
lines = open(path).read().split("\n")
out, skip = [], False
for line in lines:
    if line.startswith("dependencies:"):
        skip = True
        continue
    if skip and (line.startswith((" ", "-")) or not line.strip()):
        continue
    skip = False
    out.append(line)
open(path, "w").write("\n".join(out))
PY
  mkdir -p "$DEST/manifests"
  "$helm" template jobset "$work/jobset" --namespace jobset-system --include-crds \
    >"$DEST/manifests/jobset.yaml"
  "$helm" template kubeflow-trainer "$work/kubeflow-trainer" --namespace kubeflow-system \
    --include-crds --set jobset.install=false >"$DEST/manifests/kubeflow-trainer.yaml"
  # The training runtimes upstream ships (the bench writes its own, but keeps these for reference).
  cp "$trainer_dir/manifests/base/runtimes/torch_distributed.yaml" "$DEST/manifests/"
  rm -rf "$work"
}

go_build() {
  # go_build MODULE_DIR OUT PACKAGE FLAGS...: go build inside one wrapper module.
  local module="$1" out="$2" pkg="$3"
  shift 3
  (cd "$HERE/$module" && "$GO" build "$@" -o "$out" "$pkg")
}

build() {
  if [[ -z "$GO" ]]; then echo "peers/build.sh: no go toolchain found (set GO=...)" >&2; exit 1; fi
  local jobs="${KUBETUNE_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
  [[ "$jobs" -gt 4 ]] && jobs=4
  export CGO_ENABLED=0
  local flags=(-mod=readonly -buildvcs=false -trimpath -p "$jobs" -ldflags "-s -w")
  local t0=$SECONDS
  rm -f "$STAMP"
  mkdir -p "$DEST/bin"
  timed download bash -c "cd '$HERE/jobset' && '$GO' mod download && cd '$HERE/trainer' && '$GO' mod download"
  # A binary already in $DEST was built from these very inputs (they key the directory).
  local spec name module pkg
  for spec in jobset:jobset:sigs.k8s.io/jobset jobset-tuned:jobset:. \
      trainer-controller-manager:trainer:github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager \
      trainer-tuned:trainer:.; do
    IFS=: read -r name module pkg <<<"$spec"
    [[ -x "$DEST/bin/$name" ]] && continue
    timed "$name" go_build "$module" "$DEST/bin/$name.tmp" "$pkg" "${flags[@]}"
    mv "$DEST/bin/$name.tmp" "$DEST/bin/$name"
  done
  timed charts render_charts
  cp "$HERE/versions.env" "$DEST/versions.env"
  date -u +%FT%TZ >"$STAMP"
  echo "peers/build.sh: done in $((SECONDS - t0))s -> $DEST"
}

case "${1:-build}" in
  build)
    if up_to_date; then echo "peers/build.sh: up to date: $DEST"; exit 0; fi
    mkdir -p "$CACHE_ROOT"
    exec 9>"$CACHE_ROOT/.build.lock"
    flock 9
    if up_to_date; then echo "peers/build.sh: up to date: $DEST"; exit 0; fi
    build
    ;;
  dir) echo "$DEST" ;;
  *) sed -n '2,8p' "$0" >&2; exit 2 ;;
esac
