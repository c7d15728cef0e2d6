"""Kill harness for the checkpoint protocol (docs/checkpoints.md).

Each trial is one attempt of a run, in a child process that:

1. checks, before touching anything, what the previous (killed) attempt left: the latest
   checkpoint must be complete, byte-identical to what was written, and not older than the
   last save that returned;
2. registers its attempt (resuming from that checkpoint: same step, same bytes) and checks that
   leftovers of earlier attempts are gone;
3. saves a few checkpoint-like directories of random bytes (fake_checkpoints) and prints each
   save that returned;

and is SIGKILLed by itself at a seeded point: inside a file (the trainer's write, an upload, a
copy, the manifest), between files, around the rename or the manifest, during pruning, while
registering, or between saves. The categories take turns; the occurrence within a category is
drawn from the counts of a calibration run.

    python -m tests.storage.kill_harness --backend fs --root /mnt/nfs/scratch --trials 100
    python -m tests.storage.kill_harness --backend s3 --root s3://bucket/prefix --trials 100

prints one JSON line: trials, kills per category, lost, rolled back, corrupt, wrong resume,
uncleaned leftovers, errors (each must be 0). S3 takes the endpoint and credentials from the
usual AWS variables.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubetune_trainer.training.checkpoint_fs import CheckpointStore
from kubetune_trainer.training.checkpoint_store import open_store
from kubetune_trainer.training.checkpoints import CheckpointError, Hook
from tests.storage.fake_checkpoints import differences, write_fake_checkpoint

REPO = Path(__file__).resolve().parents[2]
KEEP_LAST = 2
SAVES = 3
STEP = 10

CATEGORIES: dict[str, tuple[str, ...]] = {
    "inside a file": ("trainer-bytes", "write-bytes", "upload-bytes", "copy-bytes"),
    "between files": ("file-durable", "file-uploaded", "adopt-file"),
    "around rename and manifest": (
        "incoming-placed",
        "manifest-durable",
        "before-rename",
        "renamed",
        "durable",
    ),
    "during prune": ("delete-renamed", "delete-file", "deleted", "delete-manifest"),
    "registering": (
        "adopt-started",
        "adopt-manifest-durable",
        "record-written",
        "record-renamed",
        "before-record",
        "record-durable",
        "upload-aborted",
    ),
    "between saves": ("between-saves",),
}
_CATEGORY_OF = {point: name for name, points in CATEGORIES.items() for point in points}


class Killer:
    """The writer's hook: counts points per category; SIGKILLs this process at the chosen one."""

    def __init__(self, category: str | None = None, occurrence: int = 0) -> None:
        self.category = category
        self.occurrence = occurrence
        self.counts: collections.Counter[str] = collections.Counter()

    def __call__(self, point: str) -> None:
        category = _CATEGORY_OF.get(point)
        if category is None:
            return
        self.counts[category] += 1
        if category == self.category and self.counts[category] == self.occurrence:
            os.kill(os.getpid(), signal.SIGKILL)


class RemovesBeforeReplacing(CheckpointStore):
    """A broken protocol, to show the harness catches one: it deletes its older checkpoints
    before the new one has its name."""

    def _install(self, incoming: Path, name: str) -> Any:
        for old in self.complete():
            self._delete(self._listed(old.name))
        return super()._install(incoming, name)


def make_store(location: str, hook: Hook, scratch: Path, broken: bool = False) -> Any:
    if broken:
        return RemovesBeforeReplacing(Path(location), KEEP_LAST, hook=hook)
    if location.startswith("s3://"):
        return open_store(location, KEEP_LAST, hook=hook, cache_dir=scratch / "cache")
    return open_store(location, KEEP_LAST, hook=hook)


def inspect_latest(store: Any) -> dict[str, Any]:
    """What a reader sees: the latest checkpoint and whether its bytes are what was written."""
    latest = store.latest()
    if latest is None:
        return {"latest": None, "step": 0, "problems": []}
    problems = store.verify(latest)
    try:
        problems += differences(store.local_copy(latest), latest.step)
    except CheckpointError as err:
        problems.append(str(err))
    return {"latest": latest.name, "step": latest.step, "problems": problems}


def older_leftovers(store: Any, attempt: int) -> list[str]:
    found = [e.name for e in store.listing() if e.attempt < attempt]
    if hasattr(store, "bucket"):
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
        found += [f"upload {u['Key']}" for u in uploads.get("Uploads", [])]
    return found


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def write_attempt(spec: dict[str, Any], killer: Killer, scratch: Path) -> None:
    """One attempt: check, register (resume), save; emits a line after each stage."""
    store = make_store(spec["location"], killer, scratch, spec.get("broken", False))
    emit({"check": inspect_latest(store)})
    if spec.get("check_only"):
        return
    attempt = spec["attempt"]
    base = store.register_attempt(attempt)
    resumed = {"base": None, "step": 0, "problems": [], "leftovers": []}
    if base is not None:
        resumed = {
            "base": base.name,
            "step": base.step,
            "problems": differences(store.local_copy(base), base.step),
        }
    resumed["leftovers"] = older_leftovers(store, attempt)
    emit({"registered": resumed})
    step = resumed["step"]
    # Beside the run on a filesystem, as the trainer's staging is: publishing is a rename.
    staging_root = scratch if spec["location"].startswith("s3://") else Path(spec["location"])
    for save in range(SAVES):
        step += STEP
        staging = staging_root / "staging" / f"attempt-{attempt}-step-{step}"
        write_fake_checkpoint(
            staging,
            spec["seed"],
            attempt,
            step,
            large=spec.get("large", False) and save == 0,
            on_chunk=lambda: killer("trainer-bytes"),
        )
        store.publish(staging, step, attempt)
        emit({"returned": step})
        killer("between-saves")
    emit({"counts": dict(killer.counts)})


@dataclass
class Tally:
    backend: str
    trials: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    completed_without_kill: int = 0
    resumed_and_saved: int = 0
    """Trials whose attempt registered (resuming from the latest) and saved at least once."""
    lost: int = 0
    rolled_back: int = 0
    corrupt: int = 0
    wrong_resume: int = 0
    uncleaned: int = 0
    errors: int = 0
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return (
            self.lost
            + self.rolled_back
            + self.corrupt
            + self.wrong_resume
            + self.uncleaned
            + self.errors
        )

    def judge_check(self, check: dict[str, Any], last_returned: int, trial: int) -> None:
        if check["latest"] is None and last_returned:
            self.lost += 1
            self.details.append(f"trial {trial}: no checkpoint; step {last_returned} had returned")
        elif check["step"] < last_returned:
            self.rolled_back += 1
            self.details.append(
                f"trial {trial}: latest {check['latest']} older than step {last_returned}"
            )
        if check["problems"]:
            self.corrupt += 1
            self.details.append(f"trial {trial}: {check['latest']}: {check['problems']}")


def run_writer(spec: dict[str, Any], env: dict[str, str]) -> tuple[int, list[dict], str]:
    command = [sys.executable, "-m", "tests.storage.kill_harness", "--writer", json.dumps(spec)]
    proc = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, records, proc.stderr


def calibrate(location: str, seed: int, large: bool, broken: bool) -> dict[str, int]:
    """Points per category of an attempt that resumes and saves (run here, not killed)."""
    with tempfile.TemporaryDirectory(prefix="kill-calibration-") as scratch:
        counts: collections.Counter[str] = collections.Counter()
        for attempt in (1, 2):
            killer = Killer()
            spec = {
                "location": location,
                "attempt": attempt,
                "seed": seed,
                "large": large,
                "broken": broken,
            }
            with contextlib.redirect_stdout(io.StringIO()):
                write_attempt(spec, killer, Path(scratch) / str(attempt))
            counts = killer.counts
    return {category: max(counts.get(category, 0), 1) for category in CATEGORIES}


def run_trials(
    backend: str,
    location: str,
    trials: int,
    seed: int,
    env: dict[str, str] | None = None,
    broken: bool = False,
) -> Tally:
    """``trials`` attempts of one run at ``location``, each killed at a seeded point.
    ``broken`` runs them against RemovesBeforeReplacing instead of the real store."""
    env = dict(env or os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    large = backend == "s3"
    started = time.monotonic()
    bounds = calibrate(f"{location}/calibration", seed, large, broken)
    run = f"{location}/run"
    tally = Tally(backend)
    kills: collections.Counter[str] = collections.Counter()
    last_returned = 0
    order = list(CATEGORIES)
    for trial in range(trials):
        rng = random.Random(f"{seed}:{trial}")
        category = order[trial % len(order)]
        occurrence = rng.randint(1, bounds[category])
        spec = {
            "location": run,
            "attempt": trial + 1,
            "seed": seed,
            "large": large and trial % 5 == 0,
            "kill": [category, occurrence],
            "broken": broken,
        }
        code, records, stderr = run_writer(spec, env)
        tally.trials += 1
        if code == -signal.SIGKILL:
            kills[category] += 1
        elif code == 0:
            tally.completed_without_kill += 1
        else:
            tally.errors += 1
            tally.details.append(f"trial {trial}: exit {code}: {stderr.strip()[-2000:]}")
        checks = [r["check"] for r in records if "check" in r]
        if not checks:
            tally.errors += 1
            tally.details.append(f"trial {trial}: no check: {stderr.strip()[-2000:]}")
            continue
        tally.judge_check(checks[0], last_returned, trial)
        registered = next((r["registered"] for r in records if "registered" in r), None)
        if registered is not None:
            if registered["step"] != checks[0]["step"] or registered["problems"]:
                tally.wrong_resume += 1
                tally.details.append(f"trial {trial}: resumed {registered}, latest {checks[0]}")
            if registered["leftovers"]:
                tally.uncleaned += 1
                tally.details.append(f"trial {trial}: left behind {registered['leftovers']}")
        returned = [r["returned"] for r in records if "returned" in r]
        if registered is not None and returned:
            tally.resumed_and_saved += 1
        last_returned = max([last_returned, *returned])
    code, records, stderr = run_writer({"location": run, "check_only": True}, env)
    checks = [r["check"] for r in records if "check" in r]
    if code != 0 or not checks:
        tally.errors += 1
        tally.details.append(f"final check: exit {code}: {stderr.strip()[-2000:]}")
    else:
        tally.judge_check(checks[0], last_returned, trials)
    tally.kills = dict(kills)
    tally.seconds = round(time.monotonic() - started, 1)
    return tally


def trials_from_env(default: int = 30) -> int:
    """KUBETUNE_KILL_TRIALS: trials per backend (CI: 30)."""
    return int(os.environ.get("KUBETUNE_KILL_TRIALS", default))


def new_location(root: str) -> str:
    return f"{root.rstrip('/')}/kill-{uuid.uuid4().hex[:8]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writer", help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=["fs", "s3"], default="fs")
    parser.add_argument("--root", help="a directory (any filesystem) or s3://bucket/prefix")
    parser.add_argument("--trials", type=int, default=trials_from_env())
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.writer:
        spec = json.loads(args.writer)
        category, occurrence = spec.get("kill") or (None, 0)
        with tempfile.TemporaryDirectory(prefix="kill-writer-") as scratch:
            write_attempt(spec, Killer(category, occurrence), Path(scratch))
        return 0
    if not args.root:
        parser.error("--root is required")
    tally = run_trials(args.backend, new_location(args.root), args.trials, args.seed)
    print(json.dumps(asdict(tally)))
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
