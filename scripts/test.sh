#!/usr/bin/env bash
# The whole test suite (what CI runs): set-up, lint, then every tier this machine can run.
# The e2e control plane builds in the background (cached by version) while lint and the unit
# and trainer tiers run. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/cluster/build.sh --background   # overlaps the Go build with everything below
scripts/setup.sh

echo "== lint"
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/python -m kubetune.crd --check

export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 RAY_TRAIN_ENABLE_PRINT_PATCH=0
echo "== tests"
.venv/bin/python -m pytest "$@"
