"""Shared fixtures of the trainer tier: its own cache, a local S3 server."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The Hub is never contacted from tests (set before huggingface_hub is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# One intra-op thread (set before torch is imported; child processes inherit it): the models
# are tiny, and on a busy 2-core machine a second thread made steps up to 20x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# Modules whose runs start local Ray clusters share one xdist group (one worker): two Ray
# clusters at once would fight over both cores and time out each other's waits.
RAY_MODULES = frozenset({"test_recipes.py", "test_distributed.py"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``pytest -n 2 --dist loadgroup`` (scripts/run_tiers.py) whole modules go to one
    worker, so a module fixture (a trained model) is built once, not once per worker."""
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group("ray" if name in RAY_MODULES else name))


@pytest.fixture(scope="session")
def kubetune_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the tier: builtin models built by one test are reused by the next."""
    return tmp_path_factory.mktemp("kubetune-cache")


@pytest.fixture(scope="module", autouse=True)
def kubetune_cache(kubetune_cache_dir: Path) -> Iterator[Path]:
    """KUBETUNE_CACHE points at the tier's cache while each trainer module runs, so nothing is
    written to $HOME; restored after the module, so later tiers see the real cache (where the
    e2e binaries and helm live)."""
    old = os.environ.get("KUBETUNE_CACHE")
    os.environ["KUBETUNE_CACHE"] = str(kubetune_cache_dir)
    yield kubetune_cache_dir
    if old is None:
        os.environ.pop("KUBETUNE_CACHE", None)
    else:
        os.environ["KUBETUNE_CACHE"] = old


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto's standalone server) on a free loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 at the local server, with throwaway credentials."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return s3_server


UploadDir = Callable[[str, str, Path], list[str]]


@pytest.fixture
def s3_upload(s3_env: str) -> UploadDir:
    """``upload(bucket, prefix, local)``: create the bucket on the local server if needed and
    upload the file or directory ``local`` under ``prefix`` (a file goes to exactly ``prefix``)."""
    return _upload


def _upload(bucket: str, prefix: str, local: Path) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    existing = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)
    if local.is_file():
        client.upload_file(str(local), bucket, prefix)
        return [prefix]
    keys = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(local).as_posix()}"
        client.upload_file(str(path), bucket, key)
        keys.append(key)
    return keys
