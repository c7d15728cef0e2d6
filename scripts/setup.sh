#!/usr/bin/env bash
# Creates or updates the project environment (.venv) from uv.lock. Safe to run every time:
# a warm run only checks the lock (~1 s). Needs python3.11 and access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
export UV_PYTHON_DOWNLOADS=never   # use the machine's Python 3.11; never fetch one
export DS_BUILD_OPS=0              # deepspeed is an sdist: build it without compiling ops
tools="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}/tools/uv-$UV_VERSION"

if ! uv_bin="$(command -v uv)" || [ "$("$uv_bin" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  uv_bin="$tools/bin/uv"
  if [ ! -x "$uv_bin" ]; then
    echo "setup: installing uv $UV_VERSION into $tools"
    python3.11 -m venv "$tools"
    "$tools/bin/pip" install --quiet "uv==$UV_VERSION"
  fi
fi

start=$(date +%s)
# A new environment is compiled to bytecode once, here: on a fresh machine the first imports
# otherwise compile thousands of modules each, and Ray's raylet aborts when its metrics agent
# (importing slowly under load) misses the 15 s it is given to start.
compile=()
[ -d .venv ] || compile=(--compile-bytecode)
"$uv_bin" sync --frozen --all-extras --python python3.11 --quiet "${compile[@]}"
# uv keeps an editable install whose package list changed in pyproject.toml (a new top-level
# package is then not importable): reinstall the project itself when one of them is missing.
if ! .venv/bin/python -c "import kubetune, kubetune_trainer, kubetune_studio" 2>/dev/null; then
  "$uv_bin" sync --frozen --all-extras --python python3.11 --quiet --reinstall-package kubetune
fi
echo "setup: environment ready in $(( $(date +%s) - start ))s (.venv)"
