"""The trainer's identity: a per-job ServiceAccount, and a Role + RoleBinding granting exactly
one power, reading and patching the status of its own FineTuneJob (progress reports).

The Role names the job in resourceNames and grants nothing else: no other job, no spec, no
Secrets, no pods. When spec.runtime.serviceAccountName names an existing account, no account
is created and the Role is bound to that one instead.
"""

from __future__ import annotations

from kubetune.api import GROUP, PLURAL, FineTuneJob

from . import names
from .common import Manifest, metadata, pod_service_account

STATUS_RESOURCE = f"{PLURAL}/status"
TRAINER_VERBS = ["get", "patch"]


def service_account(job: FineTuneJob) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(job, names.trainer_account_name(job.metadata.name), "rbac"),
        "automountServiceAccountToken": True,
    }


def role(job: FineTuneJob) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(job, names.trainer_account_name(job.metadata.name), "rbac"),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [STATUS_RESOURCE],
                "resourceNames": [job.metadata.name],
                "verbs": list(TRAINER_VERBS),
            }
        ],
    }


def role_binding(job: FineTuneJob) -> Manifest:
    name = names.trainer_account_name(job.metadata.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(job, name, "rbac"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": pod_service_account(job),
                "namespace": job.job_ref().namespace,
            }
        ],
    }


def trainer_rbac(job: FineTuneJob) -> list[Manifest]:
    """ServiceAccount (unless the job names its own), Role, RoleBinding."""
    out = [] if job.spec.runtime.service_account_name else [service_account(job)]
    return [*out, role(job), role_binding(job)]


__all__ = [
    "STATUS_RESOURCE",
    "TRAINER_VERBS",
    "role",
    "role_binding",
    "service_account",
    "trainer_rbac",
]
