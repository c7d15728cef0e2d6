"""Start and stop a throwaway Kubernetes control plane for the e2e tier.

The control plane is real: kube-apiserver, kube-controller-manager and kube-scheduler (one
multi-call binary built from k8s.io/kubernetes), etcd, and kwok-controller simulating nodes and the
pods bound to them. ``kwokctl create cluster --runtime binary`` wires them together. Binaries come
from ``tests/cluster/build.sh`` (this module never builds).

Usage::

    import cluster as kc                             # with tests/cluster on sys.path
    c = kc.start()                                   # ready in a few seconds
    c.add_gpu_nodes(4)                               # 4 x nvidia.com/gpu: 8
    print(c.kubectl("get", "nodes"))
    c.stop()                                         # no processes or ports left behind

Everything a cluster writes lives in a private temporary work directory (kwok workdir, kubeconfig,
logs), removed by ``stop()``; only the build cache lives under $HOME.

Pod outcomes are chosen with ``kwok.kubetune.io/*`` annotations: see ``stages/README.md``.
"""

from __future__ import annotations

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
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

CLUSTER_DIR = Path(__file__).resolve().parent
REPO_ROOT = CLUSTER_DIR.parent.parent
STAGES_DIR = CLUSTER_DIR / "stages"
DEFAULT_CRDS_DIR = REPO_ROOT / "crds"
BUILD_SCRIPT = CLUSTER_DIR / "build.sh"

#: Binaries build.sh puts in the bin dir that a cluster needs.
REQUIRED_BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "etcd",
    "kwok",
    "kwokctl",
    "helm",
    "kubeconform",
)

#: Annotations/labels understood by the pod Stages (see stages/README.md).
OUTCOME = "kwok.kubetune.io/outcome"
DELAY = "kwok.kubetune.io/delay"
EXIT_CODE = "kwok.kubetune.io/exit-code"
TERMINATION_MESSAGE = "kwok.kubetune.io/termination-message"
DISRUPTION_REASON = "kwok.kubetune.io/disruption-reason"

#: Label put on every fake node this module creates, and the group label tests can select on.
FAKE_NODE_LABEL = "kubetune.io/fake-node"
NODE_GROUP_LABEL = "kubetune.io/node-group"

GPU_RESOURCE = "nvidia.com/gpu"
#: StorageClass name of the static volumes this module makes (no provisioner serves it).
STATIC_STORAGE_CLASS = "kubetune-static"
DEFAULT_GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


class BinariesMissing(RuntimeError):
    """The control plane binaries have not been built (run tests/cluster/build.sh)."""


class ClusterError(RuntimeError):
    """The cluster could not be started, or a command against it failed."""


def bin_dir() -> Path:
    """Directory holding the built binaries: $KUBETUNE_CLUSTER_BIN, else what build.sh reports."""
    override = os.environ.get("KUBETUNE_CLUSTER_BIN")
    if override:
        return Path(override)
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "bin-dir"], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip())


def background_build_running(directory: Path | None = None) -> bool:
    """True while a ``build.sh --background`` build for this version key is still running."""
    pid_file = (directory or bin_dir()).parent / "build.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def missing_binaries(directory: Path | None = None) -> list[str]:
    directory = directory or bin_dir()
    return [name for name in REQUIRED_BINARIES if not os.access(directory / name, os.X_OK)]


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def load_stages(stages_dir: Path = STAGES_DIR) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(stages_dir.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def gpu_node_manifest(
    name: str,
    *,
    gpus: int = 8,
    cpu: str = "96",
    memory: str = "1Ti",
    pods: int = 110,
    product: str = DEFAULT_GPU_PRODUCT,
    group: str = "default",
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A fake GPU Node (managed by kwok) shaped like a GPU-operator-labelled H100 box."""
    capacity = {
        "cpu": cpu,
        "memory": memory,
        "pods": str(pods),
        "ephemeral-storage": "1Ti",
        GPU_RESOURCE: str(gpus),
    }
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": "kwok-gpu",
        "type": "kwok",
        FAKE_NODE_LABEL: "true",
        NODE_GROUP_LABEL: group,
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.count": str(gpus),
        "nvidia.com/gpu.memory": "81559",
        "nvidia.com/gpu.family": "hopper",
        "nvidia.com/cuda.driver.major": "550",
    }
    node_labels.update(labels or {})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            # kwokctl's kwok-controller manages nodes carrying this annotation.
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": node_labels,
        },
        "spec": {"taints": taints} if taints else {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            # The API server reaches a node's "kubelet" (kwok, on loopback) at this address for
            # pod logs; kwokctl's binary runtime gives kwok no node IP of its own.
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
        },
    }


@dataclass
class Cluster:
    """A running kwokctl cluster. Create with :func:`start`; always :meth:`stop` it."""

    name: str
    workdir: Path
    bin_dir: Path
    kubeconfig: Path
    started_in: float = 0.0
    _node_seq: int = 0
    _stopped: bool = field(default=False, repr=False)

    # -- processes ---------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["KWOK_WORKDIR"] = str(self.workdir / "kwok")
        # kubectl's discovery cache defaults to ~/.kube/cache: keep it private too.
        env["KUBECACHEDIR"] = str(self.workdir / "kube-cache")
        return env

    def run(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120):
        """Run a command with this cluster's PATH/KUBECONFIG; returns CompletedProcess (text)."""
        proc = subprocess.run(
            list(args), input=input, capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise ClusterError(
                f"{' '.join(args)!r} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> str:
        """Run kubectl against this cluster and return stdout; raises ClusterError on failure."""
        return self.run(
            str(self.bin_dir / "kubectl"), *args, input=input, check=check, timeout=timeout
        ).stdout

    def kubectl_proc(self, *args: str, input: str | None = None, timeout: float = 120):
        """Like :meth:`kubectl` but never raises; returns the CompletedProcess."""
        return self.run(
            str(self.bin_dir / "kubectl"), *args, input=input, check=False, timeout=timeout
        )

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def apply(self, objs: dict[str, Any] | Iterable[dict[str, Any]] | str, *extra: str) -> str:
        """Server-side apply YAML text or manifest dict(s)."""
        if isinstance(objs, dict):
            objs = [objs]
        text = objs if isinstance(objs, str) else yaml.safe_dump_all(list(objs))
        return self.kubectl(
            "apply", "--server-side", "--field-manager=kubetune-e2e", "-f", "-", *extra, input=text
        )

    # -- pod logs ----------------------------------------------------------------------------

    def simulate_logs(self, namespace: str, pod: str, log_file: Path, follow: bool = True) -> None:
        """``kubectl logs`` of the pod (any container) reads ``log_file`` through kwok's log
        simulation (its Logs resource); with ``follow``, lines appended later are streamed. The
        file is in the container runtime's log format, as a kubelet keeps it (:func:`cri_log`)."""
        self.apply(
            {
                "apiVersion": "kwok.x-k8s.io/v1alpha1",
                "kind": "Logs",
                "metadata": {"name": pod, "namespace": namespace},
                "spec": {"logs": [{"logsFile": str(log_file), "follow": follow}]},
            }
        )

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (written only when started with an audit policy)."""
        return self.workdir / "kwok" / "clusters" / self.name / "logs" / "audit.log"

    def component_pids(self) -> dict[str, int]:
        """The control plane's processes by component (kube-apiserver, etcd, kwok-controller,
        kube-controller-manager, kube-scheduler): the executable's name, for CPU accounting."""
        found: dict[str, int] = {}
        for pid in self._component_pids():
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
            except OSError:
                continue
            found.setdefault(Path(argv0).name, pid)
        return found

    # -- nodes -------------------------------------------------------------------------------

    def add_gpu_nodes(
        self,
        n: int = 4,
        *,
        gpus: int = 8,
        group: str = "default",
        prefix: str = "kwok-gpu",
        wait: bool = True,
        timeout: float = 120,
        **node_kwargs: Any,
    ) -> list[str]:
        """Create ``n`` fake GPU nodes in one request batch; return their names.

        Nodes are labelled ``kubetune.io/node-group=<group>`` so a test can pin pods to its own
        nodes with a nodeSelector. With ``wait`` returns once every node is Ready.
        """
        names = []
        items = []
        for _ in range(n):
            self._node_seq += 1
            name = f"{prefix}-{self._node_seq:04d}"
            names.append(name)
            items.append(gpu_node_manifest(name, gpus=gpus, group=group, **node_kwargs))
        # Batched: a few kubectl processes, each creating a v1 List of nodes, run in parallel
        # (250 nodes: ~5 s instead of ~12 s for one sequential kubectl, minutes for one per node).
        chunks = min(8, max(1, n // 25))
        parts = [items[k::chunks] for k in range(chunks)]

        def create(part: list[dict[str, Any]]) -> str:
            body = json.dumps({"apiVersion": "v1", "kind": "List", "items": part})
            return self.kubectl("create", "-f", "-", "-o", "name", input=body, timeout=timeout)

        with ThreadPoolExecutor(max_workers=chunks) as pool:
            list(pool.map(create, parts))
        if wait:
            self.wait_nodes_ready(names, timeout=timeout)
        return names

    def wait_nodes_ready(self, names: Iterable[str], timeout: float = 120) -> None:
        pending = set(names)
        deadline = time.monotonic() + timeout
        while pending:
            nodes = self.get_json("nodes", "-l", f"{FAKE_NODE_LABEL}=true")["items"]
            for node in nodes:
                conds = {
                    c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])
                }
                taints = node.get("spec", {}).get("taints") or []
                not_ready_taint = any(
                    t["key"].startswith("node.kubernetes.io/not-ready") for t in taints
                )
                if conds.get("Ready") == "True" and not not_ready_taint:
                    pending.discard(node["metadata"]["name"])
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{len(pending)} nodes not Ready after {timeout}s: {sorted(pending)[:5]}"
                )
            time.sleep(0.25)

    # -- storage ---------------------------------------------------------------------------

    def add_checkpoint_claim(
        self, namespace: str = "default", claim: str = "kubetune-runs", size: str = "100Gi"
    ) -> None:
        """The default checkpoint claim in ``namespace``, rendered by the chart
        (``storage.pvc.create``), bound to a static PersistentVolume made here: this cluster has
        no volume provisioner, and pods that mount an unbound claim are never scheduled."""
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{claim}-{namespace}"},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": STATIC_STORAGE_CLASS,
                "hostPath": {"path": f"/tmp/{claim}-{namespace}"},  # never mounted: pods are fake
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
        self.apply(volume)
        rendered = self.run(
            str(self.bin_dir / "helm"),
            "template",
            "kubetune",
            str(REPO_ROOT / "charts" / "kubetune"),
            "--show-only",
            "templates/storage.yaml",
            "--set",
            f"storage.default=pvc://{claim}",
            "--set",
            "storage.pvc.create=true",
            "--set",
            f"storage.pvc.namespaces={{{namespace}}}",
            "--set",
            f"storage.pvc.storageClassName={STATIC_STORAGE_CLASS}",
            "--set",
            f"storage.pvc.size={size}",
        ).stdout
        self.apply(rendered)

    # -- lifecycle ---------------------------------------------------------------------------

    def _component_pids(self) -> list[int]:
        """PIDs of processes whose command line references this cluster's private workdir."""
        marker = str(self.workdir).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                pids.append(int(entry.name))
        return pids

    def _ports(self) -> list[int]:
        """Every port the components listen on (from kwokctl's saved configuration)."""
        ports: set[int] = set()
        saved = self.workdir / "kwok" / "clusters" / self.name / "kwok.yaml"
        try:
            for doc in yaml.safe_load_all(saved.read_text()):
                if doc and doc.get("kind") == "KwokctlConfiguration":
                    for component in doc.get("components") or []:
                        ports.update(
                            int(p["port"]) for p in component.get("ports") or [] if p.get("port")
                        )
        except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
            pass
        return sorted(ports)

    def stop(self, keep_workdir: bool = False) -> None:
        """Delete the cluster; kill any component left behind; verify nothing remains."""
        if self._stopped:
            return
        self._stopped = True
        ports = self._ports()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.run(
                str(self.bin_dir / "kwokctl"),
                "--name",
                self.name,
                "delete",
                "cluster",
                check=False,
                timeout=60,
            )
        # Fallback: kwokctl starts every component in its own session (setsid), so a process
        # group kill cannot reach them; match them by the private workdir in their command line.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._component_pids()
            if not pids:
                break
            sys.stderr.write(f"cluster {self.name}: sending {sig.name} to leftover pids {pids}\n")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self._component_pids():
                time.sleep(0.1)
        # Sockets of a process that is just exiting may linger for a moment: poll briefly.
        deadline = time.monotonic() + 10
        while True:
            leftover = self._component_pids()
            busy = [p for p in ports if _port_open("127.0.0.1", p)]
            if not (leftover or busy) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if leftover or busy:
            raise ClusterError(
                f"cluster {self.name}: processes {leftover} / ports {busy} left behind"
            )

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_kubeconform_schemas(cluster: Cluster, out_dir: Path, strict: bool = True) -> int:
    """Write one standalone JSON schema per kind the live API server serves (CRDs included),
    named the way kubeconform looks them up, so it can run fully offline with
    ``-schema-location '<out_dir>/{{ .ResourceKind }}{{ .KindSuffix }}.json'``.

    Built from the server's OpenAPI v2: each file holds the kind's definition plus the
    definitions it references. ``strict`` forbids unknown fields (like kubeconform -strict
    schemas). Returns the number of files written."""
    spec = json.loads(cluster.kubectl("get", "--raw", "/openapi/v2", timeout=120))
    defs: dict[str, Any] = spec["definitions"]

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("format") == "int-or-string":
                return {
                    "oneOf": [{"type": "string"}, {"type": "integer"}],
                    **{k: v for k, v in node.items() if k not in ("type", "format")},
                }
            out = {k: fix(v) for k, v in node.items()}
            if (
                strict
                and out.get("type") == "object"
                and "properties" in out
                and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")
            ):
                out["additionalProperties"] = False
            return out
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    fixed = {name: fix(d) for name, d in defs.items()}
    # resource.Quantity is a string in OpenAPI but YAML authors write bare numbers too.
    for name, d in fixed.items():
        if name.endswith("pkg.api.resource.Quantity"):
            fixed[name] = {
                "oneOf": [{"type": "string"}, {"type": "number"}],
                "description": d.get("description", ""),
            }

    def refs(node: Any, found: set[str]) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/definitions/"):
                name = ref[len("#/definitions/") :]
                if name not in found and name in fixed:
                    found.add(name)
                    refs(fixed[name], found)
            for v in node.values():
                refs(v, found)
        elif isinstance(node, list):
            for v in node:
                refs(v, found)

    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, d in fixed.items():
        for gvk in defs[name].get("x-kubernetes-group-version-kind") or []:
            group, version, kind = gvk.get("group", ""), gvk["version"], gvk["kind"]
            suffix = (
                f"-{group.split('.')[0].lower()}-{version.lower()}"
                if group
                else f"-{version.lower()}"
            )
            needed: set[str] = set()
            refs(d, needed)
            schema = dict(d)
            schema["definitions"] = {n: fixed[n] for n in sorted(needed)}
            (out_dir / f"{kind.lower()}{suffix}.json").write_text(json.dumps(schema))
            written += 1
    return written


def cri_log(text: str) -> str:
    """Lines of a container's stdout as the container runtime writes them to its log file
    (``<RFC 3339 time> stdout F <line>``), what kwok serves as the pod's log."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return "".join(f"{now} stdout F {line}\n" for line in text.splitlines())


def _kwokctl_config(binaries: Path, name: str, audit_policy: Path | None = None) -> str:
    conf: dict[str, Any] = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": {
            "runtime": "binary",
            "bindAddress": "127.0.0.1",
            "kubeApiserverBinary": str(binaries / "kube-apiserver"),
            "kubeControllerManagerBinary": str(binaries / "kube-controller-manager"),
            "kubeSchedulerBinary": str(binaries / "kube-scheduler"),
            "kubectlBinary": str(binaries / "kubectl"),
            "etcdBinary": str(binaries / "etcd"),
            "kwokControllerBinary": str(binaries / "kwok"),
            "disableQPSLimits": True,
            "quietPull": True,
            # Pod logs come from files named per pod by Logs resources (Cluster.simulate_logs).
            "enableCRDs": ["Logs"],
        },
        "componentsPatches": [
            # Test data is disposable: never wait on the disk.
            {"name": "etcd", "extraArgs": [{"key": "unsafe-no-fsync", "value": "true"}]},
        ],
    }
    # Pod logs: the API server reaches a node's "kubelet" (kwok) at its InternalIP (loopback);
    # the node names resolve nowhere.
    apiserver_args = [{"key": "kubelet-preferred-address-types", "value": "InternalIP"}]
    if audit_policy is not None:
        # kwokctl copies the policy into the cluster's workdir and points the API server's
        # --audit-policy-file / --audit-log-path at it (see Cluster.audit_log). One file: the
        # log writer would otherwise rotate it every 100 MB.
        conf["options"]["kubeAuditPolicy"] = str(audit_policy)
        apiserver_args.append({"key": "audit-log-maxsize", "value": "1000000"})
    conf["componentsPatches"].append({"name": "kube-apiserver", "extraArgs": apiserver_args})
    return yaml.safe_dump_all([conf, *load_stages()], sort_keys=False)


def start(
    name: str | None = None,
    *,
    workdir: Path | str | None = None,
    binaries: Path | None = None,
    crds_dir: Path | None = DEFAULT_CRDS_DIR,
    audit_policy: Path | None = None,
    timeout: float = 120,
) -> Cluster:
    """Create a cluster and return it once the API is ready, the default ServiceAccount exists
    and the kubetune CRDs (every YAML in ``crds_dir``, skipped when absent) are established.
    With ``audit_policy`` (an audit.k8s.io Policy file) the API server writes an audit log to
    :attr:`Cluster.audit_log`."""
    t0 = time.monotonic()
    binaries = Path(binaries) if binaries else bin_dir()
    missing = missing_binaries(binaries)
    if missing:
        raise BinariesMissing(
            f"control plane binaries not built ({', '.join(missing)} missing in {binaries}): "
            "run `make cluster-build` (tests/cluster/build.sh)"
        )
    name = name or f"kubetune-e2e-{uuid.uuid4().hex[:8]}"
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"{name}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "kwok").mkdir(exist_ok=True)
    config_path = workdir / "kwokctl.yaml"
    config_path.write_text(_kwokctl_config(binaries, name, audit_policy))
    cluster = Cluster(
        name=name, workdir=workdir, bin_dir=binaries, kubeconfig=workdir / "kubeconfig"
    )
    try:
        cluster.run(
            str(binaries / "kwokctl"),
            "--name",
            name,
            "create",
            "cluster",
            "--config",
            str(config_path),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--timeout",
            f"{int(timeout)}s",
            timeout=timeout + 30,
        )
        _wait_ready(cluster, timeout=max(5.0, timeout - (time.monotonic() - t0)))
        if crds_dir is not None and Path(crds_dir).is_dir() and any(Path(crds_dir).glob("*.y*ml")):
            apply_crds(cluster, Path(crds_dir))
    except BaseException:
        with contextlib.suppress(ClusterError):
            cluster.stop(keep_workdir=bool(os.environ.get("KUBETUNE_E2E_KEEP_WORKDIR")))
        raise
    cluster.started_in = time.monotonic() - t0
    return cluster


def _wait_ready(cluster: Cluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        ready = cluster.kubectl_proc("get", "--raw", "/readyz", timeout=10)
        if ready.returncode == 0:
            # Pods (and Job pods) are rejected until the ServiceAccount controller made "default".
            sa = cluster.kubectl_proc("get", "serviceaccount", "default", "-o", "name", timeout=10)
            if sa.returncode == 0:
                return
            last = sa.stderr
        else:
            last = ready.stderr or ready.stdout
        if time.monotonic() > deadline:
            raise ClusterError(f"cluster {cluster.name} not ready after {timeout:.0f}s: {last}")
        time.sleep(0.2)


def apply_crds(cluster: Cluster, crds_dir: Path = DEFAULT_CRDS_DIR, timeout: float = 60) -> None:
    """Apply every YAML in ``crds_dir`` and wait until each CRD is Established."""
    files = sorted(p for p in crds_dir.iterdir() if p.suffix in (".yaml", ".yml"))
    args = ["apply", "--server-side", "--field-manager=kubetune-e2e", "-o", "name"]
    for f in files:
        args += ["-f", str(f)]
    names = [
        line.split("/", 1)[1]
        for line in cluster.kubectl(*args).split()
        if line.startswith("customresourcedefinition")
    ]
    # Not `kubectl wait`: it errors out instead of waiting while .status.conditions is still unset.
    deadline = time.monotonic() + timeout
    while names:
        crds = cluster.get_json("crd", *names)
        items = crds.get("items", [crds])
        pending = [
            crd["metadata"]["name"]
            for crd in items
            if not any(
                c["type"] == "Established" and c["status"] == "True"
                for c in crd.get("status", {}).get("conditions") or []
            )
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"CRDs not Established after {timeout}s: {pending}")
        time.sleep(0.2)


def _dev_workdir() -> Path:
    root = Path(os.environ.get("KUBETUNE_CACHE", Path.home() / ".cache" / "kubetune"))
    return root / "dev-cluster"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="kubetune e2e control plane (kwokctl, binary runtime)"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd in ("up", "down", "smoke", "claim"):
        p = sub.add_parser(cmd)
        p.add_argument("--name", default="kubetune-dev")
        p.add_argument(
            "--workdir", type=Path, default=None, help="default: $KUBETUNE_CACHE/dev-cluster"
        )
        p.add_argument("--nodes", type=int, default=4, help="fake GPU nodes to add (up/smoke)")
        if cmd == "claim":
            p.add_argument("claim", help="the PersistentVolumeClaim to make (bound, 100Gi)")
            p.add_argument("--namespace", default="default")
    args = parser.parse_args(argv)
    workdir = args.workdir or _dev_workdir()
    binaries = bin_dir()

    if args.cmd == "smoke":
        c = start()
        try:
            print(f"cluster ready in {c.started_in:.1f}s")
            t = time.monotonic()
            c.add_gpu_nodes(args.nodes)
            print(f"{args.nodes} GPU nodes Ready in {time.monotonic() - t:.1f}s")
        finally:
            t = time.monotonic()
            c.stop()
            print(f"stopped (no processes/ports left) in {time.monotonic() - t:.1f}s")
        return 0

    existing = Cluster(
        name=args.name, workdir=workdir, bin_dir=binaries, kubeconfig=workdir / "kubeconfig"
    )
    if args.cmd == "claim":
        existing.add_checkpoint_claim(args.namespace, claim=args.claim)
        print(f"persistentvolumeclaim/{args.claim} created in {args.namespace} (bound)")
        return 0
    if args.cmd == "down":
        if not workdir.exists():
            print(f"no dev cluster at {workdir}")
            return 0
        existing.stop()
        print(f"dev cluster {args.name} deleted")
        return 0

    # up: reuse a running dev cluster, else start a fresh one in the persistent workdir.
    if (
        existing.kubeconfig.exists()
        and existing.kubectl_proc("get", "--raw", "/readyz", timeout=10).returncode == 0
    ):
        c = existing
    else:
        if workdir.exists():
            existing.stop()
        c = start(args.name, workdir=workdir, binaries=binaries)
        if args.nodes:
            c.add_gpu_nodes(args.nodes)
        # As the chart's storage.pvc.create does for the namespace jobs run in.
        c.add_checkpoint_claim("default")
        print(f"# dev cluster {c.name} ready in {c.started_in:.1f}s", file=sys.stderr)
    print(f"export KUBECONFIG={c.kubeconfig}")
    print(f"export PATH={c.bin_dir}:$PATH")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
