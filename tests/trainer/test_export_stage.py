"""The export stage end to end: adapters merged into safetensors that load with transformers and
generate what the adapter model generates, a manifest whose checksums match the files, S3
destinations, the export gate, and clear failures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kubetune.api import FineTuneJob
from kubetune.cli import DEMO_PIPELINE
from kubetune.planner import make_plan
from kubetune_trainer.exit_codes import EXIT_FAILED, EXIT_GATE_NOT_MET, EXIT_OK
from kubetune_trainer.export.manifest import sha256_file
from kubetune_trainer.models.adapters import is_adapter_dir, write_base_record
from kubetune_trainer.plan import ModelSpec, Plan, Scaling

pytestmark = pytest.mark.trainer

BASE = "builtin://tiny-llama"


def save_random_adapter(output: Path, base: str = BASE) -> None:
    """What a LoRA job leaves behind, with adapters far from zero so merging matters."""
    from peft import LoraConfig, get_peft_model

    from kubetune_trainer.models import load_model_and_tokenizer

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(base)
    config = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    write_base_record(output, ModelSpec(source=base))


def export_plan(tmp_path: Path, export: dict, **spec: object) -> Plan:
    job = FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "exp", "namespace": "t"},
            "spec": {
                "method": "sft",
                "model": {"source": BASE},
                "data": {"sources": [{"uri": "builtin://arithmetic-sft"}]},
                "export": export,
                **spec,
            },
        }
    )
    return make_plan(
        job,
        default_storage=str(tmp_path / "runs"),
        scaling=Scaling(workers=1, devices_per_worker=0, nodes=1, use_gpu=False),
    )


def run_stage(tmp_path: Path, plan: Plan, env: dict[str, str] | None = None):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(plan.to_json())
    command = [sys.executable, "-m", "kubetune_trainer.cli", "--plan", str(plan_path)]
    command += ["--stage", "export"]
    return subprocess.run(
        command, env=os.environ | (env or {}), capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("adapter") / "output"
    save_random_adapter(path)
    return path


def test_an_adapter_output_loads_as_a_merged_model(adapter_dir: Path) -> None:
    """A LoRA job's output is a usable model source for the next job of a pipeline."""
    from peft import PeftModel

    from kubetune_trainer.models import load_model, resolve_model_dir

    assert is_adapter_dir(adapter_dir)
    assert resolve_model_dir(str(adapter_dir)) == adapter_dir
    ids = torch.tensor([[1, 5, 9, 30, 200]])
    merged = load_model(str(adapter_dir))
    base = load_model(BASE)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        wrapped = PeftModel.from_pretrained(load_model(BASE), adapter_dir).eval()
        expected = wrapped(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    assert (expected - base_logits).abs().max() > 1e-2, "adapters should change the model"
    assert torch.allclose(got, expected, atol=1e-4)


def test_merge_writes_verified_safetensors(tmp_path: Path, adapter_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.export.merge import merge_to_safetensors

    out = tmp_path / "merged"
    verification = merge_to_safetensors(adapter_dir, out)
    assert verification.ok, verification
    assert verification.greedy_match and verification.max_abs_logit_diff < 1e-4
    assert (out / "model.safetensors").is_file() and not is_adapter_dir(out)
    assert (out / "generation_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "{% generation %}" in tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())


OWN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} event=\w+( |$)")


def demo_export_spec() -> dict:
    """spec.export of the demo job that exports (what `make demo` exports)."""
    documents = list(yaml.safe_load_all(DEMO_PIPELINE.read_text()))
    (export,) = [d["spec"]["export"] for d in documents if "export" in d["spec"]]
    return export


def test_stage_publishes_artifacts_with_a_matching_manifest(
    tmp_path: Path, adapter_dir: Path
) -> None:
    export = demo_export_spec()
    assert export == {
        "formats": ["safetensors", "gguf", "onnx"],
        "gguf": {"types": ["f16", "q8_0"]},
    }
    plan = export_plan(tmp_path, export)
    output = Path(plan.storage.output_dir)
    output.parent.mkdir(parents=True)
    output.symlink_to(adapter_dir, target_is_directory=True)

    result = run_stage(tmp_path, plan, env={"KUBETUNE_LOG_LEVEL": "INFO"})
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    # At the default level the stage prints kubetune's own lines only: no optimizer internals
    # of the ONNX exporter, no deprecation or accelerator notices, no library progress bars.
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    foreign = [line for line in lines if not OWN_LINE.match(line)]
    assert foreign == [], f"{len(foreign)} of {len(lines)} lines are not kubetune's:\n" + "\n".join(
        foreign[:20]
    )
    assert 5 <= len(lines) <= 40, lines

    export_dir = Path(plan.storage.export_dir)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert manifest["job"] == "t/exp" and manifest["source"] == plan.storage.output_dir
    formats = [a["format"] for a in manifest["artifacts"]]
    assert formats == ["safetensors", "gguf-f16", "gguf-q8_0", "onnx"]
    loaders = {a["format"]: a["verification"]["loader"] for a in manifest["artifacts"]}
    assert loaders["onnx"] == "onnxruntime" and loaders["gguf-f16"] == "transformers-gguf"
    for artifact in manifest["artifacts"]:
        assert artifact["verification"]["ok"], artifact
        for entry in artifact["files"]:
            path = export_dir / entry["path"]
            assert path.stat().st_size == entry["bytes"]
            assert sha256_file(path) == entry["sha256"]
        assert artifact["bytes"] == sum(f["bytes"] for f in artifact["files"])
    assert (export_dir / "gguf" / "exp-q8_0.gguf").is_file()
    leftovers = [p.name for p in export_dir.parent.iterdir() if p.name.startswith(".export-")]
    assert leftovers == [], "the scratch directory must not outlive the stage"


def test_stage_uploads_to_s3(tmp_path: Path, adapter_dir: Path, s3_env: str) -> None:
    from kubetune_trainer.uris import s3_client

    s3_client().create_bucket(Bucket="artifacts")
    plan = export_plan(tmp_path, {"formats": ["safetensors"], "destination": "s3://artifacts/x"})
    output = Path(plan.storage.output_dir)
    output.parent.mkdir(parents=True)
    output.symlink_to(adapter_dir, target_is_directory=True)

    result = run_stage(tmp_path, plan)
    assert result.returncode == EXIT_OK, result.stderr[-3000:]

    prefix = "x/t/exp"
    assert plan.storage.export_dir == f"s3://artifacts/{prefix}"
    client = s3_client()
    body = client.get_object(Bucket="artifacts", Key=f"{prefix}/manifest.json")["Body"].read()
    manifest = json.loads(body)
    for entry in manifest["artifacts"][0]["files"]:
        local = tmp_path / "download" / entry["path"]
        local.parent.mkdir(parents=True, exist_ok=True)
        client.download_file("artifacts", f"{prefix}/{entry['path']}", str(local))
        assert sha256_file(local) == entry["sha256"]


def test_corrupt_weights_fail_with_the_file_named(tmp_path: Path) -> None:
    from kubetune_trainer.models import resolve_model_dir

    plan = export_plan(tmp_path, {"formats": ["safetensors"]})
    output = Path(plan.storage.output_dir)
    output.mkdir(parents=True)
    source = resolve_model_dir(BASE)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (output / name).write_bytes((source / name).read_bytes())
    weights = (source / "model.safetensors").read_bytes()
    (output / "model.safetensors").write_bytes(weights[: len(weights) // 2])

    result = run_stage(tmp_path, plan)
    assert result.returncode == EXIT_FAILED
    assert "cannot load the trained model" in result.stderr
    assert not Path(plan.storage.export_dir).exists(), "nothing published on failure"


def test_export_without_a_trained_model_says_so(tmp_path: Path) -> None:
    plan = export_plan(tmp_path, {"formats": ["safetensors"]})
    result = run_stage(tmp_path, plan)
    assert result.returncode == EXIT_FAILED
    assert "no trained model at" in result.stderr and "did training finish?" in result.stderr


GATE_DATA = {"uri": "builtin://arithmetic-prompts", "split": "test", "maxSamples": 8}


def test_gate_not_met_exports_nothing_and_says_why(tmp_path: Path, adapter_dir: Path) -> None:
    eval_spec = {"metrics": [{"name": "acc", "type": "accuracy", "extractor": "lastNumber",
                              "maxNewTokens": 6, "dataset": GATE_DATA}]}  # fmt: skip
    export = {"formats": ["safetensors", "gguf"], "gate": {"metric": "acc", "min": 0.9}}
    plan = export_plan(tmp_path, export, eval=eval_spec)
    output = Path(plan.storage.output_dir)
    output.parent.mkdir(parents=True)
    output.symlink_to(adapter_dir, target_is_directory=True)
    termination = tmp_path / "termination-log"

    result = run_stage(tmp_path, plan, {"KUBETUNE_TERMINATION_LOG": str(termination)})
    assert result.returncode == EXIT_GATE_NOT_MET, result.stderr[-3000:]
    message = termination.read_text()
    assert message.startswith("export gate not met: acc=0 is below min 0.9"), message
    manifest = json.loads((Path(plan.storage.export_dir) / "manifest.json").read_text())
    assert manifest["artifacts"] == []
    assert manifest["gate"]["passed"] is False and manifest["gate"]["value"] == 0.0


def test_gate_met_exports(tmp_path: Path, adapter_dir: Path) -> None:
    data = {"uri": "builtin://arithmetic-sft", "maxSamples": 8}
    eval_spec = {"metrics": [{"name": "ppl", "type": "perplexity", "dataset": data}]}
    export = {"formats": ["safetensors"], "gate": {"metric": "ppl", "max": 1e9}}
    plan = export_plan(tmp_path, export, eval=eval_spec)
    output = Path(plan.storage.output_dir)
    output.parent.mkdir(parents=True)
    output.symlink_to(adapter_dir, target_is_directory=True)

    result = run_stage(tmp_path, plan)
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    manifest = json.loads((Path(plan.storage.export_dir) / "manifest.json").read_text())
    assert manifest["gate"]["passed"] is True and 1 < manifest["gate"]["value"] < 1e9
    assert [a["format"] for a in manifest["artifacts"]] == ["safetensors"]
