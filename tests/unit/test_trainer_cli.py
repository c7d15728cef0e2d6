"""kubetune-train refuses what it cannot run before loading anything, with the documented
exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kubetune.api import FineTuneJob
from kubetune.planner import make_plan
from kubetune_trainer.exit_codes import EXIT_INVALID_PLAN


def kubetune_train(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kubetune_trainer.cli", *args]
    return subprocess.run(command, capture_output=True, text=True)


def test_unreadable_plan(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text('{"version": "kubetune.io/plan/v1", "job": {}}')
    result = kubetune_train("--plan", str(path))
    assert result.returncode == EXIT_INVALID_PLAN
    assert f"invalid plan {path}" in result.stderr


def test_check_accepts_a_valid_plan(tmp_path: Path, job) -> None:
    path = tmp_path / "plan.json"
    path.write_text(make_plan(FineTuneJob.model_validate(job), attempt=2).to_json())
    result = kubetune_train("--plan", str(path), "--check")
    assert result.returncode == 0
    assert "plan for team-a/demo (sft, attempt 2) is valid" in result.stdout
