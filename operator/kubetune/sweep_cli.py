"""``kubetune sweep FILE --local``: run a FineTuneSweep on this machine (see
:mod:`kubetune.sweep_local`). Exit codes: 0 the sweep succeeded (or had succeeded), 1 the file
is invalid or the sweep failed, 2 no --local, 130 interrupted (run it again to resume)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from kubetune.planner import LOCAL_STORAGE
from kubetune.sweep_api import SweepPhase

EXIT_INVALID = 1
EXIT_NOT_LOCAL = 2


def cmd_sweep(args: argparse.Namespace) -> int:
    from kubetune.sweep_validation import load_sweep

    if not args.local:
        print(
            "kubetune sweep: only --local is available; on a cluster, `kubectl apply -f` the "
            "file (a FineTuneSweep)",
            file=sys.stderr,
        )
        return EXIT_NOT_LOCAL
    if args.parallel < 1:
        print("kubetune sweep: --parallel must be at least 1", file=sys.stderr)
        return EXIT_INVALID
    sweep, raw, problems = load_sweep(Path(args.file))
    for problem in problems:
        print(problem, file=sys.stderr)
    if sweep is None:
        return EXIT_INVALID
    from kubetune.sweep_local import LocalSweep, shown, summary
    from kubetune.sweep_study import Studies

    local = LocalSweep(raw=raw, storage=Path(args.storage), parallel=args.parallel)
    if args.fresh:
        _remove(local)
    why_not = local.check_same_sweep()
    if why_not:
        print(f"kubetune sweep: {why_not}", file=sys.stderr)
        return EXIT_INVALID
    status: dict[str, Any] = local.load_status()
    finished = status.get("phase") in (SweepPhase.succeeded.value, SweepPhase.failed.value)
    if finished:
        print(f"{sweep.metadata.name} finished before ({status['phase']}); its results:")
        code = 0 if status["phase"] == SweepPhase.succeeded.value else 1
    else:
        spec = sweep.spec
        pruner = f"{spec.pruner.type} pruner" if spec.pruner else "no pruner"
        print(
            f"== sweep {local.namespace}/{local.name}: {spec.max_trials} trials, "
            f"{args.parallel} at a time, {spec.algorithm.name}, {pruner}; "
            f"study {shown(local.dir / 'study.db')}",
            flush=True,
        )
        code = local.run(Studies(f"sqlite:///{local.dir / 'study.db'}"))
        status = local.load_status()
        if code == 130:
            return code
    print()
    summary(local, status, print)
    return code


def _remove(local: Any) -> None:
    """--fresh: every trial's run directory, then the sweep's study and status."""
    for job in local.trial_jobs():
        shutil.rmtree(local.trial_dir(job.number), ignore_errors=True)
    shutil.rmtree(local.dir, ignore_errors=True)


def add_sweep_command(commands: Any) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="run a FineTuneSweep (hyperparameter search) on this machine (--local)",
        description="Run a FineTuneSweep locally: Optuna asks for each trial's values, each "
        "trial trains as its FineTuneJob would (kubetune-train --plan), unpromising ones are "
        "stopped early, and the best parameters are printed, also as a FineTuneJob. Running "
        "it again resumes an interrupted sweep. Exit codes: 0 succeeded, 1 invalid file or "
        "the sweep failed, 130 interrupted.",
    )
    sweep.add_argument("file", metavar="FILE", help="a YAML file holding one FineTuneSweep")
    sweep.add_argument("--local", action="store_true", help="run on this machine")
    sweep.add_argument("--storage", default=LOCAL_STORAGE, help="study, checkpoint and output root")
    sweep.add_argument("--parallel", type=int, default=1, help="trials running at once")
    sweep.add_argument("--fresh", action="store_true", help="discard an earlier run of the sweep")
    sweep.set_defaults(func=cmd_sweep)


__all__ = ["add_sweep_command"]
