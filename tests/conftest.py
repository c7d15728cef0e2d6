"""Suite-wide rules. With KUBETUNE_NO_SKIPS=1 (CI) a skipped test fails the run: every test
must run on the CI machine, so a skip there means a missing part, not an optional one."""

from __future__ import annotations

import os

import pytest

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("KUBETUNE_NO_SKIPS") == "1" and _skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int) -> None:
    if os.environ.get("KUBETUNE_NO_SKIPS") == "1" and _skipped:
        terminalreporter.write_sep("=", f"{len(_skipped)} skipped test(s) fail this run", red=True)
        for nodeid in _skipped:
            terminalreporter.write_line(f"skipped: {nodeid}")
