# Every target does its own set-up (scripts/setup.sh is a no-op when the environment is current).
.PHONY: demo test setup lint format crd install-manifest cluster-build cluster-up cluster-down

demo:  ## the main job: a tiny fine-tuning pipeline, locally
	scripts/demo.sh

test:  ## the whole test suite: lint, unit, trainer and e2e tiers (what CI runs)
	scripts/test.sh

setup:
	scripts/setup.sh

lint: setup
	.venv/bin/ruff format --check .
	.venv/bin/ruff check .
	.venv/bin/python -m kubetune.crd --check

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

crd: setup  ## regenerate crds/ from kubetune.api
	.venv/bin/python -m kubetune.crd

install-manifest: crd  ## copy crds/ into the Helm chart and render manifests/install.yaml
	scripts/render-install.sh

cluster-build:  ## build the e2e control plane binaries (cached by version)
	tests/cluster/build.sh

cluster-up: cluster-build  ## start a dev cluster with fake GPU nodes; prints the KUBECONFIG to use
	tests/cluster/dev-cluster.sh up

cluster-down:
	tests/cluster/dev-cluster.sh down
