"""Progress into the FineTuneJob's status, from inside the job's pods.

A merge patch of ``status.progress`` (and ``status.lastCheckpoint`` or an eval job's
``status.evaluation`` when the record carries one) on ``.../finetunejobs/<name>/status``,
authenticated as the pod's ServiceAccount, whose Role allows exactly that on exactly this job.
Standard library only: the trainer image has no Kubernetes client.

Where to find the API server and credentials (each overridable, so a test can run it outside a
pod with a token minted for the per-job ServiceAccount):

* ``KUBETUNE_API_SERVER`` — else ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``;
* ``KUBETUNE_API_TOKEN`` (the token itself) or ``KUBETUNE_API_TOKEN_FILE`` — else the mounted
  ServiceAccount token;
* ``KUBETUNE_API_CA_FILE`` — else the mounted ServiceAccount CA.

A failed report is logged and dropped: progress is best effort, training goes on.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.reporting.progress import ProgressRecord

log = logging.getLogger(__name__)

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
GROUP_VERSION = "kubetune.io/v1alpha1"
PLURAL = "finetunejobs"
STATUS_PROGRESS_FIELDS = (
    "step",
    "totalSteps",
    "epoch",
    "percent",
    "etaSeconds",
    "loss",
    "tokensPerSecond",
    "updated",
    "evalMetrics",
    "objectives",
)


class ReportError(RuntimeError):
    """The API server refused or could not be reached (status is the HTTP code, or 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


@dataclass(frozen=True)
class ApiTarget:
    server: str
    token: str
    ca_file: str | None
    namespace: str
    name: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ApiTarget:
        env = dict(os.environ if env is None else env)
        server = env.get("KUBETUNE_API_SERVER")
        if not server:
            host = env.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
            port = env.get("KUBERNETES_SERVICE_PORT", "443")
            server = f"https://{f'[{host}]' if ':' in host else host}:{port}"
        token = env.get("KUBETUNE_API_TOKEN")
        if not token:
            token_file = env.get("KUBETUNE_API_TOKEN_FILE") or str(SA_DIR / "token")
            token = Path(token_file).read_text().strip()
        ca_file = env.get("KUBETUNE_API_CA_FILE") or (
            str(SA_DIR / "ca.crt") if (SA_DIR / "ca.crt").exists() else None
        )
        return cls(
            server=server.rstrip("/"),
            token=token,
            ca_file=ca_file,
            namespace=env["KUBETUNE_NAMESPACE"],
            name=env["KUBETUNE_JOB"],
        )

    @property
    def status_url(self) -> str:
        return (
            f"{self.server}/apis/{GROUP_VERSION}/namespaces/{self.namespace}/{PLURAL}/"
            f"{self.name}/status"
        )


def status_patch(record: ProgressRecord) -> dict[str, Any]:
    """The merge patch a record becomes: only the trainer's fields."""
    data = record.to_dict()
    progress = {k: data[k] for k in STATUS_PROGRESS_FIELDS if k in data}
    status: dict[str, Any] = {"progress": progress}
    if record.lastCheckpoint:
        status["lastCheckpoint"] = record.lastCheckpoint
    if record.evaluation:
        status["evaluation"] = record.evaluation
        del status["progress"]  # an eval job has no training progress to report
    return {"status": status}


class KubernetesReporter:
    """Reports into the own job's status (see the module docstring)."""

    def __init__(self, target: ApiTarget | None = None, timeout: float = 10.0) -> None:
        self.target = target or ApiTarget.from_env()
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=self.target.ca_file)

    def patch(self, body: dict[str, Any], url: str | None = None) -> dict[str, Any]:
        """Merge-patch ``url`` (default: the own job's status); raises ReportError."""
        request = urllib.request.Request(
            url or self.target.status_url,
            data=json.dumps(body).encode(),
            method="PATCH",
            headers={
                "Authorization": f"Bearer {self.target.token}",
                "Content-Type": "application/merge-patch+json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._ssl) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            raise ReportError(err.code, detail) from err
        except (urllib.error.URLError, OSError) as err:
            raise ReportError(0, str(err)) from err

    def report(self, record: ProgressRecord) -> None:
        try:
            self.patch(status_patch(record))
        except ReportError as err:
            log.warning("progress report dropped: %s", err)


__all__ = ["ApiTarget", "KubernetesReporter", "ReportError", "status_patch"]
