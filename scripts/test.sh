#!/usr/bin/env bash
# The whole test suite (what CI runs): set-up, then the tiers in order of cost: lint, unit,
# trainer, e2e (scripts/run_tiers.py prints each tier's time against its allowance).
# The e2e control plane builds in the background (cached by version) while the earlier tiers
# run; it is waited for between tiers, never inside a test. Extra arguments go to pytest;
# --tiers unit,trainer runs only those tiers.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/cluster/build.sh --background   # overlaps the Go build with the tiers before e2e
scripts/setup.sh

export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 RAY_TRAIN_ENABLE_PRINT_PATCH=0
exec .venv/bin/python scripts/run_tiers.py "$@"
