"""The FineTuneJob and FineTuneSweep CustomResourceDefinitions, generated from the pydantic models.

pydantic emits JSON Schema 2020-12; a CRD needs a structural OpenAPI v3 schema: no $ref, no
anyOf for optionals, exclusive bounds as booleans, free-form maps marked
x-kubernetes-preserve-unknown-fields. Cross-field rules the API server can enforce are added as
CEL (x-kubernetes-validations) so a bad spec is refused at `kubectl apply`. Run
``python -m kubetune.crd`` to rewrite crds/finetunejob.yaml and crds/finetunesweep.yaml.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from kubetune.api import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    FineTuneJobSpec,
    FineTuneJobStatus,
)
from kubetune.sweep_api import (
    SWEEP_KIND,
    SWEEP_NAME_MAX,
    SWEEP_PLURAL,
    SWEEP_SHORT_NAMES,
    SWEEP_SINGULAR,
    FineTuneSweepSpec,
    FineTuneSweepStatus,
    TrialState,
)

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "finetunejob.yaml"
SWEEP_CRD_PATH = CRD_PATH.with_name("finetunesweep.yaml")

# Keys of JSON Schema that carry over to a CRD schema unchanged.
_KEPT = {
    "type",
    "description",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "required",
}

# Sections whose content may not change once the job has started: changing them would make the
# checkpoints the job resumes from belong to a different training run.
IMMUTABLE_ONCE_STARTED = (
    "method", "model", "data", "training", "peft", "deepspeed",
    "dpo", "reward", "ppo", "grpo",
)  # fmt: skip

METHOD_SECTIONS = ("dpo", "reward", "ppo", "grpo")


def _rule(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def spec_rules() -> list[dict[str, str]]:
    """CEL rules on spec mirroring RecipeSpec/FineTuneJobSpec cross-field validation."""
    rules = [
        _rule(
            f"!has(self.{section}) || self.method == '{section}'",
            f"spec.{section} is only allowed when method is {section}",
            f".{section}",
        )
        for section in METHOD_SECTIONS
    ]
    rules += [
        _rule(
            "!has(self.eval) || self.method == 'eval' || "
            "(has(self.export) && has(self.export.gate))",
            "spec.eval is only allowed when method is eval or spec.export.gate is set",
            ".eval",
        ),
        _rule(
            "self.method == 'eval' || has(self.data)",
            "spec.data is required for every method except eval",
            ".data",
        ),
        _rule(
            "self.method != 'eval' || (has(self.eval) && size(self.eval.metrics) > 0)",
            "method eval needs at least one metric in spec.eval.metrics",
            ".eval",
        ),
    ]
    for method in ("ppo", "grpo"):
        rules.append(
            _rule(
                f"self.method != '{method}' || "
                f"(has(self.{method}) && has(self.{method}.rewards) "
                f"&& size(self.{method}.rewards) > 0)",
                f"method {method} needs at least one reward in spec.{method}.rewards",
                f".{method}",
            )
        )
    for alias in ("curriculum", "scoreConditioning"):
        rules.append(
            _rule(
                f"!has(self.training) || !has(self.training.{alias}) || self.method == 'sft'",
                f"spec.training.{alias} applies to method sft",
                f".training.{alias}",
            )
        )
    rules += [
        _rule(
            "!has(self.training) || !has(self.training.contrastive) || "
            "self.method == 'sft' || self.method == 'dpo'",
            "spec.training.contrastive applies to methods sft and dpo",
            ".training.contrastive",
        ),
        _rule(
            "!has(self.training) || !has(self.training.contrastive) || "
            "!has(self.training.contrastive.negatives) || "
            "self.training.contrastive.negatives != 'pair' || self.method == 'dpo'",
            "spec.training.contrastive.negatives pair needs a rejected response (method dpo)",
            ".training.contrastive.negatives",
        ),
    ]
    rules.append(
        _rule(
            "!has(self.selfCritique) || self.method == 'sft'",
            "spec.selfCritique applies to method sft",
            ".selfCritique",
        )
    )
    rules.append(
        _rule(
            "!has(self.model.conversationFormat) || self.model.conversationFormat == 'standard' "
            "|| !has(self.model.chatTemplate)",
            "a conversationFormat other than standard brings its own template; remove chatTemplate",
            ".model.chatTemplate",
        )
    )
    rules.append(
        _rule(
            "!has(self.peft) || !has(self.peft.type) || self.peft.type != 'qlora' || "
            "!has(self.resources) || !has(self.resources.gpusPerNode) || "
            "self.resources.gpusPerNode > 0",
            "peft.type qlora needs GPUs (resources.gpusPerNode > 0)",
            ".peft.type",
        )
    )
    return rules


def root_rules() -> list[dict[str, str]]:
    started = (
        "!has(oldSelf.status) || !has(oldSelf.status.phase) || "
        "oldSelf.status.phase in ['Pending', 'WaitingForDependencies']"
    )
    rules = [
        _rule(
            "size(self.metadata.name) <= 49",
            "metadata.name must be at most 49 characters (child object names derive from it)",
        )
    ]
    for section in IMMUTABLE_ONCE_STARTED:
        same = (
            f"(has(self.spec.{section}) == has(oldSelf.spec.{section}) && "
            f"(!has(self.spec.{section}) || self.spec.{section} == oldSelf.spec.{section}))"
        )
        rules.append(
            _rule(
                f"{started} || {same}",
                f"spec.{section} cannot change once the job has started",
                f".spec.{section}",
            )
        )
    return rules


def reward_source_rules() -> list[dict[str, str]]:
    return [
        _rule("self.type != 'model' || has(self.model)", "a model reward needs 'model'"),
        _rule(
            "self.type != 'length' || has(self.targetLength)",
            "a length reward needs 'targetLength'",
        ),
        _rule("self.type != 'regex' || has(self.pattern)", "a regex reward needs 'pattern'"),
    ]


def curriculum_rules() -> list[dict[str, str]]:
    return [
        _rule(
            "self.difficulty != 'column' || has(self.column)",
            "difficulty column needs the column to read",
        ),
        _rule(
            "self.difficulty == 'column' || !has(self.column)",
            "only difficulty column reads a column",
        ),
        _rule(
            "self.difficulty == 'referenceLoss' || !has(self.referenceModel)",
            "only difficulty referenceLoss uses a model",
        ),
    ]


def to_structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One JSON Schema node as a structural CRD schema node."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return to_structural(merged, defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a CRD schema: {schema}")
        merged = {**options[0], **{k: v for k, v in schema.items() if k != "anyOf"}}
        return to_structural(merged, defs)
    out: dict[str, Any] = {k: v for k, v in schema.items() if k in _KEPT}
    if "description" in out:
        out["description"] = " ".join(out["description"].split())
    if "const" in schema:
        out["enum"] = [schema["const"]]
    if "enum" in out and "type" not in out:
        out["type"] = _type_of(out["enum"][0])
    for key, base in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if key in schema:
            out[base] = schema[key]
            out[key] = True
    if "default" in schema and not isinstance(schema["default"], dict | list):
        description = out.get("description", "")
        if "Default:" not in description and schema["default"] is not None:
            out["description"] = f"{description} Default: {json.dumps(schema['default'])}.".strip()
    kind = out.get("type")
    if kind == "object" or "properties" in schema or "additionalProperties" in schema:
        out["type"] = "object"
        if "properties" in schema:
            out["properties"] = {
                name: to_structural(prop, defs) for name, prop in schema["properties"].items()
            }
            if schema.get("title") == "RewardSource":
                out["x-kubernetes-validations"] = reward_source_rules()
            if schema.get("title") == "CurriculumSpec":
                out["x-kubernetes-validations"] = curriculum_rules()
        extra = schema.get("additionalProperties")
        if "patternProperties" in schema:
            # dict with constrained keys: one value schema, the key pattern as a CEL rule.
            ((pattern, extra),) = schema["patternProperties"].items()
            out["x-kubernetes-validations"] = [
                _rule(f"self.all(k, k.matches('{pattern}'))", f"keys must match {pattern}")
            ]
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = to_structural(extra, defs)
        elif extra is True or ("properties" not in schema and extra is None):
            out["x-kubernetes-preserve-unknown-fields"] = True
    if kind == "array":
        out["items"] = to_structural(schema["items"], defs)
    if "type" not in out:
        # An unconstrained value (Any): keep whatever the user wrote.
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return "number" if isinstance(value, float) else "string"


def _schema_of(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return to_structural(raw, raw.get("$defs", {}))


def crd() -> dict[str, Any]:
    spec = _schema_of(FineTuneJobSpec)
    spec["x-kubernetes-validations"] = spec_rules()
    status = _schema_of(FineTuneJobStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["kubetune", "all"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Method", "type": "string", "jsonPath": ".spec.method"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {
                            "name": "Progress",
                            "type": "string",
                            "jsonPath": ".status.progress.percent",
                        },
                        {"name": "Loss", "type": "string", "jsonPath": ".status.progress.loss"},
                        {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt"},
                        {
                            # Empty while the pods run as they should; else who says why not.
                            "name": "Pods",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="PodsReady")].reason',
                        },
                        {
                            "name": "Export",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Exported")].reason',
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                f"A {KIND} ({API_VERSION}) fine-tunes, aligns or evaluates a "
                                "language model on the cluster: kubetune runs it as a resumable "
                                "distributed Ray Train job and exports verified artifacts."
                            ),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                            "x-kubernetes-validations": root_rules(),
                        }
                    },
                }
            ],
        },
    }


# --------------------------------------------------------------------------- FineTuneSweep

# What a sweep's study is made from: changing it once trials ran would mix two searches.
SWEEP_IMMUTABLE_ONCE_STARTED = ("template", "parameters", "objectives", "algorithm", "pruner")


def sweep_parameter_rules() -> list[dict[str, str]]:
    """CEL rules on one search-space parameter, mirroring SweepParameter's validation. Not
    "a categorical parameter needs values": ``values`` holds strings, numbers or booleans, a
    schema CEL cannot type, so the API server refuses any rule that names it (the operator's
    InvalidSpec condition and ``kubetune validate`` report it)."""
    return [
        _rule(
            "self.type == 'categorical' || (has(self.min) && has(self.max) && self.min < self.max)",
            "a float or int parameter needs min below max",
        ),
        _rule(
            "!has(self.log) || !self.log || (has(self.min) && self.min > 0.0)",
            "a log-scale parameter needs min above 0",
            ".min",
        ),
    ]


def sweep_spec_rules() -> list[dict[str, str]]:
    cmaes = "has(self.algorithm) && has(self.algorithm.name) && self.algorithm.name == 'cmaes'"
    return [
        _rule(
            f"!({cmaes}) || self.parameters.all(p, p.type != 'categorical')",
            "algorithm cmaes samples float and int parameters only",
            ".parameters",
        ),
        _rule(
            f"!({cmaes}) || size(self.objectives) == 1",
            "algorithm cmaes optimises one objective",
            ".objectives",
        ),
    ]


def sweep_root_rules() -> list[dict[str, str]]:
    started = (
        "!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase == 'Pending'"
    )
    rules = [
        _rule(
            f"size(self.metadata.name) <= {SWEEP_NAME_MAX}",
            f"metadata.name must be at most {SWEEP_NAME_MAX} characters (trial names derive "
            "from it)",
        )
    ]
    for field in SWEEP_IMMUTABLE_ONCE_STARTED:
        same = (
            f"(has(self.spec.{field}) == has(oldSelf.spec.{field}) && "
            f"(!has(self.spec.{field}) || self.spec.{field} == oldSelf.spec.{field}))"
        )
        rules.append(
            _rule(
                f"{started} || {same}",
                f"spec.{field} cannot change once the sweep has started",
                f".spec.{field}",
            )
        )
    return rules


def sweep_crd() -> dict[str, Any]:
    spec = _schema_of(FineTuneSweepSpec)
    spec["x-kubernetes-validations"] = sweep_spec_rules()
    spec["properties"]["template"]["x-kubernetes-validations"] = spec_rules()
    spec["properties"]["parameters"]["items"]["x-kubernetes-validations"] = sweep_parameter_rules()
    status = _schema_of(FineTuneSweepStatus)
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        # Trials per state (status.running counts the pending ones too).
        *(
            {"name": state.value, "type": "integer", "jsonPath": f".status.{state.name}"}
            for state in (
                TrialState.completed,
                TrialState.running,
                TrialState.pruned,
                TrialState.failed,
            )
        ),
        {"name": "Best", "type": "string", "jsonPath": ".status.bestValue"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{SWEEP_PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": SWEEP_KIND,
                "listKind": f"{SWEEP_KIND}List",
                "plural": SWEEP_PLURAL,
                "singular": SWEEP_SINGULAR,
                "shortNames": SWEEP_SHORT_NAMES,
                "categories": ["kubetune", "all"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                f"A {SWEEP_KIND} ({API_VERSION}) searches hyperparameters: each "
                                f"trial is a {KIND} made from spec.template with the values "
                                "Optuna asks for, stopped early when unpromising; the best "
                                f"trial's model is finetunejob://<sweep>/best."
                            ),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                            "x-kubernetes-validations": sweep_root_rules(),
                        }
                    },
                }
            ],
        },
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated sub-schemas out in full: anchors make a CRD hard to read."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _render(definition: dict[str, Any], source: str) -> str:
    header = f"# Generated by `python -m kubetune.crd` from {source}. Do not edit.\n"
    body = yaml.dump(
        definition, Dumper=_NoAliasDumper, sort_keys=False, width=100, allow_unicode=True
    )
    return header + body


def render() -> str:
    return _render(crd(), "kubetune.api")


def render_sweep() -> str:
    return _render(sweep_crd(), "kubetune.sweep_api")


def main() -> None:
    rendered = {CRD_PATH: render(), SWEEP_CRD_PATH: render_sweep()}
    if "--check" in sys.argv:
        stale = False
        for path, text in rendered.items():
            stale_file = not path.exists() or path.read_text() != text
            print(f"{path.name}: {'stale' if stale_file else 'up to date'}")
            stale = stale or stale_file
        sys.exit(1 if stale else 0)
    CRD_PATH.parent.mkdir(parents=True, exist_ok=True)
    for path, text in rendered.items():
        path.write_text(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
