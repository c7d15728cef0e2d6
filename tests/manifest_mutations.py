"""Random mutations of the shipped FineTuneJob examples, for fuzzing `kubetune validate`.

One mutation changes one thing a person (or a hostile one) might change: a value replaced by one
of another type or shape, a key deleted, a key misspelt, kind or apiVersion changed. Shared by
the unit tier (Hypothesis draws the ``random.Random``) and the e2e tier (a seeded sample checked
against the API server's own verdict).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import yaml

from kubetune.manifest_yaml import ManifestDumper, ManifestLoader

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "manifests" / "examples"

REPLACEMENTS: list[Any] = [
    "1e-4", "10", "true", "y", "", " ", "x" * 300, "ünïcödé ✓", "s3:///no-bucket",
    "hf://org/name; rm -rf /", "hf://a/b/c", "pvc://", "builtin://nope", "finetunejob://Bad_Name",
    "http:///v1", 0, -1, 1, 7, 2**31, 2**63, 2.0, 0.5, -0.5, 1e-4, 1e308, True, False, None,
    [], [1], ["a"], {}, {"a": 1}, {"source": "builtin://tiny-llama"},
]  # fmt: skip
"""Values a mutation may put in place of another."""

KINDS = ["Job", "FineTuneJobb", "ConfigMap", "finetunejob", ""]
API_VERSIONS = ["kubetune.io/v1", "batch/v1", "v1", "kubetune.io/v1alpha2"]


def example_documents() -> list[dict[str, Any]]:
    """Every document of manifests/examples, read as kubectl reads YAML."""
    docs = []
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        docs += [d for d in yaml.load_all(path.read_text(), Loader=ManifestLoader) if d]
    return docs


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in node."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


def _misspell(key: str, rng: random.Random) -> str:
    if len(key) < 2:
        return key + "x"
    i = rng.randrange(len(key))
    return rng.choice([key[:i] + key[i + 1 :], key[:i] + key[i] + key[i:], key + "s"])


def mutate(doc: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A copy of doc with one random change: under spec, to metadata.name, to kind or to
    apiVersion (never to metadata.namespace: the e2e tier sends each to its own namespace)."""
    doc = copy.deepcopy(doc)
    roll = rng.random()
    if roll < 0.05:
        doc["kind"] = rng.choice(KINDS)
        return doc
    if roll < 0.1:
        doc["apiVersion"] = rng.choice(API_VERSIONS)
        return doc
    paths = [p for p in _paths(doc) if p[0] == "spec" or p == ("metadata", "name")]
    if not paths:
        doc["kind"] = rng.choice(KINDS)
        return doc
    path = rng.choice(paths)
    parent, last = _parent(doc, path), path[-1]
    action = rng.random()
    if action < 0.65:
        parent[last] = copy.deepcopy(rng.choice(REPLACEMENTS))
    elif action < 0.8 and isinstance(parent, dict):
        del parent[last]
    elif isinstance(parent, dict):
        parent[_misspell(str(last), rng)] = parent.pop(last)
    else:
        parent.append(copy.deepcopy(parent[last]))
    return doc


def dump(doc: dict[str, Any]) -> str:
    """YAML that kubectl and kubetune read back as doc."""
    return yaml.dump(doc, Dumper=ManifestDumper, sort_keys=False, allow_unicode=True)
