"""The shape of the code: the trainer's layers (kubetune_trainer.LAYERS) and no import circle in
the trainer or the operator.

Every import statement is read from the source with ``ast``, wherever it stands: at module
level, inside a function, under ``if TYPE_CHECKING``. An import inside a function is still a
dependency; it only hides a circle from Python, not from this test.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubetune_trainer import LAYERS

REPO = Path(__file__).resolve().parents[2]
TRAINER = REPO / "trainer_image" / "kubetune_trainer"
OPERATOR = REPO / "operator" / "kubetune"


@dataclass(frozen=True)
class Import:
    source: str
    """The importing module."""
    target: str
    """The imported module (``from pkg import name`` is pkg.name when that is a module)."""
    where: str
    """path:line of the import statement."""


def modules_of(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (packages by __init__)."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(package_dir: Path) -> list[Import]:
    """Every import of a package's own modules, by any module of the package (paths shown
    relative to the package's parent's parent: the repository for the real packages)."""
    modules = modules_of(package_dir)
    root = package_dir.name
    found = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        where = path.relative_to(package_dir.parent.parent)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join([*base, node.module] if node.module else base)
                else:
                    stem = node.module or ""
                targets = [
                    f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem
                    for alias in node.names
                ]
            else:
                continue
            for target in targets:
                if target == root or target.startswith(root + "."):
                    found.append(Import(module, target, f"{where}:{node.lineno}"))
    return found


def circles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        if a != b:
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe_circle(component: list[str], imports: list[Import], unit=lambda m: m) -> str:
    members = set(component)
    lines = [
        f"  {i.where}: {i.source} imports {i.target}"
        for i in imports
        if unit(i.source) in members
        and unit(i.target) in members
        and unit(i.source) != unit(i.target)
    ]
    return f"circle {' <-> '.join(component)}:\n" + "\n".join(sorted(set(lines)))


def unit_of(module: str) -> str | None:
    """kubetune_trainer.<unit>...: the top-level module or package; None for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


LAYER_OF = {unit: depth for depth, layer in enumerate(LAYERS) for unit in layer}


def test_every_top_level_module_has_a_layer():
    units = {unit_of(m) for m in modules_of(TRAINER)} - {None}
    assert units == set(LAYER_OF), (
        f"not in kubetune_trainer.LAYERS: {sorted(units - set(LAYER_OF))}; "
        f"in LAYERS but gone: {sorted(set(LAYER_OF) - units)}"
    )
    assert len(units) <= 16, f"{len(units)} top-level modules and packages (at most 16)"


def upward_imports(imports: list[Import]) -> list[str]:
    """One line per import that points to a higher layer than its module's."""
    found = []
    for i in imports:
        source, target = unit_of(i.source), unit_of(i.target)
        if source is None or target is None:
            continue  # the root package (kubetune_trainer/__init__.py) holds LAYERS alone
        if LAYER_OF[target] < LAYER_OF[source]:
            found.append(
                f"{i.where}: {i.source} (layer {LAYER_OF[source]}, {source}) imports "
                f"{i.target} (layer {LAYER_OF[target]}, {target}), a higher layer"
            )
    return found


def test_trainer_imports_only_point_down_the_layers():
    problems = upward_imports(imports_of(TRAINER))
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_the_trainer_root_package_imports_nothing_of_its_own():
    assert [i for i in imports_of(TRAINER) if i.source == "kubetune_trainer"] == []


@pytest.mark.parametrize("package", [TRAINER, OPERATOR], ids=lambda p: p.name)
def test_no_import_circle_between_modules(package: Path):
    imports = imports_of(package)
    found = circles({(i.source, i.target) for i in imports})
    assert not found, "\n".join(describe_circle(c, imports) for c in found)


def test_no_import_circle_between_top_level_units_of_the_trainer():
    imports = [i for i in imports_of(TRAINER) if unit_of(i.source) and unit_of(i.target)]
    found = circles({(unit_of(i.source), unit_of(i.target)) for i in imports})
    assert not found, "\n".join(describe_circle(c, imports, unit_of) for c in found)


def test_the_checks_see_an_upward_import_inside_a_function(tmp_path):
    """The rule is checked on the real tree above; here, that it catches what it should: an
    upward import hidden in a function, and a circle closed by one."""
    package = tmp_path / "trainer_image" / "kubetune_trainer"
    (package / "reporting").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "reporting" / "__init__.py").write_text("")
    (package / "plan.py").write_text("from kubetune_trainer.reporting.progress import Record\n")
    (package / "reporting" / "progress.py").write_text(
        "class Record: ...\n\ndef f():\n    from kubetune_trainer import plan\n"
    )
    imports = imports_of(package)
    assert [line.split(": ", 1)[1] for line in upward_imports(imports)] == [
        "kubetune_trainer.reporting.progress (layer 6, reporting) imports kubetune_trainer.plan "
        "(layer 5, plan), a higher layer"
    ]
    assert circles({(i.source, i.target) for i in imports}) == [
        ["kubetune_trainer.plan", "kubetune_trainer.reporting.progress"]
    ]


def test_evaluation_package_imports_without_torch():
    """The torch-free parts of evaluation (and the plan, and the reporters) import with torch and
    the training libraries unavailable, so a torch-free service can use them."""
    code = (
        "import importlib, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'trl', 'peft', 'ray'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "for m in sys.argv[1:]:\n"
        "    importlib.import_module(m)\n"
    )
    modules = [
        "kubetune_trainer.evaluation",
        "kubetune_trainer.evaluation.measures",
        "kubetune_trainer.evaluation.gate",
        "kubetune_trainer.evaluation.judge",
        "kubetune_trainer.evaluation.sandbox",
        "kubetune_trainer.evaluation.statistics",
        "kubetune_trainer.plan",
        "kubetune_trainer.reporting.kube_status",
    ]
    done = subprocess.run(
        [sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
