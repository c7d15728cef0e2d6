"""`kubetune list`, `status`, `logs`, `delete` and `submit`: see and manage runs.

Without --cluster or --context they read the local runs of `kubetune run --local` (under
--storage, default ./runs). With --cluster (the kubeconfig's current context) or --context
NAME they talk to that cluster's FineTuneJobs; `submit` always does. `-o json` prints what
the table shows, as JSON.

Exit codes: 0 done; 1 the cluster refused or a run failed to delete; 2 no such job (or a bad
command line).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from kubetune.planner import LOCAL_STORAGE

EXIT_NOT_FOUND = 2


def _cluster_target(args: argparse.Namespace):  # -> runs_cluster.Target
    from kubetune.runs_cluster import connect

    return connect(args.context, args.namespace, args.kubeconfig)


def on_cluster(args: argparse.Namespace) -> bool:
    return bool(args.cluster or args.context)


def fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# --------------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace) -> int:
    if on_cluster(args):
        from kubetune.runs_cluster import ClusterError, format_rows, list_jobs, list_table

        try:
            jobs = list_jobs(_cluster_target(args), all_namespaces=args.all_namespaces)
        except ClusterError as err:
            return fail(str(err), 1)
        if args.output == "json":
            print_json(jobs)
        elif not jobs:
            print("no FineTuneJobs found")
        else:
            now = datetime.now(UTC)
            print("\n".join(format_rows(list_table(jobs, now, namespaces=args.all_namespaces))))
        return 0
    from kubetune.run_records import read_run, run_dirs
    from kubetune.runs_local import list_table

    views = [read_run(d) for d in run_dirs(Path(args.storage))]
    if args.namespace and not args.all_namespaces:
        views = [v for v in views if v.namespace == args.namespace]
    if args.output == "json":
        print_json([v.to_dict() for v in views])
    elif not views:
        print(f"no local runs under {args.storage} (`kubetune run JOB.yaml --local` makes one)")
    else:
        print("\n".join(list_table(views)))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if on_cluster(args):
        from kubetune.runs_cluster import ClusterError, get_job, job_events, status_lines

        try:
            target = _cluster_target(args)
            job = get_job(target, args.job)
            events = job_events(target, args.job)
        except ClusterError as err:
            return fail(str(err), EXIT_NOT_FOUND if "no finetunejob" in str(err) else 1)
        if args.output == "json":
            print_json({"job": job, "events": events})
        else:
            print("\n".join(status_lines(job, events, datetime.now(UTC))))
        return 0
    from kubetune.run_records import read_run
    from kubetune.runs_local import RunNotFound, find_run, next_hint, status_lines

    try:
        view = read_run(find_run(Path(args.storage), args.job, args.namespace))
    except RunNotFound as err:
        return fail(str(err), EXIT_NOT_FOUND)
    if args.output == "json":
        print_json(view.to_dict())
        return 0
    print("\n".join(status_lines(view)))
    hint = next_hint(view)
    if hint:
        print(f"\nnext: {hint}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    if on_cluster(args):
        from kubetune.runs_cluster import ClusterError, pod_log, trainer_pod

        try:
            target = _cluster_target(args)
            for chunk in pod_log(target, trainer_pod(target, args.job), follow=args.follow):
                out.write(chunk)
                out.flush()
        except ClusterError as err:
            return fail(str(err), EXIT_NOT_FOUND if "no finetunejob" in str(err) else 1)
        except KeyboardInterrupt:
            return 0
        return 0
    from kubetune.run_records import LocalState, read_run
    from kubetune.runs_local import RunNotFound, find_run, follow, log_path, still_running

    try:
        view = read_run(find_run(Path(args.storage), args.job, args.namespace))
        path = log_path(view, args.attempt)
    except RunNotFound as err:
        return fail(str(err), EXIT_NOT_FOUND)
    following = args.follow and view.state == LocalState.running
    following = following and args.attempt in (None, view.attempt)
    running = still_running(view.run_dir) if following else (lambda: False)
    try:
        for chunk in follow(path, running):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    if on_cluster(args):
        from kubetune.runs_cluster import ClusterError, delete_job

        try:
            target = _cluster_target(args)
            delete_job(target, args.job)
        except ClusterError as err:
            return fail(str(err), EXIT_NOT_FOUND if "no finetunejob" in str(err) else 1)
        print(f"finetunejob {target.namespace}/{args.job} deleted (its pods and children go too)")
        return 0
    from kubetune.run_records import read_run
    from kubetune.runs_local import RunNotFound, delete_run, find_run

    try:
        view = read_run(find_run(Path(args.storage), args.job, args.namespace))
        delete_run(view)
    except RunNotFound as err:
        return fail(str(err), EXIT_NOT_FOUND)
    print(f"deleted {view.namespace}/{view.name} ({view.run_dir}: checkpoints, output, logs)")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from kubetune.runs_cluster import ClusterError, submit

    try:
        target = _cluster_target(args)
        created = submit(target, [Path(p) for p in args.files])
    except ClusterError as err:
        return fail(str(err), 1)
    for name in created:
        print(f"finetunejob {name} created")
    first = created[0].split("/", 1) if created else None
    if first:
        where = f" --context {target.context} --namespace {first[0]}"
        print(
            f"next: kubetune status {first[1]}{where}   (or `kubetune logs {first[1]}{where} -f`)"
        )
    return 0


# --------------------------------------------------------------------------- parser


def _where_arguments(parser: argparse.ArgumentParser, *, local: bool = True) -> None:
    parser.add_argument(
        "--namespace", "-n", help="namespace (local: the job's namespace directory)"
    )
    place = parser.add_argument_group("cluster")
    place.add_argument(
        "--cluster", action="store_true", help="the cluster of the kubeconfig's current context"
    )
    place.add_argument("--context", help="this kubeconfig context's cluster")
    place.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube)")
    if local:
        parser.add_argument(
            "--storage", default=LOCAL_STORAGE, help="where local runs are (as for `kubetune run`)"
        )


def _output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")


def add_run_commands(commands: argparse._SubParsersAction) -> None:
    """Register list, status, logs, delete and submit on the `kubetune` subparsers."""
    listing = commands.add_parser(
        "list",
        help="list runs: local ones, or a cluster's FineTuneJobs (--cluster/--context)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _where_arguments(listing)
    listing.add_argument(
        "-A", "--all-namespaces", action="store_true", help="every namespace (the default locally)"
    )
    _output_argument(listing)
    listing.set_defaults(func=cmd_list)

    status = commands.add_parser(
        "status", help="a run's state, progress, attempts (cluster: conditions and events)"
    )
    status.add_argument("job", metavar="JOB")
    _where_arguments(status)
    _output_argument(status)
    status.set_defaults(func=cmd_status)

    logs = commands.add_parser(
        "logs", help="a run's log (local: its latest attempt; cluster: pod 0 of the attempt)"
    )
    logs.add_argument("job", metavar="JOB")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing as it grows")
    logs.add_argument("--attempt", type=int, help="local runs: this attempt's log")
    _where_arguments(logs)
    logs.set_defaults(func=cmd_logs)

    delete = commands.add_parser(
        "delete", help="delete a run (local: its directory; cluster: the FineTuneJob)"
    )
    delete.add_argument("job", metavar="JOB")
    _where_arguments(delete)
    delete.set_defaults(func=cmd_delete)

    submit = commands.add_parser(
        "submit",
        help="validate FineTuneJob files, then create them on a cluster",
        description="Check the files as `kubetune validate` does; when every job is valid, "
        "create each one in the cluster of the current (or --context) kubeconfig context.",
    )
    submit.add_argument("files", nargs="+", metavar="FILE")
    _where_arguments(submit, local=False)
    submit.set_defaults(func=cmd_submit, cluster=True)
