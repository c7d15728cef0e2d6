"""``kubetune sweep FILE --local``: a FineTuneSweep run on this machine, with the same study
semantics as in the cluster.

The same pure decision (:func:`kubetune.controller.sweep_lifecycle.sweep_decision`) drives it;
the study is Optuna's SQLite storage under ``<storage>/<namespace>/<sweep>/study.db``; each
trial is its FineTuneJob run as ``kubetune-train --plan`` in a child process (exactly as
``kubetune run --local`` runs a job), in ``<storage>/<namespace>/<sweep>-t<N>``, with its
output in that directory's ``trainer.log``. Values a trial logs (``history.jsonl``) reach the
study while it runs; a trial the pruner stops gets SIGTERM, saves a checkpoint and ends.

Interrupted (Ctrl-C, SIGTERM), the running trials save a checkpoint and stop; the same command
resumes: the study is found again, trials that were running resume from their checkpoints,
trials asked but never started are started. A finished sweep only prints its results again.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from kubetune.api import FineTuneJob, Phase
from kubetune.controller.sweep_lifecycle import (
    CreateTrial,
    DeleteTrial,
    StopTrial,
    SweepDecision,
    SweepSettings,
    TrialJob,
    sweep_decision,
)
from kubetune.local import format_table, local_job, local_plan, trainer_env
from kubetune.reasons import ConditionType, Reason
from kubetune.run_records import shown
from kubetune.sweep_api import (
    LABEL_SWEEP,
    LABEL_TRIAL,
    FineTuneSweep,
    SweepPhase,
    trial_name,
)
from kubetune.sweep_space import TRAINING_LOSS
from kubetune.sweep_study import Studies, apply, study_name, view
from kubetune_trainer.exit_codes import EXIT_OK
from kubetune_trainer.plan import Scaling
from kubetune_trainer.training.checkpoint_fs import CheckpointStore

LOCAL_UID = "local"
EVAL_TIMINGS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
EXIT_SWEEP_FAILED = 1
EXIT_INTERRUPTED = 130
MANIFEST = "trial.json"
EXIT_FILE = "exit-code"
STOPPED_FILE = "stopped"
SHOWN_EVENTS = (
    Reason.TRIAL_CREATED,
    Reason.TRIAL_COMPLETED,
    Reason.TRIAL_PRUNED,
    Reason.TRIAL_FAILED,
    Reason.TRIAL_ABANDONED,
)


def history_values(run_dir: Path) -> tuple[int | None, dict[str, float]]:
    """The latest logged step of a local run and the latest value of every metric a sweep can
    use (the training loss and held-out eval_* metrics), from its history.jsonl."""
    path = run_dir / "history.jsonl"
    if not path.is_file():
        return None, {}
    step, metrics = None, {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        step = entry.get("step", step)
        for key, value in entry.items():
            usable = key == TRAINING_LOSS or (key.startswith("eval_") and key not in EVAL_TIMINGS)
            if usable and isinstance(value, int | float):
                metrics[key] = float(value)
    return step, metrics


@dataclass
class _Running:
    process: subprocess.Popen[bytes]
    log: Any


@dataclass
class LocalSweep:
    """A sweep on this machine: its directory, study, trials and status."""

    raw: dict[str, Any]
    """The FineTuneSweep as written."""
    storage: Path
    parallel: int = 1
    poll_seconds: float = 0.5
    out: TextIO = field(default_factory=lambda: sys.stdout)
    running: dict[int, _Running] = field(default_factory=dict)
    interrupted: bool = False

    def __post_init__(self) -> None:
        self.storage = self.storage.resolve()
        meta = self.raw.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta["uid"] = LOCAL_UID
        # Trials run N at a time here, whatever the cluster would run.
        self.raw["spec"] = {**self.raw["spec"], "parallelism": self.parallel}
        self.model = FineTuneSweep.model_validate(
            {k: self.raw[k] for k in ("apiVersion", "kind", "metadata", "spec")}
        )
        self.name = self.model.metadata.name
        self.namespace = self.model.namespace
        self.dir = self.storage / self.namespace / self.name

    # -- files -------------------------------------------------------------------------------

    def trial_dir(self, number: int) -> Path:
        return self.storage / self.namespace / trial_name(self.name, number)

    @property
    def status_path(self) -> Path:
        return self.dir / "status.json"

    def load_status(self) -> dict[str, Any]:
        return json.loads(self.status_path.read_text()) if self.status_path.is_file() else {}

    def check_same_sweep(self) -> str | None:
        """Why this file cannot resume the sweep found in the directory, if it cannot."""
        recorded = self.dir / "sweep.json"
        spec = {k: v for k, v in self.raw["spec"].items() if k != "parallelism"}
        if recorded.is_file():
            before = json.loads(recorded.read_text())
            if before != spec:
                return (
                    f"{shown(self.dir)} holds a sweep {self.name} with another spec; resume it "
                    "with its own file, or start over with --fresh"
                )
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        recorded.write_text(json.dumps(spec, indent=1, sort_keys=True))
        return None

    # -- observing ---------------------------------------------------------------------------

    def trial_jobs(self) -> tuple[TrialJob, ...]:
        found = []
        for manifest_path in sorted(
            self.storage.glob(f"{self.namespace}/{self.name}-t*/{MANIFEST}")
        ):
            manifest = json.loads(manifest_path.read_text())
            labels = manifest["metadata"]["labels"]
            if labels.get(LABEL_SWEEP) != self.name:
                continue
            number = int(labels[LABEL_TRIAL])
            found.append(self.trial_job(number, manifest))
        return tuple(found)

    def trial_job(self, number: int, manifest: dict[str, Any]) -> TrialJob:
        run_dir = self.trial_dir(number)
        step, metrics = history_values(run_dir)
        name = manifest["metadata"]["name"]
        stopped = (run_dir / STOPPED_FILE).exists()
        exit_file = run_dir / EXIT_FILE
        # Running: its process runs, or it was interrupted and resumes (see run()).
        phase, message, output = Phase.running.value, "", None
        if number not in self.running and exit_file.is_file():
            code = int(exit_file.read_text())
            if code == EXIT_OK:
                phase = Phase.succeeded.value
                output = str(run_dir / "output")
            elif stopped:
                phase = Phase.suspended.value
            else:
                phase = Phase.failed.value
                message = (
                    f"kubetune-train exited with {code} (see {shown(run_dir / 'trainer.log')})"
                )
        elif number not in self.running and stopped:
            phase = Phase.suspended.value
        return TrialJob(
            number=number,
            name=name,
            phase=phase,
            suspended=stopped,
            step=step,
            metrics=metrics,
            output=output,
            message=message,
        )

    # -- acting ------------------------------------------------------------------------------

    def start(self, number: int, manifest: dict[str, Any]) -> None:
        """Run a trial's FineTuneJob (its next attempt: a trial interrupted before resumes
        from its latest checkpoint)."""
        run_dir = self.trial_dir(number)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
        job = local_job(FineTuneJob.model_validate(_without_owner(manifest)))
        attempt = CheckpointStore(run_dir).latest_attempt() + 1
        scaling = Scaling(workers=1, devices_per_worker=0, nodes=1, use_gpu=False)
        plan = local_plan(job, [job], {}, str(self.storage), attempt, scaling)
        plan_path = run_dir / f"plan-attempt-{attempt}.json"
        plan_path.write_text(plan.to_json())
        command = [sys.executable, "-m", "kubetune_trainer.cli", "--plan", str(plan_path)]
        command += ["--local", "--mode", "single"]
        log = (run_dir / "trainer.log").open("ab")
        # A session of its own: Ctrl-C reaches this process only, which passes SIGTERM on
        # (the trainer then saves a checkpoint before it stops).
        process = subprocess.Popen(
            command, env=trainer_env(run_dir), stdout=log, stderr=log, start_new_session=True
        )
        self.running[number] = _Running(process, log)

    def stop(self, name: str) -> None:
        number = int(name.rsplit("-t", 1)[1])
        (self.trial_dir(number) / STOPPED_FILE).touch()
        if number in self.running:
            self.running[number].process.send_signal(signal.SIGTERM)

    def reap(self) -> None:
        """Record the exit code of every trial process that ended."""
        for number, run in list(self.running.items()):
            code = run.process.poll()
            if code is None:
                continue
            run.log.close()
            del self.running[number]
            if not self.interrupted or code == EXIT_OK:  # an interrupted one resumes later
                (self.trial_dir(number) / EXIT_FILE).write_text(str(code))

    def execute(self, study: Any, decision: SweepDecision) -> None:
        apply(study, self.model.spec, decision.actions)
        for action in decision.actions:
            if isinstance(action, CreateTrial):
                self.start(action.number, action.manifest)
            elif isinstance(action, StopTrial):
                self.stop(action.name)
            elif isinstance(action, DeleteTrial):
                print(f"{action.name}: not in the study; left alone", file=self.out)
        for event in decision.events:
            if event.reason in SHOWN_EVENTS:
                print(f"{_clock()} {event.message}", file=self.out, flush=True)

    # -- the loop ----------------------------------------------------------------------------

    def run(self, studies: Studies) -> int:
        status = self.load_status()
        study = studies.open(self.model.spec, study_name(self.namespace, self.name, LOCAL_UID))
        # Trials that were running when an earlier run stopped resume from their checkpoints
        # (those the study had ended meanwhile are left to the decision, which stops them).
        asked = {t.number for t in view(study).trials if t.state == "RUNNING"}
        for job in self.trial_jobs():
            if job.phase == Phase.running.value and job.number in asked:
                manifest = json.loads((self.trial_dir(job.number) / MANIFEST).read_text())
                print(f"{_clock()} {job.name}: resumed", file=self.out, flush=True)
                self.start(job.number, manifest)
        previous = {s: signal.signal(s, self._interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
        settings = SweepSettings(storage_configured=True, poll_seconds=self.poll_seconds)
        try:
            while True:
                self.reap()
                if self.interrupted:
                    return self._wait_for_trials()
                sweep = {**self.raw, "status": status}
                decision = sweep_decision(
                    sweep, self.trial_jobs(), view(study), datetime.now(UTC), settings
                )
                self.execute(study, decision)
                status = {**status, **decision.status_patch}
                self.status_path.write_text(json.dumps(status, indent=1))
                phase = status.get("phase")
                if (
                    phase in (SweepPhase.succeeded.value, SweepPhase.failed.value)
                    and not self.running
                ):
                    return EXIT_OK if phase == SweepPhase.succeeded.value else EXIT_SWEEP_FAILED
                if not decision.changes_study:
                    time.sleep(self.poll_seconds)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _interrupt(self, signum: int, frame: object) -> None:
        self.interrupted = True
        for run in self.running.values():
            run.process.send_signal(signal.SIGTERM)

    def _wait_for_trials(self) -> int:
        print(
            f"{_clock()} interrupted: {len(self.running)} trial(s) saving a checkpoint",
            file=self.out,
            flush=True,
        )
        for run in self.running.values():
            run.process.wait()
        self.reap()
        print("run the same command again to resume the sweep", file=self.out)
        return EXIT_INTERRUPTED

    # -- results -----------------------------------------------------------------------------

    def best_job(self, status: dict[str, Any]) -> dict[str, Any] | None:
        """The best trial as a FineTuneJob to apply: the template with the best values."""
        best = status.get("bestTrial")
        if not best:
            return None
        manifest = json.loads((self.trial_dir(best["number"]) / MANIFEST).read_text())
        return {
            "apiVersion": manifest["apiVersion"],
            "kind": manifest["kind"],
            "metadata": {"name": f"{self.name}-best", "namespace": self.namespace},
            "spec": manifest["spec"],
        }

    def link_best(self, status: dict[str, Any]) -> Path | None:
        """``<sweep>/best/output`` -> the best trial's output: what finetunejob://SWEEP/best
        names for ``kubetune run --local``."""
        best = status.get("bestTrial") or {}
        if not best.get("output"):
            return None
        link = self.dir / "best" / "output"
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(best["output"], target_is_directory=True)
        return link


def _without_owner(manifest: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in manifest["metadata"].items() if k != "ownerReferences"}
    return {**manifest, "metadata": meta}


def _clock() -> str:
    return datetime.now().strftime("%H:%M:%S")


def trials_table(status: dict[str, Any], objectives: list[str]) -> str:
    trials = status.get("trials") or []
    paths = sorted({p for t in trials for p in t.get("parameters", {})})
    rows = [("TRIAL", "STATE", "STEP", *objectives, *paths, "NOTE")]
    best = {
        b["number"] for b in [status.get("bestTrial") or {}, *status.get("paretoFront", [])] if b
    }
    for t in trials:
        rows.append(
            (
                t["name"],
                t["state"],
                str(t.get("step", "-")),
                *(t.get("values", {}).get(m, "-") for m in objectives),
                *(t.get("parameters", {}).get(p, "-") for p in paths),
                "best" if t["number"] in best else (t.get("message") or "")[:60],
            )
        )
    return "\n".join(format_table(rows))


def summary(sweep: LocalSweep, status: dict[str, Any], write: Callable[[str], None]) -> None:
    """The trials table, the best parameters and the best trial as a FineTuneJob."""
    objectives = [o.metric for o in sweep.model.spec.objectives]
    write(trials_table(status, objectives))
    best = status.get("bestTrial")
    if best:
        parameters = ", ".join(f"{k}={v}" for k, v in best["parameters"].items())
        values = ", ".join(f"{k}={v}" for k, v in best["values"].items())
        write(f"\nbest: {best['name']} ({values}): {parameters}")
        job = sweep.best_job(status)
        path = sweep.dir / "best.yaml"
        text = yaml.safe_dump(job, sort_keys=False)
        path.write_text(text)
        link = sweep.link_best(status)
        write(
            f"model: {shown(best.get('output'))} (finetunejob://{sweep.name}/best: {shown(link)})"
        )
        write(f"\nThe best trial as a FineTuneJob ({shown(path)}):\n\n{text}")
    for entry in status.get("paretoFront") or []:
        values = ", ".join(f"{k}={v}" for k, v in entry["values"].items())
        write(f"pareto front: {entry['name']} ({values})")
    for condition in status.get("conditions") or []:
        failed = condition["type"] == ConditionType.FAILED and condition["status"] == "True"
        unpruned = condition["type"] == ConditionType.PRUNING and condition["status"] == "False"
        if failed or (unpruned and sweep.model.spec.pruner is not None):
            write(f"{condition['type']}: {condition['message']}")


__all__ = ["LocalSweep", "history_values", "shown", "summary", "trials_table"]
