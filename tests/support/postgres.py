"""A throwaway PostgreSQL server for tests: Debian's packages, a fresh cluster in a temp dir.

``PostgresServer.start()`` installs the server when missing (``scripts/install-postgres.sh``),
runs ``initdb`` into a new temporary directory as an unprivileged user (``initdb`` refuses root:
as root the cluster belongs to the ``postgres`` system user and every server command runs as it
through ``runuser``), starts it on a free loopback port with its socket in the same directory,
and ``stop()`` stops it and removes everything. Nothing listens beyond 127.0.0.1.

Use one server per test session and a database per test (``create_database``), which costs a
few milliseconds where a new server costs seconds.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "scripts" / "install-postgres.sh"
SYSTEM_USER = "postgres"
SUPERUSER = "postgres"
START_ATTEMPTS = 3


class PostgresUnavailable(RuntimeError):
    """The server could not be installed or started."""


def bin_dir() -> Path:
    """Where initdb/pg_ctl live, installing PostgreSQL first when missing."""
    out = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True)
    if out.returncode != 0:
        raise PostgresUnavailable(out.stderr.strip() or f"{INSTALL_SCRIPT} failed")
    for line in out.stdout.splitlines():
        if line.startswith("bindir="):
            return Path(line.split("=", 1)[1])
    raise PostgresUnavailable(f"{INSTALL_SCRIPT} printed no bindir")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """One running cluster. ``url(database)`` is a SQLAlchemy URL for psycopg 3."""

    bindir: Path = field(default_factory=bin_dir)
    root: Path | None = None
    port: int = 0
    _run_as: list[str] = field(default_factory=list)

    def start(self) -> PostgresServer:
        self.root = Path(tempfile.mkdtemp(prefix="kubetune-pg-"))
        if os.geteuid() == 0:
            # The cluster belongs to an unprivileged user that must reach the directory.
            account = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._run_as = ["runuser", "-u", SYSTEM_USER, "--"]
        data = self.root / "data"
        self._run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        last_error = ""
        for _ in range(START_ATTEMPTS):  # another process may take the free port first
            self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            out = self._run(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(self.root / "server.log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                check=False,
            )
            if out.returncode == 0:
                return self
            last_error = self.log_tail()
        self.stop()
        raise PostgresUnavailable(f"PostgreSQL did not start: {last_error}")

    def stop(self) -> None:
        if self.root is None:
            return
        data = self.root / "data"
        if (data / "postmaster.pid").exists():
            self._run(
                [str(self.bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                check=False,
            )
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement in autocommit mode (CREATE/DROP DATABASE cannot run in a
        transaction)."""
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(sql)

    def create_database(self, template: str | None = None) -> str:
        """A new empty database (or a copy of ``template``); its name."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        suffix = f' TEMPLATE "{template}"' if template else ""
        self.execute(f'CREATE DATABASE "{name}"{suffix}')
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log_tail(self, lines: int = 20) -> str:
        if self.root is None or not (self.root / "server.log").exists():
            return ""
        return "\n".join((self.root / "server.log").read_text().splitlines()[-lines:])

    def _run(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*self._run_as, *command], capture_output=True, text=True)
        if check and out.returncode != 0:
            raise PostgresUnavailable(f"{Path(command[0]).name} failed: {out.stderr.strip()}")
        return out


@contextlib.contextmanager
def running_postgres():
    """A started server, stopped and removed on exit."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()
