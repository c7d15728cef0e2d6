"""Model sources and the builtin tiny models: build, cache, determinism, every URI scheme."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path

import pytest

from kubetune_trainer.models import (
    ModelSourceError,
    ensure_builtin,
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_model_dir,
)
from kubetune_trainer.models import builtin as builtin_module
from kubetune_trainer.models import sources as sources_module
from kubetune_trainer.plan import ModelSpec

pytestmark = pytest.mark.trainer

ARCHITECTURES = {"tiny-llama": "llama", "tiny-qwen2": "qwen2", "tiny-mistral": "mistral"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def greedy(spec: ModelSpec | str, prompt: str = "What is 2 + 3?") -> list[int]:
    import torch

    model, tokenizer = load_model_and_tokenizer(spec)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_builtin_builds_loads_and_generates(name: str) -> None:
    import torch

    path = ensure_builtin(name)
    assert path.parent.name == "builtin" and path.name.startswith(f"{name}-")
    model, tokenizer = load_model_and_tokenizer(f"builtin://{name}")
    assert model.config.model_type == ARCHITECTURES[name]
    params = sum(p.numel() for p in model.parameters())
    # Under a million parameters on purpose: CPU-sized steps for demos and the trainer tier.
    assert 500_000 < params < 2_000_000, params
    assert 2000 <= len(tokenizer) <= 4096
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    assert (
        tokenizer.eos_token and tokenizer.pad_token and tokenizer.pad_token != tokenizer.eos_token
    )
    if name != "tiny-qwen2":  # Qwen2 has no bos, like the real one
        assert tokenizer.bos_token and tokenizer("hi")["input_ids"][0] == tokenizer.bos_token_id
    assert "token_type_ids" not in tokenizer("hello")
    ids = greedy(f"builtin://{name}")
    assert 1 <= len(ids) <= 6
    eos = model.generation_config.eos_token_id
    assert tokenizer.eos_token_id in (eos if isinstance(eos, list) else [eos])
    batch = tokenizer(["1 + 2", "a longer input here"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))


def test_builtin_second_load_is_a_cache_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ensure_builtin("tiny-llama")
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    def no_build(name: str, out: Path) -> None:
        raise AssertionError("rebuilt a cached builtin")

    monkeypatch.setattr(builtin_module, "_build", no_build)
    assert ensure_builtin("tiny-llama") == first
    assert resolve_model_dir("builtin://tiny-llama") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp


def test_builtin_build_is_deterministic_and_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = ensure_builtin("tiny-qwen2")
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "fresh"))
    builds: list[str] = []
    real_build = builtin_module._build

    def counting_build(name: str, out: Path) -> None:
        builds.append(name)
        time.sleep(0.2)  # widen the race window
        real_build(name, out)

    monkeypatch.setattr(builtin_module, "_build", counting_build)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_builtin("tiny-qwen2")))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert builds == ["tiny-qwen2"], "the file lock must let exactly one builder run"
    assert len(set(results)) == 1 and len(results) == 3
    rebuilt = results[0]
    assert rebuilt.name == reference.name  # same content hash
    for file in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert sha256(rebuilt / file) == sha256(reference / file), file
    leftovers = [p.name for p in rebuilt.parent.iterdir() if p.is_dir() and p != rebuilt]
    assert leftovers == []


def test_local_file_and_pvc_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = ensure_builtin("tiny-llama")
    expected = greedy("builtin://tiny-llama")
    local = tmp_path / "models" / "mine"
    shutil.copytree(built, local)
    assert resolve_model_dir(str(local)) == local
    assert resolve_model_dir(f"file://{local}") == local
    assert greedy(str(local)) == expected

    root = tmp_path / "pvc"
    shutil.copytree(built, root / "models-claim" / "base" / "tiny")
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(root))
    path = resolve_model_dir("pvc://models-claim/base/tiny")
    assert path == root / "models-claim" / "base" / "tiny"
    assert greedy("pvc://models-claim/base/tiny") == expected
    with pytest.raises(ModelSourceError, match="claim 'other' is not mounted"):
        resolve_model_dir("pvc://other/base")
    with pytest.raises(ModelSourceError, match=r"no config\.json"):
        resolve_model_dir(str(tmp_path))


def test_s3_model_from_a_local_s3_server(s3_upload, tmp_path: Path) -> None:
    built = ensure_builtin("tiny-mistral")
    keys = s3_upload("models", "tiny/mistral", built)
    assert "tiny/mistral/model.safetensors" in keys
    spec = ModelSpec(source="s3://models/tiny/mistral")
    path = resolve_model_dir(spec)
    assert sha256(path / "model.safetensors") == sha256(built / "model.safetensors")
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    # A second resolution finds the same objects (ETag and size) and downloads nothing.
    assert resolve_model_dir(spec) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert greedy(spec) == greedy("builtin://tiny-mistral")
    with pytest.raises(ModelSourceError, match="no objects"):
        resolve_model_dir("s3://models/absent")


def _fake_hub_repo(cache: Path, repo: str, files: Path, commit: str) -> Path:
    """Lay out ``files`` as huggingface_hub's cache would after downloading ``repo``."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    shutil.copytree(files, snapshot)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    return snapshot


def test_hf_model_from_the_offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = _fake_hub_repo(cache, "acme/tiny-llama", ensure_builtin("tiny-llama"), commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert resolve_model_dir("hf://acme/tiny-llama") == snapshot
    assert resolve_model_dir(ModelSpec(source="hf://acme/tiny-llama", revision=commit)) == snapshot
    assert load_tokenizer("hf://acme/tiny-llama").eos_token == "<|eot_id|>"
    with pytest.raises(ModelSourceError, match="HF_HUB_OFFLINE"):
        resolve_model_dir("hf://acme/missing")


def test_hf_token_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, object] = {}
    target = ensure_builtin("tiny-qwen2")

    def fake_snapshot_download(repo_id: str, **kwargs: object) -> str:
        seen.update(kwargs, repo_id=repo_id)
        return str(target)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("KUBETUNE_MODEL_TOKEN", "hf_secret")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    spec = ModelSpec(source="hf://acme/gated", revision="v1")
    assert resolve_model_dir(spec) == target
    assert seen["repo_id"] == "acme/gated"
    assert seen["token"] == "hf_secret" and seen["revision"] == "v1"
    assert seen["local_files_only"] is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolve_model_dir(spec)
    assert seen["local_files_only"] is True
    assert sources_module.TOKEN_ENV == "KUBETUNE_MODEL_TOKEN"


def test_unresolvable_sources() -> None:
    with pytest.raises(ModelSourceError, match="resolved by the operator"):
        resolve_model_dir("finetunejob://previous")


def test_sequence_classification_head() -> None:
    import torch

    spec = ModelSpec(source="builtin://tiny-llama")
    tokenizer = load_tokenizer(spec)
    model = load_model(spec, task="sequence-classification", tokenizer=tokenizer)
    batch = tokenizer(["12 + 30 = 42", "no"], padding=True, return_tensors="pt")
    with torch.no_grad():
        scores = model(**batch).logits
    assert scores.shape == (2, 1)
    assert model.config.pad_token_id == tokenizer.pad_token_id
