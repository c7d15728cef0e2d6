"""``studio://HOST[:PORT]/CAMPAIGN[@VERSION]``: a preference snapshot served by kubetune's
feedback studio, read as a local directory.

The snapshot's manifest comes first (``GET /api/campaigns/CAMPAIGN/snapshots/VERSION/
manifest.json``; VERSION a number or ``latest``, the default), then its ``train.jsonl``, whose
SHA-256 must match the manifest's. Both land in ``$KUBETUNE_CACHE/studio/HOST/CAMPAIGN/vN``
(data first, manifest last), and a complete copy is used again without a download. The
request carries ``Authorization: Bearer $KUBETUNE_STUDIO_TOKEN`` when that is set (a
FineTuneJob sets it through ``envSecrets``); the studio serves snapshots to admins only.
Plain HTTP: the studio is reached inside the cluster, through its Service.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kubetune_trainer.plan import STUDIO_URI
from kubetune_trainer.uris import SourceError, cache_root, file_lock

log = logging.getLogger(__name__)

TOKEN_ENV = "KUBETUNE_STUDIO_TOKEN"
DATA_FILE = "train.jsonl"
MANIFEST = "manifest.json"
TIMEOUT = 60.0


@dataclass(frozen=True)
class StudioSnapshot:
    host: str
    campaign: str
    version: str
    """A version number, or ``latest``."""

    def url(self, version: str, name: str) -> str:
        return f"http://{self.host}/api/campaigns/{self.campaign}/snapshots/{version}/{name}"


def parse(uri: str) -> StudioSnapshot:
    match = re.fullmatch(STUDIO_URI, uri)
    if match is None:
        raise SourceError(f"'{uri}': expected studio://HOST[:PORT]/CAMPAIGN[@VERSION]")
    return StudioSnapshot(match["host"], match["campaign"], match["version"] or "latest")


def fetch(uri: str) -> Path:
    """The snapshot's directory in the cache (downloaded when not there yet)."""
    snapshot = parse(uri)
    manifest_bytes = _get(snapshot.url(snapshot.version, MANIFEST), uri)
    try:
        manifest = json.loads(manifest_bytes)
        version = int(manifest["snapshot"])
        expected = manifest["files"][DATA_FILE]["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"'{uri}': the studio's manifest is not a snapshot manifest") from exc
    safe_host = re.sub(r"[^A-Za-z0-9.-]", "_", snapshot.host)
    target = cache_root() / "studio" / safe_host / snapshot.campaign / f"v{version}"
    with file_lock(target.parent / f".v{version}.lock"):
        data_path = target / DATA_FILE
        if (target / MANIFEST).is_file() and _sha256(data_path) == expected:
            return target
        data = _get(snapshot.url(str(version), DATA_FILE), uri)
        if hashlib.sha256(data).hexdigest() != expected:
            raise SourceError(f"'{uri}': {DATA_FILE} does not match the manifest's sha256")
        target.mkdir(parents=True, exist_ok=True)
        _write(data_path, data)
        _write(target / MANIFEST, manifest_bytes)
    rows = manifest["files"][DATA_FILE].get("rows")
    log.info("event=studio_snapshot uri=%s version=%d rows=%s path=%s", uri, version, rows, target)
    return target


def _get(url: str, uri: str) -> bytes:
    request = urllib.request.Request(url)
    token = os.environ.get(TOKEN_ENV)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
            return reply.read()
    except urllib.error.HTTPError as exc:
        detail = _error_of(exc)
        hint = f" (set {TOKEN_ENV})" if exc.code == 401 and not token else ""
        raise SourceError(f"'{uri}': the studio answered {exc.code}: {detail}{hint}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"'{uri}': cannot reach the studio at {url}: {reason}") from exc


def _error_of(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["error"])
    except (ValueError, KeyError, TypeError, OSError):
        return exc.reason


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _write(path: Path, content: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(content)
    os.replace(partial, path)
