"""The systems bench_operator.py measures on one cluster: kubetune and its peers.

Each system turns one submitted object (a "root": FineTuneJob, JobSet, TrainJob) into an
Indexed Job of one 2-GPU pod, in a namespace of its own, with only its own controllers running
while it is measured:

* ``kubetune``: the operator (``python -m kubetune.operator_main``) → ConfigMap, ServiceAccount,
  Role, RoleBinding, headless Service, Indexed Job.
* ``jobset``: JobSet's controller manager → headless Service + Indexed Job (a JobSet of one
  replicated Job).
* ``trainer``: Kubeflow Trainer's controller manager + JobSet's → TrainJob → JobSet → Service +
  Indexed Job (a ClusterTrainingRuntime holding the same pod template).

The peers run out of cluster with the bench's kubeconfig, built by ``bench/peers/build.sh``
and configured as their Helm charts configure them (``defaults``), or with client rate limits
and worker counts matched to kubetune's (``matched``: no client-side rate limit, 32 workers per
controller, as the operator's 32 API workers).

Webhooks: served on loopback with a self-signed certificate. Both peers manage their webhook
certificates with cert-controller, which reads a Secret and checks the files in a fixed
directory (``/tmp/k8s-webhook-server/serving-certs``, hard-coded upstream); the bench seeds
that Secret and that directory with one CA and one serving certificate valid for the Service
DNS names the peers expect *and* 127.0.0.1, and points each webhook at
``https://127.0.0.1:<port><path>``: the webhooks run exactly as in a cluster, defaults and
validation included.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kube_raw import ApiError, RawClient, collection_path

from kubetune.api import GROUP, PLURAL, VERSION
from kubetune.builders import names
from kubetune.builders.common import POD_ANNOTATIONS

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
PEERS_BUILD = BENCH_DIR / "peers" / "build.sh"
#: Where both peers' cert-controller looks for the serving certificate (hard-coded upstream).
PEER_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")

OUTCOME = "kwok.kubetune.io/outcome"
DELAY = "kwok.kubetune.io/delay"
NODE_GROUP_LABEL = "kubetune.io/node-group"
NODE_GROUP = "bench"
GPUS_PER_JOB = 2
MATCHED_WORKERS = 32
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"

Obj = dict[str, Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peers_dir() -> Path:
    out = subprocess.run(
        ["bash", str(PEERS_BUILD), "dir"], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip())


def peers_built() -> str | None:
    """None when bench/peers/build.sh has built the peers, else why not."""
    directory = peers_dir()
    if not (directory / ".complete").exists():
        return f"peers not built: run bench/peers/build.sh ({directory} incomplete)"
    return None


def pod_template(outcome: str, run_seconds: float) -> Obj:
    """The pod every system runs: 2 GPUs on a bench node; kwok ends it as ``outcome`` says."""
    return {
        "metadata": {"annotations": {OUTCOME: outcome, DELAY: f"{run_seconds:g}s"}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {NODE_GROUP_LABEL: NODE_GROUP},
            "containers": [
                {
                    "name": "node",
                    "image": "kubetune/trainer:bench",
                    "command": ["kubetune-train"],
                    "resources": {
                        "requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": GPUS_PER_JOB},
                        "limits": {"memory": "1Gi", "nvidia.com/gpu": GPUS_PER_JOB},
                    },
                }
            ],
        },
    }


# --------------------------------------------------------------------------- processes


class Process:
    """A controller process: its CPU time and resident memory, read from /proc."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


# --------------------------------------------------------------------------- systems


@dataclass
class System:
    """What the bench needs to know of one system (see the module docstring)."""

    name: str
    variant: str
    namespace: str
    api_version: str
    plural: str
    #: Label every child Job and pod carries, whose value is the root's name.
    root_label: str
    processes: list[Process] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.name if self.variant == "own" else f"{self.name}-{self.variant}"

    @property
    def roots_path(self) -> str:
        return collection_path(self.api_version, self.plural, self.namespace)

    def body(self, name: str, outcome: str, run_seconds: float) -> Obj:
        raise NotImplementedError

    def start(self, kubeconfig: Path, workdir: Path, client: RawClient) -> None:
        raise NotImplementedError

    def stop(self, client: RawClient) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes = []

    def products(self) -> tuple[str, ...]:
        """User-agent products (first word, no version) of this system's controllers."""
        raise NotImplementedError


def _wait(check: Any, what: str, timeout: float, processes: list[Process]) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for process in processes:
            if not process.alive():
                raise RuntimeError(
                    f"{process.name} exited {process.proc.returncode}; log: {process.log_path}"
                )
        try:
            if check():
                return
        except Exception as err:  # not up yet
            last = err
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {timeout}s ({last!r})")


class Kubetune(System):
    def __init__(self, namespace: str = "bench-kubetune") -> None:
        super().__init__(
            "kubetune", "own", namespace, f"{GROUP}/{VERSION}", PLURAL, names.LABEL_JOB
        )
        self.metrics_port = 0

    def body(self, name: str, outcome: str, run_seconds: float) -> Obj:
        pod = pod_template(outcome, run_seconds)
        resources = pod["spec"]["containers"][0]["resources"]["requests"]
        return {
            "apiVersion": self.api_version,
            "kind": "FineTuneJob",
            "metadata": {
                "name": name,
                "annotations": {POD_ANNOTATIONS: json.dumps(pod["metadata"]["annotations"])},
            },
            "spec": {
                "method": "sft",
                "model": {"source": "builtin://tiny-llama"},
                "data": {"sources": [{"uri": "builtin://arithmetic-sft"}]},
                "resources": {
                    "nodes": 1,
                    "gpusPerNode": GPUS_PER_JOB,
                    "cpu": resources["cpu"],
                    "memory": resources["memory"],
                    "nodeSelector": pod["spec"]["nodeSelector"],
                },
            },
        }

    def start(self, kubeconfig: Path, workdir: Path, client: RawClient) -> None:
        self.metrics_port = free_port()
        env = os.environ | {
            "KUBECONFIG": str(kubeconfig),
            "KUBETUNE_NAMESPACE": self.namespace,
            "KUBETUNE_METRICS_PORT": str(self.metrics_port),
            "KUBETUNE_HEALTH_PORT": "0",
            "KUBETUNE_TRAINER_IMAGE": "kubetune/trainer:bench",
            "KUBETUNE_DEFAULT_STORAGE": "s3://kubetune-bench/runs",
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT / "operator"), str(REPO_ROOT / "trainer_image")]
            ),
        }
        self.processes = [
            Process(
                "kubetune-operator",
                [sys.executable, "-m", "kubetune.operator_main"],
                env,
                workdir / "kubetune-operator.log",
            )
        ]
        _wait(lambda: self.metrics() is not None, "operator /metrics", 120, self.processes)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def metric(self, name: str) -> float:
        """The sum of every sample of one metric on the operator's /metrics."""
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in self.metrics().splitlines()
            if line.startswith((f"{name} ", f"{name}{{"))
        )

    def products(self) -> tuple[str, ...]:
        # kopf's own aiohttp client, and the kubernetes package's (the operator's API calls).
        return ("kopf", "OpenAPI-Generator", "kubetune-operator")


# --------------------------------------------------------------------------- peers


@dataclass
class WebhookCerts:
    """One CA and one serving certificate for every peer webhook (see the module docstring)."""

    ca_crt: bytes
    ca_key: bytes
    tls_crt: bytes
    tls_key: bytes

    @classmethod
    def create(cls, ca_names: list[str], dns_names: list[str]) -> WebhookCerts:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)

            def openssl(*args: str) -> None:
                subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

            # PKCS#1 keys: what cert-controller itself writes and parses.
            openssl("genrsa", "-traditional", "-out", "ca.key", "2048")
            openssl(
                "req", "-x509", "-new", "-key", "ca.key", "-out", "ca.crt", "-days", "3650",
                "-subj", "/CN=kubetune-bench-webhook-ca",
                "-addext", "subjectAltName=" + ",".join(f"DNS:{n}" for n in ca_names),
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,digitalSignature,keyEncipherment",
            )  # fmt: skip
            openssl("genrsa", "-traditional", "-out", "tls.key", "2048")
            openssl("req", "-new", "-key", "tls.key", "-out", "tls.csr", "-subj", "/CN=127.0.0.1")
            sans = ",".join(["IP:127.0.0.1", *(f"DNS:{n}" for n in dns_names)])
            (d / "ext.cnf").write_text(
                f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
            )
            openssl(
                "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "tls.crt", "-days", "3650", "-extfile", "ext.cnf",
            )  # fmt: skip
            return cls(
                *(d.joinpath(f).read_bytes() for f in ("ca.crt", "ca.key", "tls.crt", "tls.key"))
            )

    def secret(self, name: str, namespace: str) -> Obj:
        data = {"ca.crt": self.ca_crt, "ca.key": self.ca_key, "tls.crt": self.tls_crt}
        data["tls.key"] = self.tls_key
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": "Opaque",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }

    def write_cert_dir(self) -> None:
        PEER_CERT_DIR.mkdir(parents=True, exist_ok=True)
        (PEER_CERT_DIR / "tls.crt").write_bytes(self.tls_crt)
        (PEER_CERT_DIR / "tls.key").write_bytes(self.tls_key)
        (PEER_CERT_DIR / "ca.crt").write_bytes(self.ca_crt)


JOBSET_NAMESPACE = "jobset-system"
TRAINER_NAMESPACE = "kubeflow-system"
JOBSET_SERVICE = "jobset-webhook-service"
TRAINER_SERVICE = "kubeflow-trainer-controller-manager"


def peer_certs() -> WebhookCerts:
    return WebhookCerts.create(
        ca_names=["jobset-ca", "kubeflow-trainer-ca"],
        dns_names=[
            f"{JOBSET_SERVICE}.{JOBSET_NAMESPACE}.svc",
            f"{TRAINER_SERVICE}.{TRAINER_NAMESPACE}.svc",
        ],
    )


def rendered(chart: str) -> list[Obj]:
    """The objects of a peer's Helm chart rendered by build.sh with its default values."""
    text = (peers_dir() / "manifests" / f"{chart}.yaml").read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def apply(client: RawClient, obj: Obj) -> None:
    """Create, or replace what exists under that name (server-side apply, bench's field manager)."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    plural = {
        "CustomResourceDefinition": "customresourcedefinitions",
        "MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
        "ValidatingWebhookConfiguration": "validatingwebhookconfigurations",
        "Secret": "secrets",
        "Namespace": "namespaces",
        "ClusterTrainingRuntime": "clustertrainingruntimes",
    }[kind]
    namespace = obj["metadata"].get("namespace")
    path = collection_path(api_version, plural, namespace) + "/" + obj["metadata"]["name"]
    client.request(
        "PATCH",
        path + "?fieldManager=kubetune-bench&force=true",
        obj,
        content_type="application/apply-patch+yaml",
    )


def delete(client: RawClient, obj: Obj) -> None:
    plural = {
        "MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
        "ValidatingWebhookConfiguration": "validatingwebhookconfigurations",
    }[obj["kind"]]
    path = collection_path(obj["apiVersion"], plural, None) + "/" + obj["metadata"]["name"]
    with contextlib.suppress(ApiError):
        client.request("DELETE", path)


def loopback_webhooks(config: Obj, port: int, ca: bytes) -> Obj:
    """A webhook configuration whose Service references become https://127.0.0.1:port/path."""
    out = json.loads(json.dumps(config))
    for webhook in out.get("webhooks") or []:
        service = webhook["clientConfig"].get("service") or {}
        webhook["clientConfig"] = {
            "url": f"https://127.0.0.1:{port}{service.get('path', '/')}",
            "caBundle": base64.b64encode(ca).decode(),
        }
    return out


def crds(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] == "CustomResourceDefinition"]


def wait_established(client: RawClient, names: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        while True:
            conditions = client.request("GET", path).get("status", {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {name} not Established after {timeout}s")
            time.sleep(0.2)


class JobSetController:
    """JobSet's controller manager with its chart's configuration (leader election on, QPS/burst
    500, internal certificate management), webhooks on loopback."""

    def __init__(self, certs: WebhookCerts, matched: bool) -> None:
        self.certs, self.matched = certs, matched
        self.objects = rendered("jobset")
        self.webhooks: list[Obj] = []

    def config(self, port: int) -> Obj:
        configmap = next(o for o in self.objects if o["kind"] == "ConfigMap")
        config = yaml.safe_load(configmap["data"]["controller_manager_config.yaml"])
        config.setdefault("webhook", {}).update({"port": port, "host": "127.0.0.1"})
        # In a pod the lease goes to the pod's namespace; out of cluster it must be named.
        config.setdefault("leaderElection", {})["resourceNamespace"] = JOBSET_NAMESPACE
        return config

    def start(self, kubeconfig: Path, workdir: Path, client: RawClient) -> Process:
        port = free_port()
        config_path = workdir / "jobset-config.yaml"
        config_path.write_text(yaml.safe_dump(self.config(port)))
        self.webhooks = [
            loopback_webhooks(o, port, self.certs.ca_crt)
            for o in self.objects
            if o["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        ]
        for webhook in self.webhooks:
            apply(client, webhook)
        binary = peers_dir() / "bin" / ("jobset-tuned" if self.matched else "jobset")
        argv = [
            str(binary),
            f"--config={config_path}",
            "--zap-log-level=2",  # as the chart runs it
            "--metrics-bind-address=0",
            "--health-probe-bind-address=0",
        ]
        if self.matched:
            argv += ["--kube-api-qps=-1", f"--workers={MATCHED_WORKERS}"]
        env = {k: v for k, v in os.environ.items() if k != "TMPDIR"} | {
            "KUBECONFIG": str(kubeconfig)
        }
        return Process("jobset-controller", argv, env, workdir / "jobset-controller.log")

    def stop(self, client: RawClient) -> None:
        for webhook in self.webhooks:
            delete(client, webhook)


def _dry_run_create(client: RawClient, system: System) -> bool:
    """Whether a create passes admission (every webhook answering): a server-side dry run."""
    body = system.body("bench-dry-run", "run", 0)
    client.request("POST", system.roots_path + "?dryRun=All", body)
    return True


class JobSet(System):
    def __init__(self, matched: bool, certs: WebhookCerts, namespace: str) -> None:
        super().__init__(
            "jobset",
            "matched" if matched else "defaults",
            namespace,
            "jobset.x-k8s.io/v1alpha2",
            "jobsets",
            JOBSET_NAME_LABEL,
        )
        self.controller = JobSetController(certs, matched)

    def body(self, name: str, outcome: str, run_seconds: float) -> Obj:
        return {
            "apiVersion": self.api_version,
            "kind": "JobSet",
            "metadata": {"name": name},
            "spec": {
                "replicatedJobs": [
                    {
                        "name": "worker",
                        "replicas": 1,
                        "template": {
                            "spec": {
                                "parallelism": 1,
                                "completions": 1,
                                "completionMode": "Indexed",
                                "backoffLimit": 0,
                                "template": pod_template(outcome, run_seconds),
                            }
                        },
                    }
                ]
            },
        }

    def start(self, kubeconfig: Path, workdir: Path, client: RawClient) -> None:
        self.processes = [self.controller.start(kubeconfig, workdir, client)]
        _wait(lambda: _dry_run_create(client, self), "JobSet webhooks", 120, self.processes)

    def stop(self, client: RawClient) -> None:
        super().stop(client)
        self.controller.stop(client)

    def products(self) -> tuple[str, ...]:
        return ("jobset", "jobset-tuned")


TRAINER_RUNTIMES = {"run": "kubetune-bench-run", "succeed": "kubetune-bench-succeed"}


class Trainer(System):
    """Kubeflow Trainer v2: a TrainJob naming a ClusterTrainingRuntime whose JobSet template
    holds the pod; JobSet's controller runs beside it (as Trainer's chart installs it)."""

    def __init__(
        self, matched: bool, certs: WebhookCerts, namespace: str, run_seconds: float
    ) -> None:
        super().__init__(
            "trainer",
            "matched" if matched else "defaults",
            namespace,
            "trainer.kubeflow.org/v1alpha1",
            "trainjobs",
            JOBSET_NAME_LABEL,  # the JobSet is named after the TrainJob
        )
        self.certs, self.matched = certs, matched
        self.jobset = JobSetController(certs, matched)
        self.objects = rendered("kubeflow-trainer")
        self.webhooks: list[Obj] = []
        self.run_seconds = run_seconds
        """How long pods of the runtime used for arrivals run before they succeed."""

    def body(self, name: str, outcome: str, run_seconds: float) -> Obj:
        return {
            "apiVersion": self.api_version,
            "kind": "TrainJob",
            "metadata": {"name": name},
            "spec": {"runtimeRef": {"name": TRAINER_RUNTIMES[outcome]}},
        }

    def runtime(self, outcome: str, run_seconds: float) -> Obj:
        return {
            "apiVersion": self.api_version,
            "kind": "ClusterTrainingRuntime",
            "metadata": {"name": TRAINER_RUNTIMES[outcome]},
            "spec": {
                "mlPolicy": {"numNodes": 1},
                "template": {
                    "spec": {
                        "replicatedJobs": [
                            {
                                "name": "node",
                                "template": {
                                    "metadata": {
                                        "labels": {
                                            "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"
                                        }
                                    },
                                    "spec": {
                                        "parallelism": 1,
                                        "completions": 1,
                                        "completionMode": "Indexed",
                                        "backoffLimit": 0,
                                        "template": pod_template(outcome, run_seconds),
                                    },
                                },
                            }
                        ]
                    }
                },
            },
        }

    def start(self, kubeconfig: Path, workdir: Path, client: RawClient) -> None:
        jobset = self.jobset.start(kubeconfig, workdir, client)
        self.processes = [jobset]
        port = free_port()
        self.webhooks = [
            loopback_webhooks(o, port, self.certs.ca_crt)
            for o in self.objects
            if o["kind"] == "ValidatingWebhookConfiguration"
        ]
        for webhook in self.webhooks:
            apply(client, webhook)
        binary = (
            peers_dir()
            / "bin"
            / ("trainer-tuned" if self.matched else "trainer-controller-manager")
        )
        argv = [
            str(binary),
            f"--webhook-server-port={port}",
            f"--webhook-service-name={TRAINER_SERVICE}",
            "--webhook-secret-name=kubeflow-trainer-webhook-cert",
            "--metrics-bind-address=0",
            "--health-probe-bind-address=0",
        ]
        if self.matched:
            argv += ["--kube-api-qps=-1", f"--workers={MATCHED_WORKERS}"]
        env = {k: v for k, v in os.environ.items() if k != "TMPDIR"} | {
            "KUBECONFIG": str(kubeconfig)
        }
        self.processes.append(
            Process("trainer-controller", argv, env, workdir / "trainer-controller.log")
        )

        def runtimes_applied() -> bool:
            # Through Trainer's own validating webhook, as in a real install: retried until up.
            for outcome in TRAINER_RUNTIMES:
                apply(client, self.runtime(outcome, self.run_seconds))
            return True

        _wait(runtimes_applied, "Trainer runtimes", 120, self.processes)
        _wait(lambda: _dry_run_create(client, self), "Trainer webhooks", 120, self.processes)

    def stop(self, client: RawClient) -> None:
        super().stop(client)
        self.jobset.stop(client)
        for webhook in self.webhooks:
            delete(client, webhook)

    def products(self) -> tuple[str, ...]:
        return ("jobset", "jobset-tuned", "trainer-controller-manager", "trainer-tuned")


def install_peers(client: RawClient, certs: WebhookCerts) -> None:
    """The peers' CRDs, namespaces and seeded certificate Secrets (once per cluster)."""
    for namespace in (JOBSET_NAMESPACE, TRAINER_NAMESPACE):
        apply(client, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    objects = rendered("jobset") + rendered("kubeflow-trainer")
    for crd in crds(objects):
        apply(client, crd)
    wait_established(client, [c["metadata"]["name"] for c in crds(objects)])
    apply(client, certs.secret("jobset-webhook-server-cert", JOBSET_NAMESPACE))
    apply(client, certs.secret("kubeflow-trainer-webhook-cert", TRAINER_NAMESPACE))
    certs.write_cert_dir()


def remove_cert_dir() -> None:
    shutil.rmtree(PEER_CERT_DIR.parent, ignore_errors=True)
