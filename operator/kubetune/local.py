"""`kubetune run --local`: the same FineTuneJob YAML, trained on this machine.

Jobs run in dependency order (finetunejob:// references resolve to the outputs of jobs run
before), each as `kubetune-train --plan` in a child process: exactly the contract a pod gets.
Running a job again resumes it from its latest checkpoint as the next attempt; --fresh starts
over.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kubetune.api import FineTuneJob, model_dependencies
from kubetune.planner import dependency_output, make_plan
from kubetune_trainer.exit_codes import EXIT_FAILED, EXIT_GATE_NOT_MET, EXIT_OK
from kubetune_trainer.plan import Plan, Scaling, uri_scheme
from kubetune_trainer.training.checkpoints import CheckpointStore


@dataclass
class LocalRun:
    job: FineTuneJob
    plan: Plan
    run_dir: Path
    exit_code: int
    export_code: int | None = None
    """Exit code of the export stage; None when the job asks for no export."""


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


def local_job(job: FineTuneJob) -> FineTuneJob:
    """The job with cluster-only storage (pvc://) replaced by the local default."""
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
    jobs: list[FineTuneJob],
    *,
    storage: str,
    workers: int = 1,
    fresh: bool = False,
    mode: str = "auto",
) -> list[LocalRun]:
    storage_root = str(Path(storage).resolve())
    finished: dict[tuple[str, str], str] = {}
    runs: list[LocalRun] = []
    scaling = local_scaling(workers)
    for original in dependency_order(jobs):
        job = local_job(original)
        ref = job.job_ref()
        run_dir = Path(storage_root) / ref.namespace / ref.name
        if fresh and run_dir.exists():
            shutil.rmtree(run_dir)

        attempt = CheckpointStore(run_dir).latest_attempt() + 1
        plan = local_plan(job, jobs, finished, storage_root, attempt, scaling)
        run_dir.mkdir(parents=True, exist_ok=True)
        plan_path = run_dir / f"plan-attempt-{attempt}.json"
        plan_path.write_text(plan.to_json())
        env = trainer_env(run_dir)
        print(
            f"== {ref.namespace}/{ref.name}: {plan.recipe.method} on {plan.recipe.model.source} "
            f"(attempt {attempt}, {workers} worker(s)) -> {run_dir}",
            flush=True,
        )
        command = [sys.executable, "-m", "kubetune_trainer.cli", "--plan", str(plan_path)]
        command += ["--local", "--mode", mode]
        code = run_forwarding_signals(command, env)
        runs.append(LocalRun(job, plan, run_dir, code))
        if code != 0:
            print(f"{ref.name}: kubetune-train exited with {code}", file=sys.stderr)
            break
        finished[(ref.namespace, ref.name)] = dependency_output(storage_root, job)
        if plan.recipe.export is not None:
            runs[-1].export_code = run_export_stage(plan_path, run_dir)
            if runs[-1].export_code not in (EXIT_OK, EXIT_GATE_NOT_MET):
                break
    return runs


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
        "KUBETUNE_PROGRESS_INTERVAL": "2",
        "KUBETUNE_METRICS_PORT": os.environ.get("KUBETUNE_METRICS_PORT", "0"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def run_export_stage(plan_path: Path, run_dir: Path) -> int:
    """``kubetune-train --stage export`` on a finished run, as the export Job runs it."""
    print(f"== export of {plan_path.parent.name}", flush=True)
    command = [sys.executable, "-m", "kubetune_trainer.cli", "--plan", str(plan_path)]
    command += ["--stage", "export", "--local"]
    code = run_forwarding_signals(command, trainer_env(run_dir))
    if code not in (EXIT_OK, EXIT_GATE_NOT_MET):
        print(f"{plan_path.parent.name}: export exited with {code}", file=sys.stderr)
    return code


def export_jobs(
    jobs: list[FineTuneJob], *, storage: str, formats: list[str] | None = None
) -> list[LocalRun]:
    """Export finished local runs again (``kubetune export``): e.g. after adding a format."""
    storage_root = str(Path(storage).resolve())
    runs: list[LocalRun] = []
    local_jobs = [local_job(j) for j in jobs]
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
        attempt = CheckpointStore(run_dir).latest_attempt()
        plan = local_plan(job, jobs, finished, storage_root, max(attempt, 1), None)
        if plan.recipe.export is None:
            print(f"{ref.name}: no spec.export and no --format; skipped")
            continue
        output = Path(plan.storage.output_dir)
        if not output.is_dir():
            print(
                f"{ref.name}: no trained model at {output}; run `kubetune run --local` first",
                file=sys.stderr,
            )
            runs.append(LocalRun(job, plan, run_dir, 0, EXIT_FAILED))
            continue
        plan_path = run_dir / f"plan-export-attempt-{plan.attempt}.json"
        plan_path.write_text(plan.to_json())
        runs.append(LocalRun(job, plan, run_dir, 0, run_export_stage(plan_path, run_dir)))
    return runs


def with_export_formats(job: FineTuneJob, formats: list[str]) -> FineTuneJob:
    data = job.model_dump(by_alias=True, exclude_none=True)
    data["spec"].setdefault("export", {})["formats"] = formats
    return FineTuneJob.model_validate(data)


def run_forwarding_signals(command: list[str], env: dict[str, str]) -> int:
    """Run the trainer; a SIGTERM or SIGINT sent to this process is passed on, so the trainer
    saves a checkpoint and stops exactly as it would in a pod."""
    child = subprocess.Popen(command, env=env)

    def forward(signum: int, frame: object) -> None:
        child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def summary_table(runs: list[LocalRun]) -> str:
    rows = [("JOB", "METHOD", "STEP", "LOSS", "EXIT", "EXPORT", "OUTPUT")]
    for run in runs:
        progress_file = run.run_dir / "progress.json"
        progress = json.loads(progress_file.read_text()) if progress_file.exists() else {}
        rows.append(
            (
                run.job.metadata.name,
                run.plan.recipe.method,
                f"{progress.get('step', '-')}/{progress.get('totalSteps', '-')}",
                progress.get("loss", "-"),
                str(run.exit_code),
                export_state(run.export_code),
                run.plan.storage.output_dir if run.exit_code == 0 else "-",
            )
        )
    return "\n".join(format_table(rows))


def format_table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as left-aligned columns, like kubectl's tables."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def export_state(code: int | None) -> str:
    if code is None:
        return "-"
    return {EXIT_OK: "done", EXIT_GATE_NOT_MET: "gate not met"}.get(code, f"failed ({code})")


def heldout_accuracy(model_source: str, rows: int = 100) -> float:
    """Exact match of greedy answers on the held-out split of the builtin arithmetic task."""
    from kubetune_trainer.data import load_data
    from kubetune_trainer.evaluation.measures import answer_accuracy
    from kubetune_trainer.models import load_model_and_tokenizer
    from kubetune_trainer.plan import DataSpec

    spec = DataSpec.model_validate(
        {
            "sources": [
                {
                    "uri": "builtin://arithmetic-prompts",
                    "format": "prompt-only",
                    "split": "test",
                    "maxSamples": rows,
                }
            ]
        }
    )
    model, tokenizer = load_model_and_tokenizer(model_source)
    test_rows = list(load_data(spec, kind="prompt").train)
    return answer_accuracy(model, tokenizer, test_rows, max_new_tokens=6).accuracy


def demo_report(runs: list[LocalRun]) -> str:
    """Held-out accuracy before and after each stage, and where everything is."""
    if not runs or any(run.exit_code for run in runs):
        return ""
    lines = ["", "Held-out exact match (100 unseen questions of builtin://arithmetic-prompts):"]
    base = runs[0].job.spec.model.source
    lines.append(f"  {'base ' + base:<40} {heldout_accuracy(base):6.2f}")
    for run in runs:
        output = run.plan.storage.output_dir
        lines.append(f"  {'after ' + run.job.metadata.name:<40} {heldout_accuracy(output):6.2f}")
    last = runs[-1]
    lines += [
        "",
        f"model:       {last.plan.storage.output_dir}",
        f"checkpoints: {last.run_dir / 'checkpoints'}",
        f"metrics:     {last.run_dir / 'history.jsonl'} (every logged step), "
        f"{last.run_dir / 'progress.json'} (latest)",
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
    return ["", f"Artifacts of {run.job.metadata.name} ({manifest_path}):", *format_table(rows)]
