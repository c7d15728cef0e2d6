#!/usr/bin/env bash
# The main job. Until the trainer lands: check every example FineTuneJob and print the resolved
# plan of the SFT -> reward -> PPO pipeline (what the trainer of each stage would receive).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "== kubetune validate manifests/examples/*.yaml"
.venv/bin/kubetune validate manifests/examples/*.yaml
echo "== kubetune validate --plan manifests/examples/pipeline.yaml"
.venv/bin/kubetune validate --plan manifests/examples/pipeline.yaml
