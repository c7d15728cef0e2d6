"""`kubetune list`, `status`, `logs` and `delete` for runs of `kubetune run --local`: read
from the run directories (kubetune.run_records), nothing else.

Formatting is pure (``list_table``, ``status_lines``); finding and following files is apart.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kubetune.local import format_duration, format_table
from kubetune.objectives import objective_pairs
from kubetune.run_records import LocalRunView, LocalState, attempt_log, read_run, run_dirs, shown


class RunNotFound(LookupError):
    """No local run by that name (or several, in different namespaces)."""


def find_run(storage: Path, name: str, namespace: str | None) -> Path:
    """The run directory of job NAME under the storage root; with no namespace given, the one
    namespace that has it."""
    if namespace is not None:
        run_dir = storage / namespace / name
        if run_dir in run_dirs(storage):
            return run_dir
        raise RunNotFound(
            f"no local run {namespace}/{name} under {storage}; `kubetune list` shows the runs there"
        )
    matches = [d for d in run_dirs(storage) if d.name == name]
    if not matches:
        raise RunNotFound(
            f"no local run named {name} under {storage}; `kubetune list` shows the runs there "
            "(--storage for another root)"
        )
    if len(matches) > 1:
        spaces = ", ".join(d.parent.name for d in matches)
        raise RunNotFound(f"{name} ran in several namespaces ({spaces}); add --namespace")
    return matches[0]


def dash(value: object) -> str:
    return "-" if value is None else str(value)


def list_table(views: list[LocalRunView]) -> list[str]:
    rows = [("NAMESPACE", "JOB", "METHOD", "STATE", "STEP", "LOSS", "DURATION", "OUTPUT")]
    for v in views:
        rows.append(
            (
                v.namespace,
                v.name,
                v.method,
                str(v.state),
                f"{dash(v.step)}/{dash(v.total_steps)}",
                dash(v.loss),
                format_duration(v.seconds),
                shown(v.output),
            )
        )
    return format_table(rows)


def status_lines(view: LocalRunView) -> list[str]:
    """`kubetune status JOB` for a local run: its state, progress and attempts."""
    resumed = f"step {view.resumed_from}" if view.resumed_from is not None else "- (from scratch)"
    lines = [
        f"job:          {view.namespace}/{view.name} ({view.method})",
        f"state:        {view.state!s}" + (f" (exit {view.exit_code})" if view.exit_code else ""),
        f"attempt:      {view.attempt}, resumed from {resumed}",
        f"step:         {dash(view.step)}/{dash(view.total_steps)}  loss {dash(view.loss)}",
        *([f"objectives:   {objective_pairs(view.objectives)}"] if view.objectives else []),
        f"duration:     {format_duration(view.seconds)} (all attempts)",
        "checkpoint:   " + (f"step {view.last_checkpoint}" if view.last_checkpoint else "-"),
        f"skipped rows: {view.skipped_rows}",
        f"export:       {view.export}",
        f"output:       {shown(view.output)}",
        f"log:          {shown(view.log)}",
        f"run dir:      {shown(view.run_dir)}",
    ]
    if view.attempts:
        rows = [("ATTEMPT", "STARTED", "DURATION", "RESUMED FROM", "FINAL STEP", "EXIT")]
        for a in view.attempts:
            rows.append(
                (
                    str(a["attempt"]),
                    dash(a["started"]),
                    format_duration(a["seconds"]),
                    dash(a["resumedFrom"]),
                    dash(a["finalStep"]),
                    dash(a["exitCode"]),
                )
            )
        lines += ["", *format_table(rows)]
    return lines


def next_hint(view: LocalRunView) -> str | None:
    """What to do about a run in this state."""
    if view.state == LocalState.interrupted:
        return f"run the same `kubetune run ... --local` to resume from step {view.last_checkpoint}"
    if view.state in (LocalState.failed, LocalState.stopped):
        return f"`kubetune logs {view.name}` shows what happened"
    return None


def log_path(view: LocalRunView, attempt: int | None) -> Path:
    number = attempt or view.attempt
    path = attempt_log(view.run_dir, number)
    if not path.exists():
        raise RunNotFound(f"{view.namespace}/{view.name} has no log for attempt {number}")
    return path


def follow(path: Path, running: Callable[[], bool], poll: float = 0.5) -> Iterator[bytes]:
    """The file's content, then what is appended to it while ``running()`` holds (tail -f,
    ending with the attempt)."""
    with path.open("rb") as log:
        while True:
            chunk = log.read(65536)
            if chunk:
                yield chunk
                continue
            if not running():
                rest = log.read()
                if rest:
                    yield rest
                return
            time.sleep(poll)


def still_running(run_dir: Path) -> Callable[[], bool]:
    return lambda: read_run(run_dir).state == LocalState.running


def delete_run(view: LocalRunView) -> None:
    """Remove the run directory: checkpoints, output, export, logs."""
    if view.state == LocalState.running:
        raise RunNotFound(
            f"{view.namespace}/{view.name} is running; stop it (Ctrl-C in its terminal) first"
        )
    shutil.rmtree(view.run_dir)
