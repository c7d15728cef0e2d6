"""`kubetune checkpoints list|verify JOB`: the checkpoints of a run and their state.

JOB is a job name, looked up under --storage the way `kubetune run --local` lays runs out
(STORAGE/NAMESPACE/NAME), or a run directory. --storage may also be an s3:// prefix. States
and the protocol behind them: docs/checkpoints.md.

Exit codes: 0 every checkpoint with a manifest is whole (verify: and has its hashes); 1 one is
partial or corrupt; 2 no run there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kubetune.planner import LOCAL_STORAGE
from kubetune_trainer.training.checkpoint_store import open_store
from kubetune_trainer.training.checkpoints import Listed, state_of

EXIT_DAMAGED = 1
EXIT_NO_RUN = 2


def job_location(job: str, storage: str, namespace: str) -> str:
    """The run's directory or s3:// prefix for JOB (a name, or a run directory)."""
    path = Path(job)
    if (path / "attempts").is_dir() or (path / "checkpoints").is_dir():
        return str(path)
    if storage.startswith("s3://"):
        return f"{storage.rstrip('/')}/{namespace}/{job}"
    return str(Path(storage) / namespace / job)


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{count} B"


def row(entry: Listed, state: str, resume: bool, hashes: str | None) -> str:
    checkpoint = entry.checkpoint
    files = str(len(checkpoint.files)) if checkpoint else "-"
    size = human_bytes(checkpoint.total_bytes) if checkpoint else "-"
    line = f"{entry.name:<40} {entry.step:>8} {entry.attempt:>7}  {state:<13} {files:>5} {size:>9}"
    if hashes is not None:
        line += f"  {hashes:<6}"
    notes = []
    if checkpoint is not None and checkpoint.adopted_from:
        notes.append(f"copy of {checkpoint.adopted_from}")
    if resume:
        notes.append("<- resume point")
    return (line + "  " + ", ".join(notes)).rstrip()


def show(store: Any, verify: bool) -> int:
    entries = store.listing()
    lineage = store.latest_attempt() or None
    print(f"run: {store.location}")
    print(f"attempts recorded: {', '.join(map(str, store.recorded_attempts())) or 'none'}")
    if not entries:
        print("no checkpoints")
        return 0
    problems: dict[str, list[str]] = {}
    if verify:
        whole = [e for e in entries if e.complete and e.checkpoint is not None]
        for number, entry in enumerate(whole, 1):
            print(f"verifying {entry.name} ({number}/{len(whole)})", file=sys.stderr, flush=True)
            problems[entry.name] = store.verify(entry.checkpoint)
    resume = next(
        (
            e.name
            for e in reversed(entries)
            if e.complete and e.attempt == lineage and not problems.get(e.name)
        ),
        None,
    )
    header = (
        f"{'CHECKPOINT':<40} {'STEP':>8} {'ATTEMPT':>7}  {'STATE':<13} {'FILES':>5} {'SIZE':>9}"
    )
    print(header + ("  HASHES" if verify else ""))
    damaged = 0
    for entry in entries:
        found = problems.get(entry.name, [])
        hashes = None
        if verify:
            hashes = "-" if entry.name not in problems else ("ok" if not found else "bad")
        state = state_of(entry, lineage, corrupt=bool(found))
        print(row(entry, state, entry.name == resume, hashes))
        for problem in found or (entry.problems if state == "partial" else []):
            print(f"    {problem}")
        damaged += state in ("partial", "corrupt")
    return EXIT_DAMAGED if damaged else 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    location = job_location(args.job, args.storage, args.namespace)
    if not location.startswith("s3://") and not Path(location).is_dir():
        print(f"kubetune checkpoints: no run at {location}", file=sys.stderr)
        return EXIT_NO_RUN
    return show(open_store(location), verify=args.action == "verify")


def add_checkpoint_commands(commands: Any) -> None:
    parser = commands.add_parser(
        "checkpoints",
        help="list a run's checkpoints and their state; verify their hashes",
        description="Show a run's checkpoints: complete (the lineage, newest = resume point), "
        "stale attempt (written by an attempt a newer one replaced), incoming (being written "
        "or left by a writer that died), partial (files missing), corrupt (hashes differ; "
        "verify only). Exit 0 all whole, 1 partial or corrupt found, 2 no run. See "
        "docs/checkpoints.md.",
    )
    parser.add_argument("action", choices=["list", "verify"])
    parser.add_argument("job", metavar="JOB", help="job name, or a run directory")
    parser.add_argument("--storage", default=LOCAL_STORAGE, help="the runs' storage root")
    parser.add_argument("--namespace", default="default", help="the job's namespace")
    parser.set_defaults(func=cmd_checkpoints)
