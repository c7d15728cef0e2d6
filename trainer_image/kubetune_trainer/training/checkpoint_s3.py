"""Checkpoints of one run on S3 or an S3-compatible server (AWS_ENDPOINT_URL).

Object stores have no rename: a checkpoint is complete when its manifest object, uploaded
after every file, exists and every file it lists exists with its size; its hashes are verified
when it is downloaded to resume from. Keys under the run prefix (docs/checkpoints.md)::

    attempts/<N>                              attempt N's record
    checkpoints/step-00000120-a3/<files>      the trainer's files
    checkpoints/step-00000120-a3/kubetune.json   the manifest, uploaded last
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune_trainer.training.checkpoints import (
    MANIFEST,
    Checkpoint,
    CheckpointError,
    FileEntry,
    Hook,
    Listed,
    StaleAttempt,
    checkpoint_name,
    hash_problems,
    lineage_attempt,
    manifest_json,
    no_hook,
    own_leftovers,
    parse_manifest,
    parse_name,
    record_json,
    resume_candidates,
    sha256_file,
    size_problems,
    to_prune,
)
from kubetune_trainer.uris import file_lock, s3_client, split_s3

log = logging.getLogger("kubetune.trainer")

_VERIFIED = ".kubetune-verified"


class _HookedReader:
    """A file object that calls the hook before each read: kill points inside uploads."""

    def __init__(self, handle: Any, hook: Hook) -> None:
        self._handle = handle
        self._hook = hook

    def read(self, size: int = -1) -> bytes:
        self._hook("upload-bytes")
        return self._handle.read(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


class S3CheckpointStore:
    """The run's checkpoints under ``s3://bucket/prefix`` (the run's prefix). Local copies for
    resuming go to ``cache_dir`` (node-local; shared by the ranks of a node)."""

    def __init__(
        self,
        uri: str,
        keep_last: int = 2,
        *,
        cache_dir: Path | None = None,
        hook: Hook = no_hook,
        client: Any = None,
    ) -> None:
        self.uri = uri.rstrip("/")
        self.bucket, self.prefix = split_s3(self.uri)
        self.keep_last = keep_last
        self.hook = hook
        self.client = client or s3_client()
        safe = self.prefix.replace("/", "_") or "_"
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "kubetune-resume" / safe

    @property
    def location(self) -> str:
        return self.uri

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _list(self, prefix: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            found.extend(page.get("Contents", []))
        return found

    # ------------------------------------------------------------------------- attempts

    def recorded_attempts(self) -> list[int]:
        base = self._key("attempts") + "/"
        names = (obj["Key"][len(base) :] for obj in self._list(base))
        return sorted(int(n) for n in names if n.isdigit())

    def latest_attempt(self) -> int:
        return lineage_attempt(self.recorded_attempts()) or 0

    def check_attempt(self, attempt: int) -> None:
        """Stops a stale writer early (exit 76). Safety does not depend on it."""
        newest = self.latest_attempt()
        if newest > attempt:
            raise StaleAttempt(
                f"attempt {attempt} is stale: attempt {newest} of this run has started; "
                "not writing checkpoints"
            )

    def register_attempt(self, attempt: int) -> Checkpoint | None:
        """Start ``attempt`` (see CheckpointStore.register_attempt). The base is downloaded and
        verified into the cache on the way, so local_copy() of the result is at hand."""
        self.check_attempt(attempt)
        if attempt in self.recorded_attempts():
            for leftover in own_leftovers(self.listing(), attempt):
                self._delete(leftover)
            self._abort_uploads(lambda a: a == attempt)
            return self.newest_verified(attempt)
        base = self.newest_verified(self.latest_attempt())
        adopted = self._adopt(base, attempt) if base is not None else None
        self.hook("before-record")
        self.client.put_object(
            Bucket=self.bucket,
            Key=self._key("attempts", str(attempt)),
            Body=record_json(attempt, adopted.name if adopted else None),
        )
        self.hook("record-durable")
        self.prune(attempt)
        return adopted

    def _adopt(self, base: Checkpoint, attempt: int) -> Checkpoint:
        """Server-side copies of the base's files under the attempt's name, manifest last."""
        if base.attempt == attempt:
            return base
        name = checkpoint_name(base.step, attempt)
        existing = self._read(name)
        if existing is None:
            for rel in sorted(base.files):
                source = {"Bucket": self.bucket, "Key": self._key("checkpoints", base.name, rel)}
                self.client.copy(source, self.bucket, self._key("checkpoints", name, rel))
                self.hook("adopt-file")
            manifest = manifest_json(base.step, attempt, base.files, adopted_from=base.name)
            self.client.put_object(
                Bucket=self.bucket, Key=self._key("checkpoints", name, MANIFEST), Body=manifest
            )
            self.hook("adopt-manifest-durable")
        adopted = self._read(name)
        if adopted is None:
            raise CheckpointError(f"{self.uri}/checkpoints/{name}: unreadable after adoption")
        self._share_local_copy(base, adopted)
        return adopted

    # ------------------------------------------------------------------------- writing

    def publish(self, source: Path, step: int, attempt: int, *, move: bool = True) -> Checkpoint:
        """Upload the trainer's checkpoint directory as (step, attempt), manifest last."""
        self.check_attempt(attempt)
        name = checkpoint_name(step, attempt)
        existing = self._read(name)
        if existing is not None:
            # The same attempt saved this step before; its objects are never overwritten.
            log.info("event=checkpoint_exists name=%s action=keep-existing", name)
            checkpoint = existing
        else:
            files: dict[str, FileEntry] = {}
            paths = sorted(p for p in source.rglob("*") if p.is_file() and p.name != MANIFEST)
            for path in paths:
                rel = path.relative_to(source).as_posix()
                files[rel] = FileEntry(path.stat().st_size, sha256_file(path))
                with path.open("rb") as handle:
                    self.client.upload_fileobj(
                        _HookedReader(handle, self.hook),
                        self.bucket,
                        self._key("checkpoints", name, rel),
                    )
                self.hook("file-uploaded")
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key("checkpoints", name, MANIFEST),
                Body=manifest_json(step, attempt, files),
            )
            self.hook("durable")
            checkpoint = self._read(name)
            if checkpoint is None:
                raise CheckpointError(f"{self.uri}/checkpoints/{name}: unreadable after upload")
        if move:
            shutil.rmtree(source, ignore_errors=True)
        self.prune(attempt)
        self.check_attempt(attempt)
        return checkpoint

    def prune(self, attempt: int) -> None:
        for entry in to_prune(self.listing(), attempt, self.keep_last):
            self._delete(entry)
        self._abort_uploads(lambda a: a < attempt)

    def _delete(self, entry: Listed) -> None:
        """Manifest first: a checkpoint being deleted is never complete."""
        prefix = self._key("checkpoints", entry.name) + "/"
        self.client.delete_object(Bucket=self.bucket, Key=prefix + MANIFEST)
        self.hook("delete-manifest")
        keys = [obj["Key"] for obj in self._list(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
            self.hook("delete-file")

    def _abort_uploads(self, doomed: Callable[[int], bool]) -> None:
        """Multipart uploads left by dead writers: invisible, but they hold storage."""
        prefix = self._key("checkpoints") + "/"
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                name = upload["Key"][len(prefix) :].split("/", 1)[0]
                parsed = parse_name(name)
                if parsed is not None and doomed(parsed[1]):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    self.hook("upload-aborted")

    # ------------------------------------------------------------------------- reading

    def listing(self) -> list[Listed]:
        """Every checkpoint name under checkpoints/, with sizes checked (no hashing)."""
        prefix = self._key("checkpoints") + "/"
        sizes: dict[str, dict[str, int]] = {}
        for obj in self._list(prefix):
            name, _, rel = obj["Key"][len(prefix) :].partition("/")
            if parse_name(name) is not None and rel:
                sizes.setdefault(name, {})[rel] = int(obj["Size"])
        found = []
        for name, files in sizes.items():
            step, attempt = parse_name(name) or (0, 0)
            checkpoint = self._read(name) if MANIFEST in files else None
            if checkpoint is None:
                found.append(Listed(name, step, attempt, None, ["no manifest"]))
            else:
                found.append(
                    Listed(name, step, attempt, checkpoint, size_problems(checkpoint, files))
                )
        return sorted(found, key=lambda e: (e.step, e.attempt, e.name))

    def _read(self, name: str) -> Checkpoint | None:
        from botocore.exceptions import ClientError

        key = self._key("checkpoints", name, MANIFEST)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        try:
            return parse_manifest(
                name, f"s3://{self.bucket}/{self._key('checkpoints', name)}", body
            )
        except ValueError:
            return None

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint of the lineage (sizes checked, not hashes)."""
        candidates = resume_candidates(self.listing(), self.latest_attempt() or None)
        return candidates[0] if candidates else None

    def complete(self) -> list[Checkpoint]:
        return resume_candidates(self.listing(), self.latest_attempt() or None)[::-1]

    def newest_verified(self, attempt: int) -> Checkpoint | None:
        """The newest checkpoint of ``attempt`` that downloads with every hash right."""
        for candidate in resume_candidates(self.listing(), attempt or None):
            try:
                self.local_copy(candidate)
                return candidate
            except CheckpointError as err:
                log.warning(
                    "event=checkpoint_corrupt name=%s problems=%s action=try-older",
                    candidate.name,
                    err,
                )
        return None

    def checkpoint(self, name: str) -> Checkpoint:
        found = self._read(name)
        if found is None:
            raise CheckpointError(f"{self.uri}/checkpoints/{name}: no manifest")
        return found

    def verify(self, checkpoint: Checkpoint) -> list[str]:
        """Download into a scratch directory and hash every file."""
        with tempfile.TemporaryDirectory(prefix="kubetune-verify-") as scratch:
            return self._download(checkpoint, Path(scratch))

    def local_copy(self, checkpoint: Checkpoint) -> Path:
        """A verified node-local copy (downloaded once per node; the ranks share it)."""
        target = self.cache_dir / checkpoint.name
        with file_lock(self.cache_dir / f".{checkpoint.name}.lock"):
            if (target / _VERIFIED).exists():
                return target
            shutil.rmtree(target, ignore_errors=True)
            problems = self._download(checkpoint, target)
            if problems:
                shutil.rmtree(target, ignore_errors=True)
                raise CheckpointError(f"{checkpoint.name}: {'; '.join(problems)}")
            (target / _VERIFIED).touch()
        return target

    def _download(self, checkpoint: Checkpoint, target: Path) -> list[str]:
        from botocore.exceptions import ClientError

        for rel in sorted(checkpoint.files):
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            key = self._key("checkpoints", checkpoint.name, rel)
            try:
                self.client.download_file(self.bucket, key, str(path))
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                    raise
        return hash_problems(checkpoint, target)

    def _share_local_copy(self, base: Checkpoint, adopted: Checkpoint) -> None:
        """The adopted checkpoint has the base's bytes: reuse its verified local copy."""
        source, target = self.cache_dir / base.name, self.cache_dir / adopted.name
        if (source / _VERIFIED).exists() and not target.exists():
            os.replace(source, target)
