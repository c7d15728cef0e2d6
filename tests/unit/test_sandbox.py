"""The pass@k sandbox: a correct program passes; loops, memory bombs, network access and
process spawning are stopped and count as failures; the evaluator's environment stays out."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from kubetune_trainer.evaluation.sandbox import (
    SandboxLimits,
    network_isolation,
    run_program,
    run_programs,
)

LIMITS = SandboxLimits(timeout_seconds=3, memory_mb=256)


def test_a_correct_program_passes() -> None:
    result = run_program(
        "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('ok')\n", LIMITS
    )
    assert result.status == "passed", result.stderr
    assert result.passed
    assert result.stdout.strip() == "ok"


def test_a_failing_assertion_fails() -> None:
    result = run_program("assert 1 + 1 == 3, 'wrong sum'\n", LIMITS)
    assert result.status == "failed"
    assert not result.passed
    assert "wrong sum" in result.stderr


def test_an_infinite_loop_is_killed() -> None:
    result = run_program("while True:\n    pass\n", SandboxLimits(timeout_seconds=2))
    assert result.status in ("timeout", "cpu_limit")
    assert not result.passed


def test_a_sleeping_program_is_killed_at_the_wall_clock_limit() -> None:
    # Sleeping uses no CPU time: only the wall-clock limit stops it.
    result = run_program("import time\ntime.sleep(60)\n", SandboxLimits(timeout_seconds=1))
    assert result.status == "timeout"
    assert result.returncode is None


def test_a_memory_bomb_is_stopped() -> None:
    result = run_program(
        "blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024 * 1024))\n", LIMITS
    )
    assert result.status in ("memory_limit", "killed")
    assert not result.passed


@pytest.fixture
def listener() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP server on the evaluator's loopback that records every connection it accepts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_a_program_cannot_reach_the_network(listener: tuple[int, list[socket.socket]]) -> None:
    port, accepted = listener
    # The program itself succeeds (exit 0) only if it reached the evaluator's port.
    program = (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "s.sendall(b'leak')\n"
    )
    result = run_program(program, LIMITS)
    assert not result.passed
    assert result.status in ("blocked", "failed")
    assert accepted == []


def test_the_same_connection_works_outside_the_sandbox(
    listener: tuple[int, list[socket.socket]],
) -> None:
    """Control for the test above: the listener does accept connections."""
    port, accepted = listener
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    for _ in range(50):
        if accepted:
            break
        threading.Event().wait(0.05)
    assert len(accepted) == 1


def test_spawning_processes_is_refused() -> None:
    result = run_program("import os\nos.system('echo escaped')\n", LIMITS)
    assert result.status == "blocked"
    assert "escaped" not in result.stdout


def test_programs_run_in_a_fresh_directory_with_a_minimal_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBETUNE_TEST_SECRET", "s3cret")
    program = (
        "import os\n"
        "assert 'KUBETUNE_TEST_SECRET' not in os.environ, 'environment leaked'\n"
        "assert sorted(os.listdir('.')) == ['launcher.py', 'program.py', 'stderr', 'stdout'],"
        " os.listdir('.')\n"
        "open('scratch.txt', 'w').write('x')\n"
        "print(os.getcwd())\n"
    )
    first, second = run_programs([program, program], LIMITS, parallel=2)
    assert first.passed, first.stderr
    assert second.passed, second.stderr
    assert first.stdout != second.stdout  # each run had its own directory


def test_output_flood_is_cut_off() -> None:
    result = run_program("while True:\n    print('x' * 10000)\n", LIMITS)
    assert not result.passed
    assert len(result.stdout) <= 2000


def test_network_isolation_is_reported() -> None:
    assert network_isolation() in ("netns+audit-hook", "audit-hook")


@pytest.mark.skipif(
    network_isolation() != "netns+audit-hook", reason="no unprivileged network namespaces here"
)
def test_programs_run_in_an_empty_network_namespace() -> None:
    """Beneath the audit hook: the only interface a program sees is a down loopback."""
    program = (
        "lines = open('/proc/self/net/dev').read().splitlines()[2:]\n"
        "print(sorted(line.split(':')[0].strip() for line in lines))\n"
    )
    result = run_program(program, LIMITS)
    assert result.passed, result.stderr
    assert result.stdout.strip() == "['lo']"
