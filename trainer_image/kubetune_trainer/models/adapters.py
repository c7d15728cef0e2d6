"""Adapter directories: what a LoRA/DoRA job leaves as its output.

Such a directory holds the adapter weights and the tokenizer, not a full model. kubetune writes
``kubetune-base.json`` beside them naming the base model spec (a portable source such as
builtin://, pvc:// or s3://, never a path of the machine that trained), so later jobs and the
export stage can rebuild the full model anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from kubetune_trainer.plan import ModelSpec

ADAPTER_CONFIG = "adapter_config.json"
BASE_RECORD = "kubetune-base.json"


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def write_base_record(path: Path, base: ModelSpec) -> None:
    record = base.model_dump(mode="json", by_alias=True, exclude_none=True)
    (path / BASE_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))


def adapter_base(path: Path) -> ModelSpec:
    """The base model of the adapters in ``path``: kubetune's record, else the base path PEFT
    wrote when it still exists on this machine."""
    record = path / BASE_RECORD
    if record.is_file():
        return ModelSpec.model_validate(json.loads(record.read_text()))
    base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if base and Path(base).is_dir():
        return ModelSpec(source=str(base))
    raise ValueError(
        f"{path} holds adapters but no {BASE_RECORD} naming their base model, and the base "
        f"recorded by PEFT ({base!r}) is not on this machine"
    )
