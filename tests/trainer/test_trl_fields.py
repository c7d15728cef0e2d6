"""The TRL config snapshot the operator validates trlArgs against matches the installed TRL."""

from __future__ import annotations

import pytest

from kubetune_trainer.trl_fields import load_snapshot, snapshot_from_trl

pytestmark = pytest.mark.trainer


def test_snapshot_matches_installed_trl() -> None:
    assert snapshot_from_trl() == load_snapshot(), (
        "trl_fields.json is stale: run `python -m kubetune_trainer.trl_fields`"
    )
