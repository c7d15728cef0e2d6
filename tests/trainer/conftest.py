"""Shared fixtures of the trainer tier: its own cache, a real S3 server on loopback."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.storage.s3_server import S3Server, ServerUnavailable, server_binary
from tests.storage.s3_server import start as start_s3_server

# The Hub is never contacted from tests (set before huggingface_hub is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# One intra-op thread (set before torch is imported; child processes inherit it): the models
# are tiny, and on a busy 2-core machine a second thread made steps up to 20x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# Every test that starts a local Ray cluster runs on one xdist worker (two Ray clusters at once
# fight over both cores and time out each other's waits); any other module runs whole on one
# worker, so its module fixtures (trained models) are built once. tests/conftest.py's scheduler
# reads these groups.
RAY_TESTS = (
    "tests/trainer/test_distributed.py::",
    "tests/trainer/test_ray_s3_resume.py::",
    # both modes share the module's uninterrupted reference run
    "tests/trainer/test_recipes.py::test_ctrl_c_saves_and_the_same_command_resumes_exactly",
)
# The groups that take longest start first, so neither worker is left with a long one at the
# end (measured: scripts/run_tiers.py prints the slowest tests).
FIRST = ("ray", "tests/trainer/test_sweep_local.py", "tests/trainer/test_recipes.py")


def test_group(nodeid: str) -> str:
    """The xdist work unit of a trainer-tier test: 'ray', or its module."""
    if nodeid.startswith(RAY_TESTS):
        return "ray"
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest groups first (stable otherwise): every worker collects the same order."""

    def rank(item: pytest.Item) -> int:
        group = test_group(item.nodeid)
        return FIRST.index(group) if group in FIRST else len(FIRST)

    items.sort(key=rank)


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


@pytest.fixture(scope="session", autouse=True)
def real_kubetune_cache() -> str | None:
    """KUBETUNE_CACHE as the session found it (the module fixture above points it elsewhere),
    where the build keeps the S3 server."""
    return os.environ.get("KUBETUNE_CACHE")


@pytest.fixture(scope="session")
def s3_server(
    real_kubetune_cache: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Server]:
    """A real S3-compatible server (versitygw, tests/storage/s3_server.py) on a free loopback
    port, for the whole session."""
    try:
        binary = server_binary(real_kubetune_cache)
        server = start_s3_server(binary, tmp_path_factory.mktemp("s3-server"))
    except ServerUnavailable as err:
        if os.environ.get("KUBETUNE_REQUIRE_E2E") == "1":
            pytest.fail(f"{err} [KUBETUNE_REQUIRE_E2E=1]", pytrace=False)
        pytest.skip(str(err))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3, pyarrow and Ray at the local server, with its credentials."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return s3_server.endpoint


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
