"""The `kubetune` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kubetune import __version__
from kubetune.api import FineTuneJob, model_dependencies
from kubetune.inference_cli import add_inference_commands
from kubetune.planner import LOCAL_STORAGE, dependency_output, make_plan
from kubetune.validation import job_key, load_jobs, pipeline_problems

DEMO_PIPELINE = Path(__file__).with_name("demo") / "pipeline.yaml"


def cmd_validate(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.files]
    jobs, problems = load_jobs(paths)
    problems += pipeline_problems(jobs)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {len(paths)} file(s)", file=sys.stderr)
        return 1
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
    return 0


def _all_resolvable(job: FineTuneJob, by_name: dict[tuple[str, str], FineTuneJob]) -> bool:
    namespace = job.job_ref().namespace
    return all((namespace, target) in by_name for _, target in model_dependencies(job.spec))


def cmd_run(args: argparse.Namespace) -> int:
    if not args.local:
        print(
            "kubetune run: only --local is available; on a cluster, `kubectl apply -f` the file",
            file=sys.stderr,
        )
        return 2
    paths = [Path(p) for p in args.files] or [DEMO_PIPELINE]
    jobs, problems = load_jobs(paths)
    problems += pipeline_problems(jobs)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    from kubetune.local import run_jobs, summary_table

    runs = run_jobs(
        [job for _, job in jobs],
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
    jobs, problems = load_jobs(paths)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    selected = [job for _, job in jobs if not args.job or job.metadata.name in args.job]
    if not selected:
        print(f"kubetune export: no job named {', '.join(args.job)}", file=sys.stderr)
        return 1
    from kubetune.local import artifact_lines, export_jobs, export_state

    runs = export_jobs(selected, storage=args.storage, formats=args.format)
    for run in runs:
        print(f"{run.job.metadata.name}: export {export_state(run.export_code)}")
        print("\n".join(artifact_lines(run)))
    from kubetune_trainer.exit_codes import EXIT_GATE_NOT_MET

    return next((r.export_code for r in runs if r.export_code not in (0, EXIT_GATE_NOT_MET)), 0)


def cmd_crd(args: argparse.Namespace) -> int:
    from kubetune.crd import render

    sys.stdout.write(render())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune", description="Fine-tune language models on Kubernetes, or locally."
    )
    parser.add_argument("--version", action="version", version=f"kubetune {__version__}")
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

    crd = commands.add_parser("crd", help="print the FineTuneJob CustomResourceDefinition")
    crd.set_defaults(func=cmd_crd)
    add_inference_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
