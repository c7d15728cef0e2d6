"""Which TRL config fields `spec.training.trlArgs` may set, checked without importing TRL.

The operator validates trlArgs but never imports torch, so the fields of the TRL configs are
kept as a snapshot (trl_fields.json) generated from the pinned TRL. A trainer-tier test fails
when the snapshot no longer matches the installed TRL; regenerate it with
``python -m kubetune_trainer.trl_fields``.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

SNAPSHOT = Path(__file__).with_name("trl_fields.json")

# The TRL config class behind each method (and GRPO variant). PPO and eval are kubetune's own.
CONFIG_FOR_METHOD = {
    "sft": "SFTConfig",
    "dpo": "DPOConfig",
    "reward": "RewardConfig",
    "grpo": "GRPOConfig",
    "rloo": "RLOOConfig",
}


def _json_kinds(annotation: Any) -> set[str]:
    """The JSON value kinds a config field accepts."""
    if annotation is type(None):
        return {"null"}
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds: set[str] = set()
        for arg in typing.get_args(annotation):
            kinds |= _json_kinds(arg)
        return kinds
    if origin is typing.Literal:
        return {"string"}
    target = origin or annotation
    if target is bool:
        return {"boolean"}
    if target is int:
        return {"integer"}
    if target is float:
        return {"number", "integer"}
    if target in (list, tuple):
        return {"array"}
    if target is dict:
        return {"object"}
    if isinstance(target, type) and issubclass(target, enum.Enum | str):
        return {"string"}
    return {"string", "number", "integer", "boolean", "array", "object", "null"}


def snapshot_from_trl() -> dict[str, Any]:
    """Field names and accepted JSON kinds of every config in CONFIG_FOR_METHOD."""
    import trl

    configs: dict[str, dict[str, list[str]]] = {}
    for class_name in sorted(set(CONFIG_FOR_METHOD.values())):
        config = getattr(trl, class_name)
        hints = typing.get_type_hints(config)
        configs[class_name] = {
            field.name: sorted(_json_kinds(hints.get(field.name, field.type)))
            for field in dataclasses.fields(config)
            if field.init and not field.name.startswith("_")
        }
    return {"trl": trl.__version__, "configs": configs}


@cache
def load_snapshot() -> dict[str, Any]:
    return json.loads(SNAPSHOT.read_text())


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def check_trl_args(config_key: str, args: dict[str, Any]) -> list[tuple[str, str]]:
    """Problems with trlArgs for a method, as (argument, message) pairs."""
    snapshot = load_snapshot()
    class_name = CONFIG_FOR_METHOD[config_key]
    fields: dict[str, list[str]] = snapshot["configs"][class_name]
    problems = []
    for key, value in args.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problems.append((key, f"not a field of TRL {snapshot['trl']} {class_name}{hint}"))
            continue
        kind = json_kind(value)
        if kind not in fields[key]:
            problems.append(
                (key, f"{class_name}.{key} takes {' or '.join(fields[key])}, not {kind}")
            )
    return problems


def main() -> None:
    SNAPSHOT.write_text(json.dumps(snapshot_from_trl(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT.name}")


if __name__ == "__main__":
    main()
