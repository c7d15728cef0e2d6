"""API requests counted from the API server's audit log, cross-checked with its own metrics.

The API server's ``apiserver_request_total`` has no client label; its audit log has one event
per request (``bench/audit-policy.yaml``: level Metadata, RequestReceived omitted), naming the
user and the user agent. A client here is ``user + " " + product``, where the product is the user
agent's first word without its version (``kubectl/v1.36.3 (linux/amd64) ...`` → ``kubectl``):
versions and platforms do not split one client in two.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

AUDIT_POLICY = Path(__file__).resolve().parent / "audit-policy.yaml"


def client_of(event: dict) -> str:
    user = (event.get("user") or {}).get("username", "?")
    agent = (event.get("userAgent") or "?").split(" ", 1)[0].split("/", 1)[0]
    return f"{user} {agent}"


@dataclass
class Requests:
    """Requests in one window: totals by client, and by client and verb."""

    by_client: Counter[str] = field(default_factory=Counter)
    by_client_verb: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_client.values())

    def matching(self, *products: str) -> Requests:
        """The requests of clients whose product (user agent) is one of ``products``."""
        out = Requests()
        for (client, verb), n in self.by_client_verb.items():
            if client.rsplit(" ", 1)[-1] in products:
                out.by_client[client] += n
                out.by_client_verb[(client, verb)] += n
        return out

    def verbs(self) -> dict[str, int]:
        verbs: Counter[str] = Counter()
        for (_, verb), n in self.by_client_verb.items():
            verbs[verb] += n
        return dict(verbs.most_common())

    def per(self, jobs: int) -> dict[str, object]:
        """Requests per job: the total, and by verb and by client."""
        return {
            "total": round(self.total / jobs, 2),
            "byVerb": {v: round(n / jobs, 2) for v, n in self.verbs().items()},
            "byClient": {c: round(n / jobs, 2) for c, n in self.by_client.most_common()},
        }


class AuditLog:
    """Reads the audit log in windows: ``mark()`` starts one, ``read()`` counts the requests
    whose event was written since. A request counts once: a watch when its response starts
    (``ResponseStarted``), any other request when it completes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def read(self) -> Requests:
        out = Requests()
        if self.path.stat().st_size < self.offset:
            raise RuntimeError(f"{self.path} was rotated: the window's requests are lost")
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        # The last line may still be being written: count complete lines only.
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            event = json.loads(line)
            verb = event.get("verb", "?")
            if (event.get("stage") == "ResponseStarted") != (verb == "watch"):
                continue  # a watch's ResponseComplete (it counted when it started)
            client = client_of(event)
            out.by_client[client] += 1
            out.by_client_verb[(client, verb)] += 1
        return out

    def wait_quiet(self, products: tuple[str, ...], seconds: float, timeout: float) -> None:
        """Until the clients whose product is one of ``products`` have sent no request for
        ``seconds`` (watches and leader-election leases aside): they are done with the work the
        window called for (checks a controller makes later, such as looks at pending pods, are
        that work's). Reads from the window's start without moving it."""
        offset, last = self.offset, 0.0
        deadline = time.monotonic() + timeout
        while True:
            with self.path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            offset += end
            for line in data[:end].splitlines():
                event = json.loads(line)
                if (
                    event.get("verb") == "watch"
                    or "/leases/" in event.get("requestURI", "")
                    or client_of(event).rsplit(" ", 1)[-1] not in products
                ):
                    continue
                stamp = event.get("stageTimestamp") or event.get("requestReceivedTimestamp")
                if stamp:
                    last = max(
                        last, datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                    )
            if time.time() - last >= seconds:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{products}: still sending requests after {timeout:.0f}s")
            time.sleep(0.5)


def request_total(metrics_text: str) -> float:
    """The sum of ``apiserver_request_total`` over all its series, from /metrics text."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("apiserver_request_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
