"""The plan ConfigMap: the attempt's resolved plan as JSON, mounted at /etc/kubetune.

The plan holds Secret references (name and key), never their values; values reach the trainer
only as environment variables from secretKeyRef.
"""

from __future__ import annotations

from kubetune.api import FineTuneJob
from kubetune_trainer.plan import Plan

from . import names
from .common import PLAN_KEY, Manifest, metadata


def plan_configmap(job: FineTuneJob, plan: Plan) -> Manifest:
    """Immutable: an attempt's plan never changes (a new attempt gets a new ConfigMap)."""
    name = names.plan_configmap_name(job.metadata.name, plan.attempt)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(job, name, "plan", plan.attempt),
        "immutable": True,
        "data": {PLAN_KEY: plan.to_json() + "\n"},
    }


__all__ = ["plan_configmap"]
