"""A real S3-compatible HTTP server for tests (versitygw, tests/storage/s3_server.py, built by
tests/cluster/build.sh's first stage) on a free loopback port, and a bucket on it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.storage.s3_server import S3Server, server_binary, start


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """The running server while the block runs (``.endpoint``, ``.env()``)."""
    binary = server_binary(os.environ.get("KUBETUNE_CACHE"))
    with tempfile.TemporaryDirectory(prefix="kubetune-s3-") as workdir:
        server = start(binary, Path(workdir))
        try:
            yield server
        finally:
            server.stop()


def create_bucket(server: S3Server, bucket: str) -> None:
    import boto3

    env = server.env()
    boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    ).create_bucket(Bucket=bucket)
