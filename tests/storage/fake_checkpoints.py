"""Checkpoint-like directories of random bytes with the shape of an HF Trainer save, and the
check that a stored checkpoint holds exactly what was written.

Every file's bytes follow from (seed, attempt, step, file name), recorded in ``origin.json``,
so a checker in another process regenerates what the writer wrote and compares byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path

ORIGIN = "origin.json"
_CHUNK = 1 << 16


def shape(
    seed: int, attempt: int, step: int, *, large: bool = False, small: bool = False
) -> dict[str, int]:
    """File name -> size, like a small model's save (weights, optimizer twice their size, RNG
    and scheduler state, tokenizer, configs); sometimes a DeepSpeed-style subdirectory.
    ``large`` adds a file above boto3's multipart threshold (8 MiB); ``small`` is three files
    of a few KiB (for tests that make hundreds of checkpoints)."""
    rng = random.Random(f"{seed}:{attempt}:{step}:shape")
    if small:
        weights = rng.randint(1 << 10, 8 << 10)
        return {
            "model.safetensors": weights,
            "optimizer.pt": 2 * weights,
            "trainer_state.json": rng.randint(200, 900),
        }
    weights = rng.randint(64 << 10, 1536 << 10)
    files = {
        "model.safetensors": weights,
        "optimizer.pt": 2 * weights + rng.randint(0, 4096),
        "scheduler.pt": rng.randint(900, 1200),
        "rng_state.pth": rng.randint(14000, 15000),
        "trainer_state.json": rng.randint(800, 4000),
        "training_args.bin": rng.randint(5000, 6000),
        "config.json": rng.randint(500, 900),
        "tokenizer.json": rng.randint(40 << 10, 200 << 10),
    }
    if rng.random() < 0.3:
        files[f"global_step{step}/mp_rank_00_model_states.pt"] = rng.randint(10 << 10, 300 << 10)
    if large:
        files["pytorch_model_shard.bin"] = rng.randint(9 << 20, 11 << 20)
    return files


def file_bytes(seed: int, attempt: int, step: int, name: str, size: int) -> bytes:
    return hashlib.shake_256(f"{seed}:{attempt}:{step}:{name}".encode()).digest(size)


def write_fake_checkpoint(
    directory: Path,
    seed: int,
    attempt: int,
    step: int,
    *,
    large: bool = False,
    small: bool = False,
    on_chunk: Callable[[], None] | None = None,
) -> None:
    """Write the files as a trainer would (in chunks; ``on_chunk`` after each)."""
    files = shape(seed, attempt, step, large=large, small=small)
    directory.mkdir(parents=True)
    for name, size in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = file_bytes(seed, attempt, step, name, size)
        with path.open("wb") as out:
            for start in range(0, size, _CHUNK):
                out.write(data[start : start + _CHUNK])
                if on_chunk is not None:
                    on_chunk()
    origin = {"seed": seed, "attempt": attempt, "step": step, "files": files}
    (directory / ORIGIN).write_text(json.dumps(origin))


def differences(directory: Path, step: int) -> list[str]:
    """How a checkpoint's local copy differs from what its writer wrote (empty: identical)."""
    try:
        origin = json.loads((directory / ORIGIN).read_text())
    except (OSError, ValueError) as err:
        return [f"{ORIGIN}: {err}"]
    if origin["step"] != step:
        return [f"{ORIGIN} says step {origin['step']}, the checkpoint's name says {step}"]
    expected = set(origin["files"]) | {ORIGIN}
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    present = {p for p in present if not p.startswith(".") and p != "kubetune.json"}
    problems = [f"unexpected file {p}" for p in sorted(present - expected)]
    for name, size in sorted(origin["files"].items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        want = file_bytes(origin["seed"], origin["attempt"], origin["step"], name, size)
        if path.read_bytes() != want:
            problems.append(f"{name}: bytes differ from what was written")
    return problems
