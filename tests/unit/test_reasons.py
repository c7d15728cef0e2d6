"""The reasons table (kubetune.reasons): the only place in the operator that spells a condition
or event reason, every reason in it used, and docs/conditions.md printed from it."""

from __future__ import annotations

import ast
import subprocess
import sys
from enum import StrEnum
from pathlib import Path

from kubetune.reasons import ConditionType, KubernetesReason, Reason, markdown

REPO = Path(__file__).resolve().parents[2]
OPERATOR = REPO / "operator" / "kubetune"
TABLE = OPERATOR / "reasons.py"
REASONS = {r.value for r in Reason} | {r.value for r in KubernetesReason}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for first in body:
                # docstrings: of modules, classes and functions, and those after fields
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    found.add(id(first.value))
    return found


def _enum_bodies(tree: ast.AST) -> set[int]:
    """Constants inside the body of an enum class (api.Phase's values are phases)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
            isinstance(b, ast.Name) and b.id.endswith("Enum") for b in node.bases
        ):
            found |= {id(n) for n in ast.walk(node) if isinstance(n, ast.Constant)}
    return found


def reason_literals(package: Path) -> list[str]:
    """path:line: 'Reason' for every string literal spelling a reason outside the table (paths
    relative to the package's parent's parent: the repository for the operator)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path == TABLE:
            continue
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree) | _enum_bodies(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in REASONS
                and id(node) not in skip
            ):
                where = path.relative_to(package.parent.parent)
                found.append(f"{where}:{node.lineno}: {node.value!r}")
    return found


def test_no_reason_is_spelled_outside_the_table():
    found = reason_literals(OPERATOR)
    assert not found, "use kubetune.reasons.Reason instead of:\n" + "\n".join(found)


def test_the_check_finds_a_bare_reason(tmp_path):
    package = tmp_path / "operator" / "pkg"
    package.mkdir(parents=True)
    (package / "m.py").write_text(
        '"""Mentions Resumed in a docstring."""\n'
        "def f(p):\n"
        '    p.event("Resumed", "attempt 2 launched")\n'
    )
    found = [line.split(": ", 1)[1] for line in reason_literals(package)]
    assert found == ["'Resumed'"]


def _used_members(enum: type[StrEnum]) -> set[str]:
    used = set()
    for path in OPERATOR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == enum.__name__
            ):
                used.add(node.attr)
    return used


def test_every_reason_in_the_table_is_used():
    for enum in (Reason, ConditionType, KubernetesReason):
        unused = {m.name for m in enum} - _used_members(enum)
        assert not unused, f"{enum.__name__} members nothing uses: {sorted(unused)}"


def test_docs_show_the_table():
    printed = subprocess.run(
        [sys.executable, "-m", "kubetune.reasons"], capture_output=True, text=True, check=True
    ).stdout
    assert printed == markdown()
    docs = (REPO / "docs" / "conditions.md").read_text()
    assert printed in docs, "docs/conditions.md is stale: paste `python -m kubetune.reasons`"
