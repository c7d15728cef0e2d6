"""The `kubetune` command line.

Every command fails the same way: an expected failure is a UserError (kubetune_trainer.errors),
shown by main() as one ``error:`` line and a hint, with its exit code; ``--debug`` (or
KUBETUNE_LOG_LEVEL=DEBUG) adds the traceback. ``kubetune validate`` prints one
``file:line: field.path: message`` line per problem and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kubetune import __version__
from kubetune.api import FineTuneJob, model_dependencies
from kubetune.checkpoints_cli import add_checkpoint_commands
from kubetune.inference_cli import add_inference_commands
from kubetune.manifest_yaml import Document
from kubetune.objectives import apply_objective_weights, parse_objective_weight
from kubetune.planner import LOCAL_STORAGE, dependency_output, make_plan
from kubetune.runs_cli import add_run_commands
from kubetune.sweep_cli import add_sweep_command
from kubetune.sweep_validation import load_sweeps
from kubetune.validation import (
    job_key,
    load_jobs,
    local_data_problems,
    pipeline_problems,
)
from kubetune_trainer.errors import UserError, debug_mode, report
from kubetune_trainer.exit_codes import EXIT_GATE_NOT_MET, EXIT_INVALID_PLAN, EXIT_USAGE

DEMO_PIPELINE = Path(__file__).with_name("demo") / "pipeline.yaml"


def cmd_validate(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.files]
    jobs, problems = load_jobs(paths)
    problems += pipeline_problems(jobs) + local_data_problems(jobs)
    sweeps, sweep_problems = load_sweeps(paths)
    problems += sweep_problems
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {len(paths)} file(s)", file=sys.stderr)
        return 1
    jobs = apply_objective_weights(jobs, args.objective_weight)
    if args.plan:
        by_name = {job_key(job): job for _, job in jobs}
        plans = {}
        for _, job in jobs:
            namespace = job.job_ref().namespace

            def resolve(name: str, namespace: str = namespace) -> str | None:
                other = by_name.get((namespace, name))
                return dependency_output(args.storage, other) if other else None

            plan = make_plan(
                job,
                default_storage=args.storage,
                resolve_job_output=resolve if _all_resolvable(job, by_name) else None,
            )
            plans["/".join(job_key(job))] = json.loads(plan.to_json())
        out = next(iter(plans.values())) if len(plans) == 1 else plans
        print(json.dumps(out, indent=2))
    else:
        for doc, job in jobs:
            print(f"{doc.file}: {'/'.join(job_key(job))} ({job.spec.method}) is valid")
        for doc, sweep in sweeps:
            print(f"{doc.file}: {sweep.namespace}/{sweep.metadata.name} (FineTuneSweep) is valid")
    return 0


def _all_resolvable(job: FineTuneJob, by_name: dict[tuple[str, str], FineTuneJob]) -> bool:
    namespace = job.job_ref().namespace
    return all((namespace, target) in by_name for _, target in model_dependencies(job.spec))


class InvalidManifests(UserError):
    """FineTuneJob files with problems (each printed on its own line first): nothing ran."""

    exit_code = EXIT_INVALID_PLAN


def checked_jobs(paths: list[Path]) -> list[tuple[Document, FineTuneJob]]:
    """The jobs of the files, or InvalidManifests after printing every problem."""
    jobs, problems = load_jobs(paths)
    problems += pipeline_problems(jobs) + local_data_problems(jobs)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        raise InvalidManifests(
            f"{len(problems)} problem(s) in {len(paths)} file(s); nothing ran",
            hint=f"kubetune validate {' '.join(map(str, paths))} checks files without running",
        )
    return jobs


def cmd_run(args: argparse.Namespace) -> int:
    if not args.local:
        raise UserError(
            "kubetune run: only --local is available",
            hint="on a cluster, `kubectl apply -f` the file",
            exit_code=EXIT_USAGE,
        )
    paths = [Path(p) for p in args.files] or [DEMO_PIPELINE]
    jobs = apply_objective_weights(checked_jobs(paths), args.objective_weight)
    from kubetune.local import run_jobs, summary_table

    runs = run_jobs(
        jobs,
        storage=args.storage,
        workers=args.workers,
        fresh=args.fresh,
        mode=args.mode,
    )
    print(summary_table(runs))
    if not args.files:
        from kubetune.local import demo_report

        print(demo_report(runs))
    return next((run.exit_code for run in runs if run.exit_code), 0)


def cmd_export(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.files] or [DEMO_PIPELINE]
    jobs = checked_jobs(paths)
    selected = [(d, job) for d, job in jobs if not args.job or job.metadata.name in args.job]
    if not selected:
        names = ", ".join(job.metadata.name for _, job in jobs)
        raise UserError(
            f"no job named {', '.join(args.job)} in {' '.join(map(str, paths))}",
            hint=f"jobs there: {names}",
            exit_code=EXIT_USAGE,
        )
    from kubetune.local import artifact_lines, export_jobs, export_state

    runs, untrained = export_jobs(selected, storage=args.storage, formats=args.format)
    for run in runs:
        print(f"{run.job.metadata.name}: export {export_state(run.export_code)}")
        print("\n".join(artifact_lines(run)))
    if untrained:
        command = " ".join(["kubetune run --local", *args.files, "--storage", args.storage])
        raise UserError(
            f"no trained model for {', '.join(untrained)} under {args.storage}; "
            + ("nothing to export" if not runs else "those were not exported"),
            hint=f"train first: {command}",
        )
    return next((r.export_code for r in runs if r.export_code not in (0, EXIT_GATE_NOT_MET)), 0)


def cmd_compare(args: argparse.Namespace) -> int:
    from kubetune.compare import CompareError, compare_runs

    try:
        text, page = compare_runs(Path(args.storage), args.jobs)
    except CompareError as err:
        print(f"kubetune compare: {err}", file=sys.stderr)
        return 1
    print(text)
    if args.html:
        Path(args.html).write_text(page)
        print(f"report: {args.html}")
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    from kubetune.crd import render, render_sweep

    sys.stdout.write(render() + "---\n" + render_sweep())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune", description="Fine-tune language models on Kubernetes, or locally."
    )
    parser.add_argument("--version", action="version", version=f"kubetune {__version__}")
    add_debug_option(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate",
        help="check FineTuneJob files; print the resolved plan with --plan",
        description="Check FineTuneJob YAML files. Exit 0 when all are valid; otherwise print "
        "one line per problem (file:line: field.path: message) and exit 1.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument(
        "--plan", action="store_true", help="print the resolved plan (JSON) of each job"
    )
    validate.add_argument(
        "--storage",
        default=LOCAL_STORAGE,
        help=f"storage root for jobs that name none (default: {LOCAL_STORAGE})",
    )
    add_objective_weight_option(validate)
    validate.set_defaults(func=cmd_validate)

    run = commands.add_parser(
        "run",
        help="train FineTuneJobs on this machine (--local); no FILE runs the built-in demo",
        description="Run FineTuneJobs locally, in dependency order, each exactly as a pod "
        "would (kubetune-train --plan). Running a job again resumes it from its latest "
        "checkpoint.",
    )
    run.add_argument("files", nargs="*", metavar="FILE")
    run.add_argument("--local", action="store_true", help="run on this machine")
    run.add_argument("--storage", default=LOCAL_STORAGE, help="checkpoint and output root")
    run.add_argument("--workers", type=int, default=1, help="training processes (Ray Train)")
    run.add_argument("--fresh", action="store_true", help="discard earlier checkpoints")
    run.add_argument("--mode", choices=["auto", "single", "ray"], default="auto")
    add_objective_weight_option(run)
    run.set_defaults(func=cmd_run)

    export = commands.add_parser(
        "export",
        help="export finished local runs (merged safetensors, GGUF, ONNX), verified",
        description="Run the export stage of finished local runs, exactly as the Exporting "
        "phase does in the cluster: build each artifact of spec.export (or --format), verify "
        "it with an independent loader and write manifest.json beside them.",
    )
    export.add_argument("files", nargs="*", metavar="FILE", help="default: the built-in demo")
    export.add_argument("--job", action="append", help="only this job (repeatable)")
    export.add_argument(
        "--format",
        action="append",
        choices=["safetensors", "gguf", "onnx"],
        help="override spec.export.formats (repeatable)",
    )
    export.add_argument("--storage", default=LOCAL_STORAGE, help="the runs' storage root")
    export.set_defaults(func=cmd_export)

    compare = commands.add_parser(
        "compare",
        help="finished local runs side by side (eval results with intervals, loss curves)",
        description="Compare finished local runs: an eval job's models side by side (each "
        "value with its interval, each difference to the baseline with its paired interval), "
        "training jobs by their last held-out metrics; --html writes a self-contained report "
        "with plots and loss curves.",
    )
    compare.add_argument("jobs", nargs="+", metavar="JOB", help="NAME or NAMESPACE/NAME")
    compare.add_argument("--storage", default=LOCAL_STORAGE, help="the runs' storage root")
    compare.add_argument("--html", metavar="FILE", help="also write the HTML report here")
    compare.set_defaults(func=cmd_compare)

    crd = commands.add_parser(
        "crd", help="print the FineTuneJob and FineTuneSweep CustomResourceDefinitions"
    )
    crd.set_defaults(func=cmd_crd)
    add_inference_commands(commands)
    add_checkpoint_commands(commands)
    add_run_commands(commands)
    add_sweep_command(commands)
    for command in commands.choices.values():
        add_debug_option(command, default=argparse.SUPPRESS)
    return parser


def add_objective_weight_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--objective-weight",
        action="append",
        default=[],
        type=parse_objective_weight,
        metavar="NAME=WEIGHT",
        help="set the weight of the reward source named NAME (repeatable), "
        "e.g. --objective-weight fluency=0.3",
    )


def add_debug_option(parser: argparse.ArgumentParser, default: object = False) -> None:
    """--debug, accepted before or after the command name."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="print the traceback of an expected failure (also KUBETUNE_LOG_LEVEL=DEBUG)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:  # the one place a failure becomes an error line and an exit code
        return report(err, debug=debug_mode(args.debug))


if __name__ == "__main__":
    sys.exit(main())
