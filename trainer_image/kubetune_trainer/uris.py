"""Where kubetune URIs live on this machine: the cache, PVC mounts, local paths and S3 downloads.

Shared by model and data loading. Nothing here imports torch.

- ``file`` (a bare path or ``file://PATH``): the path itself.
- ``pvc://CLAIM/PATH``: the claim is mounted at ``$KUBETUNE_PVC_ROOT/CLAIM`` (default ``/mnt/pvc``).
- ``s3://BUCKET/PREFIX``: the objects under the prefix are downloaded with boto3 into
  ``$KUBETUNE_CACHE/s3/BUCKET/PREFIX``; ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) points
  at an S3-compatible server, credentials come from the usual AWS environment and files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from kubetune_trainer.plan import uri_scheme

log = logging.getLogger(__name__)

DEFAULT_PVC_ROOT = "/mnt/pvc"
_ETAGS = ".kubetune-s3-etags.json"


class SourceError(Exception):
    """A model or data location that cannot be resolved or fetched."""


def cache_root() -> Path:
    """kubetune's cache directory: ``$KUBETUNE_CACHE``, default ``~/.cache/kubetune``."""
    configured = os.environ.get("KUBETUNE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "kubetune"


def uri_rest(uri: str) -> str:
    """The part of a URI after ``scheme://`` (the whole string for a bare path)."""
    return uri.split("://", 1)[1] if "://" in uri else uri


def is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hf_offline() -> bool:
    """Whether the Hub must not be contacted, read now (huggingface_hub reads it at import)."""
    return is_true(os.environ.get("HF_HUB_OFFLINE")) or is_true(
        os.environ.get("TRANSFORMERS_OFFLINE")
    )


def hf_cache_dir() -> str | None:
    """``HF_HUB_CACHE`` read now, for the same reason as :func:`hf_offline`."""
    return os.environ.get("HF_HUB_CACHE") or None


def local_path(uri: str) -> Path:
    """The path of a ``file`` URI (a bare path or ``file://PATH``)."""
    return Path(uri_rest(uri)).expanduser()


def pvc_path(uri: str) -> Path:
    """``pvc://CLAIM/PATH`` as a path under the claim's mount."""
    rest = uri_rest(uri).strip("/")
    claim, _, inner = rest.partition("/")
    if not claim:
        raise SourceError(f"'{uri}' names no claim")
    root = Path(os.environ.get("KUBETUNE_PVC_ROOT") or DEFAULT_PVC_ROOT)
    mount = root / claim
    if not mount.is_dir():
        raise SourceError(
            f"'{uri}': claim '{claim}' is not mounted at {mount} (set KUBETUNE_PVC_ROOT)"
        )
    return mount / inner if inner else mount


def local_storage(uri: str) -> Path | None:
    """The filesystem path of a storage URI (a local path or a mounted ``pvc://`` claim), or
    None for remote (``s3://``) storage."""
    scheme = uri_scheme(uri)
    if scheme == "pvc":
        return pvc_path(uri)
    if scheme == "file":
        return local_path(uri).resolve()
    return None


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` as (bucket, prefix without a leading slash)."""
    bucket, _, prefix = uri_rest(uri).partition("/")
    if not bucket:
        raise SourceError(f"'{uri}' names no bucket")
    return bucket, prefix.strip("/")


def s3_client():
    """A boto3 S3 client that honours ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``."""
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint or None)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing), released on exit.

    Several processes on one node (Ray workers, ranks) may resolve the same source at once;
    the lock makes one of them fetch or build while the others wait and then reuse the result.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _safe_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text) or "_"


def s3_cache_dir(uri: str) -> Path:
    bucket, prefix = split_s3(uri)
    parts = [_safe_part(p) for p in prefix.split("/") if p]
    return cache_root().joinpath("s3", _safe_part(bucket), *parts)


def upload_dir(local: Path, uri: str) -> list[str]:
    """Upload every file under ``local`` to ``s3://BUCKET/PREFIX/<relative path>``; the keys.

    Used for the final model of a run whose storage is S3 (checkpoints go through Ray's
    storage). Files are uploaded in sorted order with the marker-free layout fetch_s3 reads."""
    bucket, prefix = split_s3(uri)
    client = s3_client()
    keys = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = "/".join(filter(None, [prefix, path.relative_to(local).as_posix()]))
        client.upload_file(str(path), bucket, key)
        keys.append(key)
    log.info("event=uploaded files=%d uri=%s", len(keys), uri)
    return keys


def fetch_s3(uri: str) -> Path:
    """Download ``s3://BUCKET/PREFIX`` into the cache and return the local path.

    A prefix naming exactly one object (``s3://b/data/train.jsonl``) comes back as that file;
    otherwise every object under ``PREFIX/`` is mirrored into a directory. Objects whose ETag
    and size match the previous download are not fetched again.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(uri)
    dest = s3_cache_dir(uri)
    client = s3_client()
    try:
        objects = _list_objects(client, bucket, prefix)
    except (BotoCoreError, ClientError) as exc:
        raise SourceError(f"'{uri}': cannot list objects: {exc}") from exc
    single = [o for o in objects if o["Key"] == prefix]
    if single and prefix:
        target = dest
        with file_lock(dest.parent / f".{dest.name}.lock"):
            _download(client, bucket, single[0], target, dest.parent / f".{dest.name}.etags")
        return target
    inner = [o for o in objects if o["Key"].startswith(f"{prefix}/" if prefix else "")]
    inner = [o for o in inner if not o["Key"].endswith("/")]
    if not inner:
        raise SourceError(f"'{uri}': no objects under this prefix")
    with file_lock(dest.parent / f".{dest.name}.lock"):
        dest.mkdir(parents=True, exist_ok=True)
        for obj in inner:
            relative = obj["Key"][len(prefix) :].lstrip("/") if prefix else obj["Key"]
            target = dest / relative
            if ".." in Path(relative).parts:
                raise SourceError(f"'{uri}': refusing object key {obj['Key']!r}")
            _download(client, bucket, obj, target, dest / _ETAGS)
    log.info("event=s3_fetched uri=%s objects=%d path=%s", uri, len(inner), dest)
    return dest


def _list_objects(client, bucket: str, prefix: str) -> list[dict]:
    paginator = client.get_paginator("list_objects_v2")
    found: list[dict] = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        found.extend(page.get("Contents", []))
    return found


def _download(client, bucket: str, obj: dict, target: Path, etag_file: Path) -> None:
    etags: dict[str, str] = {}
    if etag_file.is_file():
        with contextlib.suppress(ValueError):
            etags = json.loads(etag_file.read_text())
    key = obj["Key"]
    stamp = f"{obj.get('ETag', '')}:{obj.get('Size', -1)}"
    if target.is_file() and etags.get(key) == stamp:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    client.download_file(bucket, key, str(partial))
    os.replace(partial, target)
    etags[key] = stamp
    etag_file.write_text(json.dumps(etags, sort_keys=True))


def content_hash(*parts: str | bytes) -> str:
    """A short stable hash of the given parts (cache keys)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:16]


def scheme(uri: str) -> str:
    """The URI's scheme, with ``file://`` and bare paths both ``file``."""
    return uri_scheme(uri)
