"""A real S3-compatible server for tests: versitygw (Versity S3 Gateway) serving a temporary
directory through its POSIX backend, on a free loopback port.

The binary is built from its Go module by ``tests/cluster/build.sh`` (the ``s3`` stage, cached
by version; ``KUBETUNE_S3_SERVER_BIN`` points at another one). Why versitygw and not SeaweedFS
or MinIO: tests/cluster/README.md, "S3 server".
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tests" / "cluster" / "build.sh"
ACCESS_KEY = "kubetune-test"
SECRET_KEY = "kubetune-test-secret"
REGION = "us-east-1"


class ServerUnavailable(RuntimeError):
    pass


def server_binary(cache: str | None) -> Path:
    """$KUBETUNE_S3_SERVER_BIN, else where build.sh puts it under the kubetune cache ``cache``."""
    override = os.environ.get("KUBETUNE_S3_SERVER_BIN")
    if override:
        return Path(override)
    env = dict(os.environ)
    if cache is None:
        env.pop("KUBETUNE_CACHE", None)
    else:
        env["KUBETUNE_CACHE"] = cache
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "s3-bin"], env=env, check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    process: subprocess.Popen[bytes]
    endpoint: str
    data_dir: Path
    log_path: Path

    def env(self) -> dict[str, str]:
        """What boto3, pyarrow and Ray need to reach it."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start(binary: Path, workdir: Path, timeout: float = 30.0) -> S3Server:
    """Start the server on 127.0.0.1 with its data under ``workdir``; ready when it answers."""
    if not os.access(binary, os.X_OK):
        raise ServerUnavailable(
            f"S3 server binary not built ({binary} missing): run tests/cluster/build.sh"
        )
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "versitygw.log"
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(os.environ) | {"ROOT_ACCESS_KEY": ACCESS_KEY, "ROOT_SECRET_KEY": SECRET_KEY}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(binary), "--port", f"127.0.0.1:{port}", "--region", REGION, "posix", str(data)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = S3Server(process, endpoint, data, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerUnavailable(
                f"S3 server exited with {process.returncode}: {log_path.read_text()[-2000:]}"
            )
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return server
        except urllib.error.HTTPError:
            return server  # it answers (403 without a signature)
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise ServerUnavailable(f"S3 server did not answer on {endpoint} within {timeout:.0f}s")
