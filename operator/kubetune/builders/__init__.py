"""Builders: pure functions turning (job, plan, cluster facts) into child manifests.

No I/O. Every child's name derives from the job name and the attempt (:mod:`.names`), and
every child carries a controller ownerReference to the FineTuneJob. Manifests are plain,
JSON-able dicts in creation order: the trainer's identity, the plan, then the launcher.
"""

from __future__ import annotations

from kubetune.api import FineTuneJob
from kubetune_trainer.plan import Plan

from . import names
from .common import (
    BuildError,
    ClusterFacts,
    Launcher,
    Manifest,
    check_plan,
    choose_launcher,
    pvc_claims,
    secret_env_name,
)
from .configmap import plan_configmap
from .export_job import export_job
from .job_launcher import POD_FAILURE_RULES, job_launcher
from .outcome import LauncherFailure, job_failure, rayjob_failure
from .rayjob_launcher import rayjob_launcher
from .rbac import trainer_rbac


def build_launcher(
    job: FineTuneJob, plan: Plan, facts: ClusterFacts, launcher: Launcher | None = None
) -> list[Manifest]:
    """The launcher's objects alone (Service + Job, or RayJob)."""
    check_plan(job, plan)
    chosen = launcher or choose_launcher(job.spec, facts)
    configmap = names.plan_configmap_name(job.metadata.name, plan.attempt)
    if chosen == "rayjob":
        return rayjob_launcher(job, plan, facts, configmap)
    return job_launcher(job, plan, facts, configmap)


def build_children(job: FineTuneJob, plan: Plan, facts: ClusterFacts) -> list[Manifest]:
    """Every child of an attempt, in creation order: ServiceAccount (unless the job names its
    own), Role, RoleBinding, plan ConfigMap, then the launcher (``job``: headless Service and
    Indexed Job; ``rayjob``: RayJob). Raises :class:`BuildError` naming the spec field when the
    job cannot run on this cluster."""
    check_plan(job, plan)
    return [
        *trainer_rbac(job),
        plan_configmap(job, plan),
        *build_launcher(job, plan, facts),
    ]


def build_export_job(
    job: FineTuneJob, plan: Plan, facts: ClusterFacts, export_attempt: int
) -> Manifest:
    """The export stage's Job for export attempt ``export_attempt``, exporting what the
    training attempt ``plan.attempt`` produced (it mounts that attempt's plan ConfigMap)."""
    check_plan(job, plan)
    configmap = names.plan_configmap_name(job.metadata.name, plan.attempt)
    return export_job(job, plan, facts, export_attempt, configmap)


__all__ = [
    "POD_FAILURE_RULES",
    "BuildError",
    "ClusterFacts",
    "Launcher",
    "LauncherFailure",
    "Manifest",
    "build_children",
    "build_export_job",
    "build_launcher",
    "choose_launcher",
    "job_failure",
    "names",
    "pvc_claims",
    "rayjob_failure",
    "secret_env_name",
]
