"""The CRD is generated from the pydantic models, structural, documented and up to date."""

from __future__ import annotations

from typing import Any

import yaml

from kubetune.crd import CRD_PATH, crd, render


def walk(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from walk(prop, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def version_schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_the_models() -> None:
    assert CRD_PATH.read_text() == render(), "crds/ is stale: run `make crd`"


def test_committed_crd_parses_to_the_generated_object() -> None:
    assert yaml.safe_load(CRD_PATH.read_text()) == crd()


def test_schema_is_structural() -> None:
    for path, node in walk(version_schema()):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "$defs", "title", "default"} & set(node), (
            path
        )
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
            raise AssertionError(f"{path}: exclusiveMinimum must be a boolean in OpenAPI v3")


def test_every_spec_and_status_field_is_documented() -> None:
    schema = version_schema()
    for section in ("spec", "status"):
        for path, node in walk(schema["properties"][section], section):
            if path == section or path.endswith("{}") or path.endswith("[]"):
                continue
            assert node.get("description", "").strip(), f"{path} has no description"


def test_defaults_are_described_not_applied() -> None:
    lr = version_schema()["properties"]["spec"]["properties"]["training"]["properties"][
        "learningRate"
    ]
    assert "default" not in lr
    assert lr["description"].endswith("Default: 2e-05.")


def test_names_columns_and_subresources() -> None:
    spec = crd()["spec"]
    assert spec["names"]["shortNames"] == ["ftj"]
    assert spec["group"] == "kubetune.io" and spec["scope"] == "Namespaced"
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:4] == ["Method", "Phase", "Progress", "Loss"] and columns[-1] == "Age"


def test_cross_field_rules_are_enforced_by_cel() -> None:
    spec_rules = version_schema()["properties"]["spec"]["x-kubernetes-validations"]
    messages = " | ".join(r["message"] for r in spec_rules)
    for expected in (
        "method ppo needs at least one reward",
        "method grpo needs at least one reward",
        "qlora needs GPUs",
        "spec.dpo is only allowed when method is dpo",
        "spec.data is required",
    ):
        assert expected in messages
    root_rules = version_schema()["x-kubernetes-validations"]
    immutable = [r for r in root_rules if "cannot change once the job has started" in r["message"]]
    assert {r["fieldPath"] for r in immutable} >= {".spec.method", ".spec.model", ".spec.data"}
    assert all("oldSelf" in r["rule"] for r in immutable)
