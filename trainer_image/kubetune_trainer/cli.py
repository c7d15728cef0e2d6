"""`kubetune-train --plan plan.json`: the trainer's only entry point, in a pod or locally.

Its exit code is the contract with the operator (see exit_codes); an expected failure prints
one ``error:`` line (see errors) and leaves it as the pod's termination message."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from kubetune_trainer.errors import UserError, debug_mode, report
from kubetune_trainer.exit_codes import EXIT_INTERRUPTED, EXIT_INVALID_PLAN
from kubetune_trainer.plan import Plan
from kubetune_trainer.reporting.logs import configure_logging, log_level

log = logging.getLogger("kubetune.trainer")


class InvalidPlan(UserError):
    """The plan cannot be read, or this trainer cannot run it (exit 78: final)."""

    exit_code = EXIT_INVALID_PLAN


def read_plan(path: Path) -> Plan:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidPlan(f"invalid plan {path}: cannot read it: {err}") from err
    try:
        return Plan.from_json(text)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in err.errors()
        )
        raise InvalidPlan(f"invalid plan {path}: {problems}") from err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetune-train", description=__doc__)
    parser.add_argument("--plan", required=True, type=Path, help="the plan JSON")
    parser.add_argument(
        "--mode",
        choices=["auto", "single", "ray"],
        default="auto",
        help="single: in this process; ray: Ray Train workers; auto: single for one worker on "
        "local storage",
    )
    parser.add_argument("--local", action="store_true", help="interactive run: progress bar")
    parser.add_argument("--check", action="store_true", help="only validate the plan")
    parser.add_argument(
        "--stage",
        choices=["train", "export"],
        default="train",
        help="train: the plan's method; export: the artifacts of a finished run (spec.export)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of an expected failure (also KUBETUNE_LOG_LEVEL=DEBUG)",
    )
    args = parser.parse_args(argv)
    configure_logging()
    try:
        return run(args)
    except KeyboardInterrupt:
        # A second Ctrl-C (the first one asks for a checkpoint): stop at once.
        print("kubetune-train: interrupted again; stopped without saving", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # the one place a failure becomes an error line and an exit code
        return report(err, debug=debug_mode(args.debug))


def run(args: argparse.Namespace) -> int:
    plan = read_plan(args.plan)
    if not plan.scaling.use_gpu:
        # DeepSpeed picks its accelerator when first imported (by transformers, too); told,
        # it does not guess and warn about it.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if args.stage == "export":
        return run_export_stage(plan, check=args.check)
    if args.check:
        print(
            f"{args.plan}: plan for {plan.job.namespace}/{plan.job.name} "
            f"({plan.recipe.method}, attempt {plan.attempt}) is valid"
        )
        return 0
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    from kubetune_trainer.runtime.launch import run_plan

    return run_plan(plan, mode=args.mode, local_run=args.local)


def run_export_stage(plan: Plan, *, check: bool) -> int:
    if plan.recipe.export is None:
        raise InvalidPlan(f"job {plan.job.name} has no spec.export; nothing to export")
    if check:
        print(f"export plan for {plan.job.namespace}/{plan.job.name} is valid")
        return 0
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if log_level() != "DEBUG":
        # The libraries' own progress bars (loading a GGUF file back to verify it, ...): a
        # line per update in a pod's log. The stage reports each step itself.
        os.environ.setdefault("TQDM_DISABLE", "1")
    from kubetune_trainer.export.stage import main as export_main

    return export_main(plan)


if __name__ == "__main__":
    sys.exit(main())
