"""Run untrusted generated code (pass@k) in a child process that cannot hurt the evaluator.

Each program runs in its own fresh temporary directory, as ``python -I`` (isolated mode: no
user site, no ``PYTHON*`` variables, no script directory on ``sys.path``) with a minimal
environment, in a new session so the whole process group can be killed. A trusted launcher,
started first, sets the limits and then runs the program:

- CPU time: ``RLIMIT_CPU`` (the kernel sends SIGXCPU, then SIGKILL);
- memory: ``RLIMIT_AS`` (allocations fail: MemoryError, or death by signal);
- output: ``RLIMIT_FSIZE`` on the files stdout and stderr go to, so a program printing forever
  cannot fill the disk or the evaluator's memory;
- wall clock: the parent kills the process group when the timeout passes (sleeping or blocked
  programs use no CPU time, so RLIMIT_CPU alone would not stop them);
- network: where unprivileged user namespaces are available, the program runs under
  ``unshare --net --map-root-user`` in a network namespace with no interfaces but a down
  loopback. Always (with or without the namespace) the launcher installs an audit hook
  (:pep:`578`) that refuses socket creation and connection, process spawning (``subprocess``,
  ``os.system``, ``os.exec*``, ``os.fork``, ``os.posix_spawn``) and loading native libraries
  through ``ctypes``; an audit hook cannot be removed once installed. The hook alone does not
  stop native code that an already-importable extension module runs; the namespace does.

A program passes when it exits with status 0. Anything else (an assertion failing, a limit
hit, a refused operation, a crash) is a failure, with its reason in :class:`SandboxResult`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["passed", "failed", "timeout", "cpu_limit", "memory_limit", "blocked", "killed"]

OUTPUT_LIMIT_BYTES = 1 << 20
"""Largest stdout/stderr file a program may write."""
TAIL_CHARS = 2000
BLOCKED_MARKER = "kubetune-sandbox: blocked"

# Runs inside the child before the program: limits, then the audit hook, then the program.
# argv: launcher.py PROGRAM CPU_SECONDS MEMORY_BYTES OUTPUT_BYTES
_LAUNCHER = f'''
import resource, runpy, sys

program, cpu, memory, output = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (output, output))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

_BLOCKED = (
    "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
    "subprocess.Popen", "os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn",
    "os.spawn", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym",
)

def _refuse(event, args):
    if event in _BLOCKED:
        sys.stderr.write("{BLOCKED_MARKER} " + event + "\\n")
        sys.stderr.flush()
        raise PermissionError("{BLOCKED_MARKER}: " + event)

sys.addaudithook(_refuse)
del resource
sys.argv = [program]
runpy.run_path(program, run_name="__main__")
'''


@dataclass(frozen=True)
class SandboxLimits:
    timeout_seconds: float = 10.0
    """Wall-clock limit; the CPU-time limit is the same number of seconds, rounded up."""
    memory_mb: int = 512
    """Address-space limit of the program."""


@dataclass
class SandboxResult:
    status: Status
    returncode: int | None
    seconds: float
    stdout: str
    stderr: str
    """The last few thousand characters of each stream."""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.cache
def network_namespace_available() -> bool:
    """Whether ``unshare --net --map-root-user`` works here (it needs unprivileged user
    namespaces, or root)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        probe = subprocess.run(
            [unshare, "--net", "--map-root-user", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def network_isolation() -> str:
    """How programs are kept off the network here: ``netns+audit-hook`` or ``audit-hook``."""
    return "netns+audit-hook" if network_namespace_available() else "audit-hook"


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-TAIL_CHARS:].decode("utf-8", errors="replace")


def _classify(returncode: int, stderr: str, timed_out: bool) -> Status:
    if timed_out:
        return "timeout"
    if returncode == 0:
        return "passed"
    if BLOCKED_MARKER in stderr:
        return "blocked"
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL) and "MemoryError" not in stderr:
        # SIGKILL without a wall timeout comes from the kernel: the hard CPU limit, or the
        # OOM killer; SIGXCPU is the soft CPU limit.
        return "cpu_limit" if returncode == -signal.SIGXCPU else "killed"
    if "MemoryError" in stderr or returncode == -signal.SIGSEGV:
        return "memory_limit"
    return "failed"


def run_program(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``source`` (a whole Python program) in the sandbox and report how it ended."""
    limits = limits or SandboxLimits()
    cpu_seconds = max(1, math.ceil(limits.timeout_seconds))
    memory_bytes = limits.memory_mb * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="kubetune-sandbox-") as workdir:
        work = Path(workdir)
        (work / "launcher.py").write_text(_LAUNCHER)
        (work / "program.py").write_text(source)
        command = [
            sys.executable,
            "-I",
            "launcher.py",
            "program.py",
            str(cpu_seconds),
            str(memory_bytes),
            str(OUTPUT_LIMIT_BYTES),
        ]
        if network_namespace_available():
            command = ["unshare", "--net", "--map-root-user", *command]
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": workdir,
            "TMPDIR": workdir,
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        started = time.monotonic()
        with open(work / "stdout", "wb") as out, open(work / "stderr", "wb") as err:
            child = subprocess.Popen(
                command,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
            timed_out = False
            try:
                child.wait(timeout=limits.timeout_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # Kill the whole session: the program's own children too.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        seconds = time.monotonic() - started
        stdout, stderr = _tail(work / "stdout"), _tail(work / "stderr")
    returncode = child.returncode
    return SandboxResult(
        status=_classify(returncode, stderr, timed_out),
        returncode=None if timed_out else returncode,
        seconds=seconds,
        stdout=stdout,
        stderr=stderr,
    )


def run_programs(
    sources: Sequence[str], limits: SandboxLimits | None = None, *, parallel: int | None = None
) -> list[SandboxResult]:
    """Run several programs, ``parallel`` at a time (default: the CPUs this process may use)."""
    workers = parallel or max(1, len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda source: run_program(source, limits), sources))
