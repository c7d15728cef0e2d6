"""Suite-wide rules. With KUBETUNE_NO_SKIPS=1 (CI) a skipped test fails the run: every test
must run on the CI machine, so a skip there means a missing part, not an optional one. Under
``-n 2 --dist loadscope`` (the trainer tier) tests are sent to workers by group."""

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


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadscope`` with the trainer tier's groups (tests.trainer.conftest.test_group)
    as scopes. pytest-xdist's own ``loadgroup`` does nothing under pytest 9: it renames node ids
    through an attribute pytest 9 no longer reads, so every group was split across workers."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    from tests.trainer.conftest import test_group

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return test_group(nodeid)

    return GroupScheduling(config, log)
