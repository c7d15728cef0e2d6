"""`kubetune-train --plan plan.json`: the trainer's only entry point, in a pod or locally."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from kubetune_trainer.exit_codes import EXIT_FAILED, EXIT_INVALID_PLAN
from kubetune_trainer.plan import Plan

log = logging.getLogger("kubetune.trainer")


def read_plan(path: Path) -> Plan:
    return Plan.from_json(path.read_text())


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
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("KUBETUNE_LOG_LEVEL", "INFO"), format="%(asctime)s %(message)s"
    )
    try:
        plan = read_plan(args.plan)
    except (OSError, ValidationError, ValueError) as err:
        print(f"kubetune-train: invalid plan {args.plan}: {err}", file=sys.stderr)
        return EXIT_INVALID_PLAN
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

    try:
        return run_plan(plan, mode=args.mode, local_run=args.local)
    except Exception:
        log.exception("event=failed job=%s/%s", plan.job.namespace, plan.job.name)
        return EXIT_FAILED


def run_export_stage(plan: Plan, *, check: bool) -> int:
    if plan.recipe.export is None:
        print(
            f"kubetune-train: job {plan.job.name} has no spec.export; nothing to export",
            file=sys.stderr,
        )
        return EXIT_INVALID_PLAN
    if check:
        print(f"export plan for {plan.job.namespace}/{plan.job.name} is valid")
        return 0
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from kubetune_trainer.export.stage import main as export_main

    try:
        return export_main(plan)
    except Exception:
        log.exception("event=export_failed job=%s/%s", plan.job.namespace, plan.job.name)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
