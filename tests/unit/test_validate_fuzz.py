"""`kubetune validate` never crashes: random YAML text, random bytes and random mutations of the
shipped examples each give "valid" or problem lines and exit 1, never a traceback, within a
deadline; hostile files (alias bombs, deep nesting, huge files) are refused in bounded time and
memory."""

from __future__ import annotations

import contextlib
import io
import random
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.cli import main
from kubetune.manifest_yaml import MAX_FILE_BYTES
from tests.manifest_mutations import dump, example_documents, mutate

FUZZ = settings(
    max_examples=300,
    deadline=2000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

YAML_TOKENS = [
    "apiVersion: kubetune.io/v1alpha1\n", "kind: FineTuneJob\n", "metadata:\n", "  name: x\n",
    "spec:\n", "  method: sft\n", "  model: {source: builtin://tiny-llama}\n", "---\n",
    "...\n", "- ", ": ", ":", "\n", "  ", "\t", "{", "}", "[", "]", ",", '"', "'", "&a ", "*a",
    "&b [*a, *a]", "<<: *a\n", "!!int ", "!!binary ", "!!python/object:os.system ", "!custom ",
    "? ", "|\n", ">-\n", "#", "%YAML 1.1\n", "1e-4", "y", "~", "null", ".inf", "0x1F",
    "2024-01-01", "\x00", "\ufeff",
]  # fmt: skip


def validate_text(data: bytes) -> tuple[int, str]:
    """Exit code and output of `kubetune validate` on a file holding data."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.yaml"
        path.write_bytes(data)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(["validate", str(path)])
    return code, out.getvalue()


def assert_handled(code: int, output: str) -> None:
    assert "Traceback" not in output, output
    assert code in (0, 1), (code, output)
    if code == 1:
        assert output.splitlines()[-1].endswith("problem(s) in 1 file(s)"), output


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(YAML_TOKENS), st.text(max_size=8)), max_size=40))
def test_random_yaml_never_crashes(parts: list[str]) -> None:
    assert_handled(*validate_text("".join(parts).encode("utf-8", "surrogatepass")))


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    assert_handled(*validate_text(data))


EXAMPLE_DOCUMENTS = example_documents()


@FUZZ
@given(st.sampled_from(EXAMPLE_DOCUMENTS), st.randoms(use_true_random=False), st.integers(1, 3))
def test_mutated_examples_never_crash(doc: dict, rng: random.Random, changes: int) -> None:
    for _ in range(changes):
        doc = mutate(doc, rng)
    assert_handled(*validate_text(dump(doc).encode()))


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "first_line"),
    [
        (billion_laughs(), "job.yaml:1: aliases expand the document beyond 100000 values"),
        ("a: &a [*a]\n", "job.yaml:1: nested deeper than 50 levels once aliases are followed"),
        ("[" * 10_000 + "]" * 10_000, "job.yaml:1: nested deeper than 50 levels"),
        ("a: " + "x" * (MAX_FILE_BYTES + 1), "job.yaml: larger than 3 MiB; not read"),
    ],
    ids=["billion-laughs", "self-alias", "deep-nesting", "too-large"],
)
def test_hostile_files_are_refused_in_bounded_memory(text: str, first_line: str) -> None:
    tracemalloc.start()
    try:
        code, output = validate_text(text.encode())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 1 and "Traceback" not in output
    assert output.splitlines()[0].endswith(first_line.removeprefix("job.yaml")), output
    assert peak < 64 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB"
