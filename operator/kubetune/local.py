"""`kubetune run --local`: the same FineTuneJob YAML, trained on this machine.

Jobs run in dependency order (finetunejob:// references resolve to the outputs of jobs run
before), each as `kubetune-train --plan` in a child process: exactly the contract a pod gets.
Running a job again resumes it from its latest checkpoint as the next attempt; --fresh starts
over.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kubetune.api import FineTuneJob, model_dependencies
from kubetune.manifest_yaml import Document
from kubetune.planner import UnresolvedDependency, dependency_output, make_plan
from kubetune.run_records import (
    LocalState,
    attempt_log,
    attempt_record_path,
    latest_checkpoint_step,
    now_rfc3339,
    read_json,
    read_run,
    shown,
    write_json,
)
from kubetune.validation import data_locations, resolve_local_data
from kubetune_trainer.evaluation.report import REPORT_HTML, REPORT_MARKDOWN
from kubetune_trainer.evaluation.suite import RESULTS_FILE, SAMPLES_DIR
from kubetune_trainer.exit_codes import (
    EXIT_GATE_NOT_MET,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PREEMPTED,
    FINAL_EXIT_CODES,
    exit_meaning,
)
from kubetune_trainer.plan import Plan, Scaling, uri_scheme
from kubetune_trainer.training.checkpoint_fs import CheckpointStore


@dataclass
class LocalRun:
    job: FineTuneJob
    plan: Plan
    run_dir: Path
    exit_code: int
    export_code: int | None = None
    """Exit code of the export stage; None when the job asks for no export."""
    resumed_from: int | None = None
    """The step this run resumed from; None when it started from scratch."""
    already_finished: bool = False
    """Finished by an earlier invocation: not trained again."""


def dependency_order(jobs: list[FineTuneJob]) -> list[FineTuneJob]:
    """Jobs sorted so every job comes after the jobs whose output it uses (cycles are refused
    earlier, by validation)."""
    by_name = {job.metadata.name: job for job in jobs}
    ordered: list[FineTuneJob] = []
    done: set[str] = set()

    def visit(job: FineTuneJob) -> None:
        if job.metadata.name in done:
            return
        done.add(job.metadata.name)
        for _, target in model_dependencies(job.spec):
            if target in by_name:
                visit(by_name[target])
        ordered.append(job)

    for job in jobs:
        visit(job)
    return ordered


def local_job(job: FineTuneJob, manifest: Path | None = None) -> FineTuneJob:
    """The job with cluster-only storage (pvc://) replaced by the local default, and relative
    data paths read from the manifest's directory (as ``kubetune validate`` checks them)."""
    job = job.model_copy(deep=True)
    if manifest is not None:
        for _, source in data_locations(job):
            path = resolve_local_data(source.uri, manifest.parent)
            if path is not None:
                source.uri = str(path.resolve())
    data = job.model_dump(by_alias=True, exclude_none=True)
    checkpoint = data["spec"].get("checkpoint", {})
    if checkpoint.get("storage") and uri_scheme(checkpoint["storage"]) == "pvc":
        print(f"{job.metadata.name}: pvc:// checkpoint storage -> local storage for this run")
        checkpoint.pop("storage")
    return FineTuneJob.model_validate(data)


def local_scaling(workers: int) -> Scaling:
    import torch

    cuda = torch.cuda.is_available()
    return Scaling(workers=workers, devices_per_worker=1 if cuda else 0, nodes=1, use_gpu=cuda)


def run_jobs(
    documents: list[tuple[Document, FineTuneJob]],
    *,
    storage: str,
    workers: int = 1,
    fresh: bool = False,
    mode: str = "auto",
) -> list[LocalRun]:
    """Run the jobs of the documents (from kubetune.validation.load_jobs) in dependency
    order; stop at the first that fails."""
    storage_root = str(Path(storage).resolve())
    finished: dict[tuple[str, str], str] = {}
    runs: list[LocalRun] = []
    scaling = local_scaling(workers)
    jobs = [local_job(job, Path(doc.file)) for doc, job in documents]
    for job in dependency_order(jobs):
        ref = job.job_ref()
        run_dir = Path(storage_root) / ref.namespace / ref.name
        if fresh and run_dir.exists():
            shutil.rmtree(run_dir)

        previous = read_run(run_dir)
        if previous.state == LocalState.succeeded and previous.output is not None:
            print(f"{ref.namespace}/{ref.name}: already finished — `--fresh` to train again")
            plan = local_plan(job, jobs, finished, storage_root, previous.attempt, scaling)
            runs.append(LocalRun(job, plan, run_dir, 0, already_finished=True))
            finished[(ref.namespace, ref.name)] = dependency_output(storage_root, job)
            if plan.recipe.export is not None and previous.export == "-":
                plan_path = run_dir / f"plan-attempt-{previous.attempt}.json"
                runs[-1].export_code = run_export_stage(plan_path, run_dir)
            continue

        attempt = CheckpointStore(run_dir).latest_attempt() + 1
        plan = local_plan(job, jobs, finished, storage_root, attempt, scaling)
        run_dir.mkdir(parents=True, exist_ok=True)
        plan_path = run_dir / f"plan-attempt-{attempt}.json"
        plan_path.write_text(plan.to_json())
        resume_step = latest_checkpoint_step(run_dir)
        print(
            f"== {ref.namespace}/{ref.name}: {plan.recipe.method} on {plan.recipe.model.source}, "
            f"{workers} worker(s) -> {shown(run_dir)}",
            flush=True,
        )
        if resume_step is not None:
            print(f"{ref.name}: resuming from step {resume_step} (attempt {attempt})", flush=True)
        command = [sys.executable, "-m", "kubetune_trainer.cli", "--plan", str(plan_path)]
        command += ["--local", "--mode", mode]
        code = run_attempt(
            command, trainer_env(run_dir), run_dir, attempt, resumed_from=resume_step
        )
        runs.append(LocalRun(job, plan, run_dir, code, resumed_from=resume_step))
        if code != 0:
            print(stop_message(ref.name, code, run_dir, attempt), file=sys.stderr, flush=True)
            break
        finished[(ref.namespace, ref.name)] = dependency_output(storage_root, job)
        if plan.recipe.export is not None:
            runs[-1].export_code = run_export_stage(plan_path, run_dir)
            if runs[-1].export_code not in (EXIT_OK, EXIT_GATE_NOT_MET):
                break
    return runs


def stop_message(name: str, code: int, run_dir: Path, attempt: int) -> str:
    """What a user reads when a job stopped before the end, and what to do next."""
    if code == EXIT_PREEMPTED:
        result = read_json(run_dir / f"result-attempt-{attempt}.json") or {}
        step = result.get("finalStep", latest_checkpoint_step(run_dir))
        return f"{name}: interrupted at step {step}; run the same command to resume"
    checkpoint = latest_checkpoint_step(run_dir)
    resume = (
        f"the same command resumes from step {checkpoint}"
        if checkpoint is not None
        else "the same command starts it again"
    )
    if code == EXIT_INTERRUPTED or code < 0:
        return f"{name}: stopped at once, without saving; {resume}"
    log = attempt_log(run_dir, attempt)
    if code in FINAL_EXIT_CODES:  # the same input fails the same way: fix it first
        resume = "fix what the error line above names, then run the same command"
    exited = f"kubetune-train exited with {code} ({exit_meaning(code)})"
    return f"{name}: {exited}; its log: {log}; {resume}"


def local_plan(
    job: FineTuneJob,
    jobs: list[FineTuneJob],
    finished: dict[tuple[str, str], str],
    storage_root: str,
    attempt: int,
    scaling: Scaling | None,
) -> Plan:
    """The plan a pod of this job would get, with finetunejob:// references resolved to the
    outputs of jobs finished in this invocation or earlier under the same storage root."""
    ref = job.job_ref()

    def resolve(name: str, namespace: str = ref.namespace) -> str | None:
        if (namespace, name) in finished:
            return finished[(namespace, name)]
        other = next((j for j in jobs if j.metadata.name == name), None)
        if other is not None:
            return None  # in this invocation but not finished: should not happen (order)
        guess = Path(storage_root) / namespace / name / "output"
        return str(guess) if guess.is_dir() else None

    return make_plan(
        job,
        attempt=attempt,
        default_storage=storage_root,
        resolve_job_output=resolve,
        scaling=scaling,
    )


def trainer_env(run_dir: Path) -> dict[str, str]:
    return os.environ | {
        "KUBETUNE_PROGRESS_FILE": str(run_dir / "progress.json"),
        "KUBETUNE_PROGRESS_INTERVAL": os.environ.get("KUBETUNE_PROGRESS_INTERVAL", "2"),
        "KUBETUNE_METRICS_PORT": os.environ.get("KUBETUNE_METRICS_PORT", "0"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def run_export_stage(plan_path: Path, run_dir: Path) -> int:
    """``kubetune-train --stage export`` on a finished run, as the export Job runs it."""
    print(f"== export of {plan_path.parent.name}", flush=True)
    command = [sys.executable, "-m", "kubetune_trainer.cli", "--plan", str(plan_path)]
    command += ["--stage", "export", "--local"]
    code = run_forwarding_signals(command, trainer_env(run_dir), run_dir / "logs" / "export.log")
    name = plan_path.parent.name
    if code in (EXIT_PREEMPTED, EXIT_INTERRUPTED):
        print(f"{name}: export interrupted; run the same command to export", file=sys.stderr)
    elif code not in (EXIT_OK, EXIT_GATE_NOT_MET):
        log = run_dir / "logs" / "export.log"
        print(f"{name}: export exited with {code}; its log: {log}", file=sys.stderr)
    return code


def export_jobs(
    documents: list[tuple[Document, FineTuneJob]],
    *,
    storage: str,
    formats: list[str] | None = None,
) -> tuple[list[LocalRun], list[str]]:
    """Export finished local runs again (``kubetune export``): e.g. after adding a format.
    Returns the exports run, and the names of the jobs that have no trained model yet."""
    storage_root = str(Path(storage).resolve())
    runs: list[LocalRun] = []
    untrained: list[str] = []
    jobs = [job for _, job in documents]
    local_jobs = [local_job(job, Path(doc.file)) for doc, job in documents]
    finished = {
        (job.job_ref().namespace, job.job_ref().name): dependency_output(storage_root, job)
        for job in local_jobs
        if Path(dependency_output(storage_root, job)).is_dir()
    }
    for job in dependency_order(local_jobs):
        if formats:
            job = with_export_formats(job, formats)
        ref = job.job_ref()
        run_dir = Path(storage_root) / ref.namespace / ref.name
        if job.spec.export is None:
            print(f"{ref.name}: no spec.export and no --format; skipped")
            continue
        attempt = CheckpointStore(run_dir).latest_attempt()
        try:
            plan = local_plan(job, jobs, finished, storage_root, max(attempt, 1), None)
        except UnresolvedDependency:  # its input job has not been trained either
            untrained.append(ref.name)
            continue
        if not Path(plan.storage.output_dir).is_dir():
            untrained.append(ref.name)
            continue
        plan_path = run_dir / f"plan-export-attempt-{plan.attempt}.json"
        plan_path.write_text(plan.to_json())
        runs.append(LocalRun(job, plan, run_dir, 0, run_export_stage(plan_path, run_dir)))
    return runs, untrained


def with_export_formats(job: FineTuneJob, formats: list[str]) -> FineTuneJob:
    data = job.model_dump(by_alias=True, exclude_none=True)
    data["spec"].setdefault("export", {})["formats"] = formats
    return FineTuneJob.model_validate(data)


def run_attempt(
    command: list[str],
    env: dict[str, str],
    run_dir: Path,
    attempt: int,
    *,
    resumed_from: int | None = None,
) -> int:
    """Run one attempt of the trainer, its output shown here and kept in
    ``logs/attempt-<N>.log``, its course in ``logs/attempt-<N>.json``."""
    record_path = attempt_record_path(run_dir, attempt)
    record: dict[str, object] = {
        "attempt": attempt,
        "command": command,
        "started": now_rfc3339(),
        "resumedFrom": resumed_from,
    }
    code = run_forwarding_signals(
        command,
        env,
        attempt_log(run_dir, attempt),
        on_start=lambda pid: write_json(record_path, record | {"pid": pid}),
    )
    write_json(record_path, record | {"finished": now_rfc3339(), "exitCode": code})
    return code


def run_forwarding_signals(
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    *,
    on_start: Callable[[int], None] | None = None,
) -> int:
    """Run the trainer in its own process group, so a Ctrl-C reaches this process alone (not
    the trainer, nor the Ray processes it starts, which would die of it). The first SIGINT,
    SIGTERM or SIGHUP is passed on as SIGTERM: the trainer saves a checkpoint at the next step
    and stops, exactly as in a pod. A second SIGINT kills the trainer's process group at once
    (exit code EXIT_INTERRUPTED)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(
        command,
        env=env | {"PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        process_group=0,
    )
    if on_start is not None:
        on_start(child.pid)
    stop_requested = False
    killed = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stop_requested, killed
        if not stop_requested:
            stop_requested = True
            print(
                "\ninterrupted: saving a checkpoint at the next step "
                "(Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
            child.send_signal(signal.SIGTERM)
        elif signum == signal.SIGINT and not killed:
            killed = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        with open(log_path, "ab") as log:
            # Both streams reach the terminal as they are (an error line stays on stderr) and
            # the one log, line by line.
            lock = threading.Lock()
            errors = threading.Thread(
                target=copy_output,
                args=(child.stderr, sys.stderr.buffer, LogWriter(log, lock)),
                daemon=True,
            )
            errors.start()
            copy_output(child.stdout, sys.stdout.buffer, LogWriter(log, lock))  # type: ignore[arg-type]
            errors.join()
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return EXIT_INTERRUPTED if killed else code


class LogWriter:
    """Writes a terminal stream to a log file line by line, keeping only the last state of a
    line redrawn with carriage returns (a progress bar leaves one line, not thousands)."""

    def __init__(self, out: BinaryIO, lock: threading.Lock | None = None) -> None:
        self.out = out
        self.lock = lock or threading.Lock()
        """Shared by the writers of one file (a child's stdout and stderr)."""
        self._line = b""

    def write(self, data: bytes) -> None:
        lines = []
        for piece in re.split(rb"(\r\n|\n|\r)", data):
            if piece in (b"\n", b"\r\n"):
                lines.append(self._line + b"\n")
                self._line = b""
            elif piece == b"\r":
                self._line = b""
            else:
                self._line += piece
        with self.lock:
            self.out.writelines(lines)
            self.out.flush()

    def close(self) -> None:
        with self.lock:
            if self._line:
                self.out.write(self._line + b"\n")
                self._line = b""
            self.out.flush()


def copy_output(source: BinaryIO, terminal: BinaryIO, log: LogWriter) -> None:
    """Copy the child's output as it comes to the terminal and to the log."""
    fd = source.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        terminal.write(chunk)
        terminal.flush()
        log.write(chunk)
    log.close()


def summary_table(runs: list[LocalRun]) -> str:
    """The table printed at the end of `kubetune run --local`, then what to do next."""
    header = "JOB METHOD STATE STEP LOSS DURATION SKIPPED-ROWS RESUMED-FROM EXPORT OUTPUT"
    rows = [tuple(header.split())]
    for run in runs:
        view = read_run(run.run_dir)
        rows.append(
            (
                run.job.metadata.name,
                run.plan.recipe.method,
                str(view.state),
                f"{dash(view.step)}/{dash(view.total_steps)}",
                dash(view.loss),
                format_duration(view.seconds),
                str(view.skipped_rows),
                dash(view.resumed_from),
                export_state(run.export_code) if run.export_code is not None else view.export,
                shown(run.plan.storage.output_dir) if view.state == LocalState.succeeded else "-",
            )
        )
    return "\n".join([*format_table(rows), "", f"next: {next_step(runs)}"])


def next_step(runs: list[LocalRun]) -> str:
    """The command a user most likely wants after this run."""
    last = runs[-1] if runs else None
    if last is None:
        return "kubetune run JOB.yaml --local"
    ref = last.job.job_ref()
    where = "" if ref.namespace == "default" else f" --namespace {ref.namespace}"
    if last.exit_code == EXIT_PREEMPTED:
        return "run the same command to resume"
    if last.export_code in (EXIT_PREEMPTED, EXIT_INTERRUPTED):
        return "run the same command to export"
    if last.exit_code != 0:
        return f"kubetune logs {ref.name}{where}   (the failed attempt's whole log)"
    if last.plan.recipe.method in ("reward", "eval"):
        return f"kubetune status {ref.name}{where}"
    return (
        f'kubetune generate {ref.name}{where} --prompt "..."   or   '
        f"kubetune serve {ref.name}{where}"
    )


def dash(value: object) -> str:
    return "-" if value is None else str(value)


def format_duration(seconds: float) -> str:
    """1m05s, 2h03m, 42s: one word, so a table column stays one column."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as left-aligned columns, like kubectl's tables."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def export_state(code: int | None) -> str:
    if code is None:
        return "-"
    return {EXIT_OK: "done", EXIT_GATE_NOT_MET: "gate not met"}.get(code, f"failed ({code})")


def demo_report(runs: list[LocalRun]) -> str:
    """The eval job's comparison table (base -> SFT -> DPO, with intervals), and where
    everything is."""
    if not runs or any(run.exit_code for run in runs):
        return ""
    lines: list[str] = []
    evaluations = [run for run in runs if run.plan.recipe.method == "eval"]
    trained = [run for run in runs if run.plan.recipe.method != "eval"]
    for run in evaluations:
        output = Path(run.plan.storage.output_dir)
        lines += ["", f"Evaluation ({run.job.metadata.name}):", ""]
        lines += (output / REPORT_MARKDOWN).read_text().rstrip().splitlines()
        lines += ["", f"report:      {shown(output / REPORT_HTML)} (plots, training curves)"]
        lines += [
            f"results:     {shown(output / RESULTS_FILE)}, per-example outputs in "
            f"{shown(output / SAMPLES_DIR)}"
        ]
    if trained:
        last = trained[-1]
        lines += [
            "",
            f"model:       {shown(last.plan.storage.output_dir)}",
            f"checkpoints: {shown(last.run_dir / 'checkpoints')}",
            f"metrics:     {shown(last.run_dir / 'history.jsonl')} (every logged step), "
            f"{shown(last.run_dir / 'progress.json')} (latest)",
        ]
    for run in runs:
        lines += artifact_lines(run)
    return "\n".join(lines)


def artifact_lines(run: LocalRun) -> list[str]:
    """The artifact table of a run's export manifest (nothing when it exported nothing)."""
    if run.export_code is None:
        return []
    manifest_path = Path(run.plan.storage.export_dir) / "manifest.json"
    if not manifest_path.is_file():
        return []
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("gate") and not manifest["gate"]["passed"]:
        return ["", f"{run.job.metadata.name}: {manifest['gate']['message']}"]
    rows = [("ARTIFACT", "SIZE", "SHA256", "VERIFIED BY", "MAX |LOGIT DIFF|", "GREEDY")]
    for artifact in manifest["artifacts"]:
        check = artifact["verification"]
        rows.append(
            (
                artifact["path"],
                f"{artifact['bytes'] / 1e6:.1f} MB",
                artifact["sha256"][:12],
                check["loader"] if check["ok"] else f"{check['loader']} (FAILED)",
                f"{check['max_abs_logit_diff']:.1e}",
                "same" if check["greedy_match"] else "different",
            )
        )
    title = f"Artifacts of {run.job.metadata.name} ({shown(manifest_path)}):"
    return ["", title, *format_table(rows)]
