"""The test budget stays true: README's per-tier table names every tier scripts/run_tiers.py
runs, in its order, with the allowance the runner holds each tier to; the allowances fit the
CI budget."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CI_BUDGET_MINUTES = 45


def run_tiers_module():
    spec = importlib.util.spec_from_file_location("run_tiers", REPO / "scripts" / "run_tiers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def readme_budget() -> dict[str, float]:
    """Tier → allowance in minutes, from the table under README's '## Tests'."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    # The table whose last column is the allowance (the section has a measured one too).
    table = section.split("| allowance |", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    budget = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        tier = cells[0].strip("`")
        allowance = re.fullmatch(r"(\d+(?:\.\d+)?) min", cells[-1])
        assert allowance, f"README's row for {tier}: allowance '{cells[-1]}' is not 'N min'"
        budget[tier] = float(allowance.group(1))
    return budget


def test_readme_holds_each_tier_with_the_runner_s_allowance() -> None:
    tiers = run_tiers_module().TIERS
    assert readme_budget() == {t.name: t.allowance_minutes for t in tiers}
    assert list(readme_budget()) == [t.name for t in tiers]


def test_the_allowances_fit_the_ci_budget() -> None:
    assert sum(readme_budget().values()) <= CI_BUDGET_MINUTES
