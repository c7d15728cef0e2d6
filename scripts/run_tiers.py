"""Runs the test suite tier by tier, each under its time allowance, and prints what each took.

Called by scripts/test.sh after set-up, with the control-plane build already started in the
background. The build is waited for *between* tiers (before the tier that needs it), never
inside a test's timeout, and is watched while the other tiers run: when it fails, the run
stops within seconds with the step that failed and the tail of its log.

Usage: run_tiers.py [--tiers lint,unit,...] [pytest args...]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "tests" / "cluster" / "build.sh"
PYTHON = str(REPO / ".venv" / "bin" / "python")
WATCH_SECONDS = 5.0
NO_TESTS_COLLECTED = 5  # pytest's exit code when a selection is empty


@dataclass(frozen=True)
class Tier:
    name: str
    allowance_minutes: float
    """What the tier may take on the 2-core reference machine, cold; README's budget table."""
    commands: tuple[tuple[str, ...], ...] = ()
    marker: str | None = None
    """A pytest tier: the marker it selects."""
    pytest_options: tuple[str, ...] = ()
    needs_build: str | None = None
    """The build stage the tier waits for first: 's3' (the S3 server), 'tools' (helm,
    kubeconform) or 'all'."""


TIERS: tuple[Tier, ...] = (
    Tier(
        "lint",
        1,
        commands=(
            (str(REPO / ".venv/bin/ruff"), "format", "--check", "."),
            (str(REPO / ".venv/bin/ruff"), "check", "."),
            (PYTHON, "-m", "kubetune.crd", "--check"),
        ),
    ),
    Tier("unit", 3, marker="unit and not helm"),
    # Two xdist workers, whole modules (and all Ray runs) to one worker (tests/conftest.py's
    # scheduler): tiny models train on one thread each, so two workers use both cores once the
    # background build is done.
    Tier(
        "trainer",
        28,
        marker="trainer",
        pytest_options=("-n", "2", "--dist", "loadscope", "--no-loadscope-reorder"),
        needs_build="s3",
    ),
    # PostgreSQL and Chromium come from Debian's packages, installed by the tier's fixtures
    # when missing (scripts/install-postgres.sh, install-browser.sh): a cold CI machine pays
    # about a minute of apt-get inside this allowance.
    Tier("studio", 4, marker="studio", needs_build="s3"),  # snapshots on the S3 server
    Tier("chart", 1, marker="helm", needs_build="tools"),
    Tier("e2e", 8, marker="e2e", needs_build="all"),
)


@dataclass
class Outcome:
    tier: str
    seconds: float = 0.0
    waited: float = 0.0
    status: str = "not run"
    slowest: list[tuple[float, str]] = field(default_factory=list)


class BuildFailed(Exception):
    pass


def build_status() -> str:
    out = subprocess.run(["bash", str(BUILD), "status"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def wait_for_build(stage: str) -> None:
    """Blocks until the stage is built; build.sh names the failed step and prints its log."""
    if subprocess.run(["bash", str(BUILD), "--wait", stage]).returncode != 0:
        raise BuildFailed(f"the background build (stage {stage}) failed; see above")


def run_watched(command: list[str], env: dict[str, str], watch_build: bool) -> int:
    """Runs one command in its own process group; stops it when the background build fails."""
    proc = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
    try:
        while True:
            try:
                return proc.wait(timeout=WATCH_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            if watch_build and build_status().startswith("failed"):
                _stop(proc)
                subprocess.run(["bash", str(BUILD), "--wait"])  # prints the step and log tail
                raise BuildFailed("the control-plane build failed while tests ran")
    except KeyboardInterrupt:
        _stop(proc)
        raise


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


def slowest_tests(junit: Path, count: int = 8) -> list[tuple[float, str]]:
    if not junit.exists():
        return []
    cases = ET.parse(junit).getroot().iter("testcase")
    timed = [
        (float(c.get("time") or 0.0), f"{c.get('classname', '')}::{c.get('name', '')}")
        for c in cases
    ]
    return sorted(timed, reverse=True)[:count]


def run_tier(tier: Tier, pytest_args: list[str], scratch: Path, watch_build: bool) -> Outcome:
    outcome = Outcome(tier.name)
    env = dict(os.environ)
    if tier.needs_build:
        started = time.monotonic()
        print(f"== {tier.name}: waiting for the build (stage {tier.needs_build})", flush=True)
        wait_for_build(tier.needs_build)
        outcome.waited = time.monotonic() - started
    print(f"== {tier.name}", flush=True)
    started = time.monotonic()
    if tier.marker is None:
        codes = [run_watched(list(c), env, watch_build) for c in tier.commands]
        code = next((c for c in codes if c != 0), 0)
    else:
        junit = scratch / f"{tier.name}.xml"
        command = [
            PYTHON,
            "-m",
            "pytest",
            "-m",
            tier.marker,
            f"--junitxml={junit}",
            "--durations=10",
            *tier.pytest_options,
            *pytest_args,
        ]
        code = run_watched(command, env, watch_build)
        if code == NO_TESTS_COLLECTED and pytest_args:
            code = 0  # a -k/-m selection of the caller's left this tier empty
        outcome.slowest = slowest_tests(junit)
    outcome.seconds = time.monotonic() - started
    outcome.status = "passed" if code == 0 else f"FAILED (exit {code})"
    return outcome


def report(outcomes: list[Outcome], total: float) -> None:
    print("\n== time per tier (allowance: README, 'Tests')")
    print(f"{'TIER':<9} {'STATUS':<16} {'WALL':>8} {'BUILD WAIT':>11} {'ALLOWANCE':>10}")
    allowance = {t.name: t.allowance_minutes for t in TIERS}
    for o in outcomes:
        over = "  over allowance" if o.seconds > 60 * allowance[o.tier] else ""
        print(
            f"{o.tier:<9} {o.status:<16} {_mmss(o.seconds):>8} {_mmss(o.waited):>11} "
            f"{allowance[o.tier]:>8.0f} m{over}"
        )
    print(f"{'total':<9} {'':<16} {_mmss(total):>8}")
    slow = sorted((s for o in outcomes for s in o.slowest), reverse=True)[:12]
    if slow:
        print("\n== slowest tests")
        for seconds, name in slow:
            print(f"{seconds:8.1f}s  {name}")


def _mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiers", default=",".join(t.name for t in TIERS))
    args, pytest_args = parser.parse_known_args(argv)
    wanted = args.tiers.split(",")
    unknown = set(wanted) - {t.name for t in TIERS}
    if unknown:
        parser.error(f"unknown tier(s): {', '.join(sorted(unknown))}")
    tiers = [t for t in TIERS if t.name in wanted]
    watch_build = any(t.needs_build for t in tiers)
    outcomes: list[Outcome] = []
    started = time.monotonic()
    code = 0
    with tempfile.TemporaryDirectory(prefix="kubetune-tiers-") as scratch:
        try:
            for tier in tiers:
                outcome = run_tier(tier, pytest_args, Path(scratch), watch_build)
                outcomes.append(outcome)
                if outcome.status != "passed":
                    code = 1
        except BuildFailed as err:
            print(f"\nerror: {err}", file=sys.stderr)
            code = 1
        report(outcomes, time.monotonic() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
