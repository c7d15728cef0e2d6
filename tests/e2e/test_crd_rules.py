"""The API server enforces the FineTuneJob rules itself (CEL and strict field validation), so
`kubectl apply` refuses what `kubetune validate` refuses, and started jobs keep their recipe."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

BASE: dict[str, Any] = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "rules"},
    "spec": {
        "method": "sft",
        "model": {"source": "builtin://tiny-llama"},
        "data": {"sources": [{"uri": "builtin://arithmetic-sft"}]},
    },
}


def apply(cluster, namespace: str, obj: dict[str, Any], *extra: str):
    return cluster.kubectl_proc(
        "apply", "-n", namespace, *extra, "-f", "-", input=yaml.safe_dump(obj)
    )


def variant(**spec: Any) -> dict[str, Any]:
    obj = copy.deepcopy(BASE)
    obj["spec"].update(spec)
    return obj


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (variant(method="ppo"), "method ppo needs at least one reward in spec.ppo.rewards"),
        (
            variant(method="grpo", grpo={"rewards": []}),
            "method grpo needs at least one reward in spec.grpo.rewards",
        ),
        (
            variant(peft={"type": "qlora"}, resources={"gpusPerNode": 0}),
            "peft.type qlora needs GPUs",
        ),
        (variant(dpo={"beta": 0.2}), "spec.dpo is only allowed when method is dpo"),
        (variant(method="eval", data=None), "method eval needs at least one metric"),
        (
            variant(method="ppo", ppo={"rewards": [{"type": "length"}]}),
            "a length reward needs 'targetLength'",
        ),
        (variant(envSecrets={"BAD-NAME": {"name": "s", "key": "k"}}), "keys must match"),
        (variant(training={"learningRat": 0.1}), 'unknown field "spec.training.learningRat"'),
        (variant(training={"learningRate": -1}), "spec.training.learningRate"),
        (
            variant(method="dpo", training={"curriculum": {"difficulty": "length"}}),
            "spec.training.curriculum applies to method sft",
        ),
        (
            variant(training={"curriculum": {"difficulty": "column"}}),
            "difficulty column needs the column to read",
        ),
        (
            variant(method="reward", training={"contrastive": {}}),
            "spec.training.contrastive applies to methods sft and dpo",
        ),
        (
            variant(training={"contrastive": {"negatives": "pair"}}),
            "negatives pair needs a rejected response (method dpo)",
        ),
        (
            variant(
                model={
                    "source": "builtin://tiny-llama",
                    "conversationFormat": "roleMarkers",
                    "chatTemplate": "chatml",
                }
            ),
            "brings its own template",
        ),
    ],
    ids=["ppo-rewards", "grpo-rewards", "qlora-cpu", "section-method", "eval-metrics",
         "reward-fields", "env-names", "unknown-field", "bounds", "curriculum-method",
         "curriculum-column", "contrastive-method", "contrastive-pair", "format-template"],
)  # fmt: skip
def test_api_server_refuses_what_validate_refuses(cluster, namespace, obj, message) -> None:
    if obj["spec"].get("data") is None:
        obj["spec"].pop("data")
    result = apply(cluster, namespace, obj, "--dry-run=server")
    assert result.returncode != 0, f"accepted: {obj['spec']}"
    assert message in result.stderr, result.stderr


def test_name_longer_than_49_is_refused(cluster, namespace) -> None:
    obj = copy.deepcopy(BASE)
    obj["metadata"]["name"] = "x" * 50
    result = apply(cluster, namespace, obj, "--dry-run=server")
    assert result.returncode != 0 and "at most 49 characters" in result.stderr


def set_phase(cluster, namespace: str, phase: str) -> None:
    patch = json.dumps({"status": {"phase": phase}})
    cluster.kubectl(
        "patch", "finetunejob", "rules", "-n", namespace,
        "--subresource=status", "--type=merge", "-p", patch,
    )  # fmt: skip


def test_recipe_is_immutable_once_started_but_not_before(cluster, namespace) -> None:
    assert apply(cluster, namespace, BASE).returncode == 0
    # Pending: a typo can still be fixed.
    pending_fix = variant(training={"learningRate": 1e-4})
    assert apply(cluster, namespace, pending_fix).returncode == 0

    set_phase(cluster, namespace, "Running")
    changed = variant(training={"learningRate": 1e-3})
    result = apply(cluster, namespace, changed)
    assert result.returncode != 0
    assert "spec.training cannot change once the job has started" in result.stderr
    result = apply(cluster, namespace, variant(method="dpo"))
    assert "spec.method cannot change once the job has started" in result.stderr
    # Platform sections stay editable (Kueue rewrites placement; users suspend jobs).
    editable = variant(training={"learningRate": 1e-4}, runtime={"suspend": True})
    assert apply(cluster, namespace, editable).returncode == 0
