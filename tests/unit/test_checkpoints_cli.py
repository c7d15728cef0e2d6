"""`kubetune checkpoints list|verify JOB` on a local run: each checkpoint's state, the resume
point, hash verification and the exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.cli import main
from kubetune_trainer.training.checkpoint_fs import CheckpointStore
from tests.storage.fake_checkpoints import write_fake_checkpoint

pytestmark = pytest.mark.unit


@pytest.fixture
def run(tmp_path: Path) -> CheckpointStore:
    """Attempt 1 saved steps 10 and 20; attempt 2 resumed from 20 and saved 30; then a stale
    attempt-1 pod wrote step 40 and a writer died half way through step 50."""
    store = CheckpointStore(tmp_path / "runs" / "default" / "demo", keep_last=3)
    store.register_attempt(1)
    for step in (10, 20):
        write_fake_checkpoint(tmp_path / f"s{step}", 1, 1, step, small=True)
        store.publish(tmp_path / f"s{step}", step, 1)
    store.register_attempt(2)
    write_fake_checkpoint(tmp_path / "s30", 1, 2, 30, small=True)
    store.publish(tmp_path / "s30", 30, 2)
    stale = CheckpointStore(store.run_dir, keep_last=3)
    stale.check_attempt = lambda attempt: None  # a pod that missed the news
    write_fake_checkpoint(tmp_path / "s40", 1, 1, 40, small=True)
    stale.publish(tmp_path / "s40", 40, 1)
    (store.checkpoints_dir / ".incoming-step-00000050-a2-0123abcd").mkdir()
    return store


def lines_of(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in output.splitlines() if line.startswith(("step", "."))}


def test_list_shows_states_and_the_resume_point(
    run: CheckpointStore, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["checkpoints", "list", "demo", "--storage", str(run.run_dir.parents[1])])
    out = capsys.readouterr().out
    assert code == 0
    rows = lines_of(out)
    assert "attempts recorded: 1, 2" in out
    assert set(rows) == {
        "step-00000020-a2",
        "step-00000030-a2",
        "step-00000040-a1",
        ".incoming-step-00000050-a2-0123abcd",
    }
    assert " complete " in rows["step-00000020-a2"] and "copy of step-00000020-a1" in rows[
        "step-00000020-a2"]  # fmt: skip
    assert " complete " in rows["step-00000030-a2"] and "resume point" in rows["step-00000030-a2"]
    assert " stale attempt " in rows["step-00000040-a1"]
    assert "resume point" not in rows["step-00000040-a1"]  # a higher step, never chosen
    assert " incoming " in rows[".incoming-step-00000050-a2-0123abcd"]


def test_verify_finds_a_corrupt_file_and_fails(
    run: CheckpointStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["checkpoints", "verify", str(run.run_dir)]) == 0
    rows = lines_of(capsys.readouterr().out)
    assert [name for name, line in rows.items() if "  ok" in line] == [
        "step-00000020-a2",
        "step-00000030-a2",
        "step-00000040-a1",
    ]
    damaged = run.checkpoints_dir / "step-00000030-a2" / "model.safetensors"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size
    damaged.write_bytes(bytes(data))
    assert main(["checkpoints", "verify", str(run.run_dir)]) == 1
    out = capsys.readouterr().out
    rows = lines_of(out)
    assert (
        " corrupt " in rows["step-00000030-a2"] and "resume point" not in rows["step-00000030-a2"]
    )
    assert "resume point" in rows["step-00000020-a2"]  # the newest that verifies
    assert "model.safetensors: SHA-256 differs from the manifest" in out


def test_no_run_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["checkpoints", "list", "nope", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"kubetune checkpoints: no run at {tmp_path}/default/nope"
