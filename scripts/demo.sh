#!/usr/bin/env bash
# The main job: build a tiny model locally, then SFT -> DPO on the shipped synthetic data
# (the embedded pipeline operator/kubetune/demo/pipeline.yaml), ending with a report.
# Checkpoints and outputs go to ./runs; running it again resumes, --fresh starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
exec .venv/bin/kubetune run --local "$@"
