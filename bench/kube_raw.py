"""The bench's own API client: raw JSON over one urllib3 pool, no typed models.

The bench must not be the bottleneck it measures: decoding watch events into the kubernetes
client's typed objects costs more CPU than the controllers under test spend on some of them, so
requests and watch streams here are plain JSON (``json.loads`` per line). Authentication and TLS
come from the kubeconfig through the kubernetes package's loader.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config

Obj = dict[str, Any]


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {path}: {status} {body[:300]!r}")
        self.status = status


class RawClient:
    """JSON requests to the API server named by a kubeconfig (one pool, ``pool_size`` sockets).

    ``user_agent`` names this client in the API server's audit log."""

    def __init__(self, kubeconfig: Path, user_agent: str, pool_size: int = 32) -> None:
        configuration = k8s.Configuration()
        k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        self.base = configuration.host.rstrip("/")
        self.headers = {"User-Agent": user_agent, "Accept": "application/json"}
        token = configuration.api_key.get("authorization")
        if token:
            self.headers["Authorization"] = token
        self.pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=pool_size,
            block=True,
            cert_reqs="CERT_REQUIRED" if configuration.verify_ssl else "CERT_NONE",
            ca_certs=configuration.ssl_ca_cert,
            cert_file=configuration.cert_file,
            key_file=configuration.key_file,
        )

    def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        content_type: str = "application/json",
        ok: tuple[int, ...] = (200, 201, 202),
        timeout: float = 60,
    ) -> Obj:
        headers = dict(self.headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        response = self.pool.request(
            method, self.base + path, body=data, headers=headers, timeout=timeout, retries=False
        )
        if response.status not in ok:
            raise ApiError(method, path, response.status, response.data)
        return json.loads(response.data) if response.data else {}

    def text(self, path: str, timeout: float = 60) -> str:
        response = self.pool.request(
            "GET", self.base + path, headers=self.headers, timeout=timeout, retries=False
        )
        if response.status != 200:
            raise ApiError("GET", path, response.status, response.data)
        return response.data.decode()

    def stream(self, path: str, timeout: float) -> Iterator[Obj]:
        """The events of a watch (``path`` with ``watch=1``), one decoded JSON object each."""
        response = self.pool.request(
            "GET",
            self.base + path,
            headers=self.headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=timeout),
            retries=False,
        )
        try:
            if response.status != 200:
                raise ApiError("GET", path, response.status, response.read())
            pending = b""
            for chunk in response.stream(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            response.release_conn()


def collection_path(api_version: str, plural: str, namespace: str | None) -> str:
    """REST path of a collection: ``v1`` → /api/v1/..., ``group/version`` → /apis/..."""
    root = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{root}/namespaces/{namespace}/{plural}" if namespace else f"{root}/{plural}"


def parse_rfc3339(value: str) -> float:
    return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone


class Watcher(threading.Thread):
    """Lists, then watches one collection; hands every object it sees to ``on_object(type,
    object, seen)`` (``seen``: wall-clock time the event was decoded), in event order.

    Re-lists after an expired resourceVersion or a dropped connection; objects seen in a
    re-list come as type ``LISTED``."""

    def __init__(
        self,
        client: RawClient,
        path: str,
        on_object: Callable[[str, Obj, float], None],
        *,
        label_selector: str = "",
    ) -> None:
        super().__init__(daemon=True)
        self.client, self.path, self.on_object = client, path, on_object
        self.selector = label_selector
        self.stopping = threading.Event()
        self.synced = threading.Event()

    def _query(self, **params: str) -> str:
        if self.selector:
            params["labelSelector"] = self.selector
        return self.path + "?" + "&".join(f"{k}={v}" for k, v in params.items())

    def run(self) -> None:
        version = ""
        while not self.stopping.is_set():
            try:
                if not version:
                    listed = self.client.request("GET", self._query(limit="0"))
                    now = time.time()
                    for item in listed.get("items") or []:
                        self.on_object("LISTED", item, now)
                    version = listed["metadata"]["resourceVersion"]
                    self.synced.set()
                query = self._query(
                    watch="1",
                    resourceVersion=version,
                    allowWatchBookmarks="true",
                    timeoutSeconds="60",
                )
                for event in self.client.stream(query, timeout=90):
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        version = ""  # 410 Gone: re-list
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        self.on_object(kind, obj, time.time())
                    if self.stopping.is_set():
                        return
            except Exception as err:  # a dropped connection: resume (or re-list) after a pause
                if self.stopping.is_set():
                    return
                print(f"[bench] watch {self.path}: {err!r}; resuming", file=sys.stderr)
                version = ""
                time.sleep(1)

    def stop(self) -> None:
        self.stopping.set()


@dataclass
class Sent:
    """When one create request was due (open loop), sent, and answered (wall-clock seconds)."""

    due: float
    sent: float
    answered: float
    status: int


@dataclass
class Arrivals:
    """Open-loop arrivals: body ``i`` is due at ``start + i / rate`` and sent then by a pool of
    worker threads, whether or not earlier requests were answered (``rate`` None: all at once)."""

    client: RawClient
    path: str
    workers: int = 32
    sent: dict[str, Sent] = field(default_factory=dict)

    def _post(self, name: str, body: Obj, due: float) -> None:
        sent = time.time()
        status = 201
        try:
            self.client.request("POST", self.path, body)
        except ApiError as err:
            status = err.status
            print(f"[bench] create {name}: {err}", file=sys.stderr)
        self.sent[name] = Sent(due, sent, time.time(), status)

    def run(self, bodies: list[Obj], rate: float | None) -> None:
        start = time.time() + 0.05
        with ThreadPoolExecutor(self.workers, thread_name_prefix="arrivals") as pool:
            for i, body in enumerate(bodies):
                due = start + (i / rate if rate else 0.0)
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(self._post, body["metadata"]["name"], body, due)
