"""The pure sweep decision: starting, making trials (and making again the ones asked but never
made), reporting values, stopping pruned trials, finishing, failing, the trial budget; then the
decision against a real Optuna study (SQLite), where the median pruner stops a bad trial; and
finetunejob://<sweep>/best for a job that depends on a sweep."""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import Phase
from kubetune.builders import ClusterFacts
from kubetune.controller import lifecycle
from kubetune.controller.lifecycle import Create, Event, Observed, Settings
from kubetune.controller.sweep_lifecycle import (
    Ask,
    CreateTrial,
    DeleteTrial,
    Report,
    StopTrial,
    StudyTrial,
    StudyView,
    SweepDecision,
    SweepSettings,
    Tell,
    TrialJob,
    sweep_decision,
)
from kubetune.reasons import Reason
from kubetune.sweep_api import LABEL_SWEEP, LABEL_TRIAL, FineTuneSweep, best_dependency
from kubetune.sweep_study import Studies, apply, study_name, view

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
SETTINGS = SweepSettings(storage_configured=True, poll_seconds=30)
STUDY = "kubetune/team-a/lr/uid-s"
LR = "training.learningRate"


def make_sweep(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneSweep",
        "metadata": {"name": "lr", "namespace": "team-a", "uid": "uid-s", "generation": 1},
        "spec": {
            "template": {
                "method": "sft",
                "model": {"source": "builtin://tiny-llama"},
                "data": {
                    "sources": [{"uri": "builtin://arithmetic-sft"}],
                    "evalSources": [{"uri": "builtin://arithmetic-sft", "split": "test"}],
                },
                "training": {"maxSteps": 100, "evalEverySteps": 20},
                "runtime": {"queueName": "team-a-queue"},
            },
            "parameters": [{"path": LR, "type": "float", "min": 1e-5, "max": 1e-1, "log": True}],
            "objectives": [{"metric": "eval_loss", "direction": "minimize"}],
            "pruner": {"type": "median", "startupTrials": 1},
            "maxTrials": 4,
            "parallelism": 2,
            "maxFailedTrials": 1,
        },
    }
    body["spec"].update(spec)
    if status is not None:
        body["status"] = status
    return body


RUNNING_STATUS = {"phase": "Running", "startTime": "2026-12-01T11:00:00Z"}


def asked(number: int, lr: float = 1e-3, state: str = "RUNNING", **kw: Any) -> StudyTrial:
    return StudyTrial(number=number, state=state, params={LR: lr}, **kw)


def job(number: int, phase: str = "Running", **kw: Any) -> TrialJob:
    return TrialJob(number=number, name=f"lr-t{number}", phase=phase, **kw)


def decide(
    sweep: dict[str, Any],
    trials: tuple[TrialJob, ...] = (),
    study: tuple[StudyTrial, ...] = (),
    best: tuple[int, ...] = (),
    settings: SweepSettings = SETTINGS,
) -> SweepDecision:
    return sweep_decision(sweep, trials, StudyView(STUDY, study, best), NOW, settings)


def kinds(decision: SweepDecision) -> list[type]:
    return [type(a) for a in decision.actions if not isinstance(a, Event)]


def reasons(decision: SweepDecision) -> list[str]:
    return [e.reason for e in decision.events]


def condition(decision: SweepDecision, type_: str) -> dict[str, Any]:
    return next(c for c in decision.status_patch["conditions"] if c["type"] == type_)


# --------------------------------------------------------------------------- start


def test_a_new_sweep_asks_for_as_many_trials_as_run_at_once():
    d = decide(make_sweep())
    assert d.of(Ask) == [Ask(2)]
    assert kinds(d) == [Ask]  # trials are made from what the study stored, on the next look
    assert d.status_patch["phase"] == "Running"
    assert d.status_patch["startTime"] == "2026-12-01T12:00:00Z"
    assert d.status_patch["study"] == STUDY
    assert condition(d, "StudyReady")["status"] == "True"
    assert condition(d, "Pruning")["reason"] == "PrunerActive"
    assert reasons(d) == [Reason.ACCEPTED, Reason.RUNNING]


def test_asked_trials_become_finetunejobs_owned_by_the_sweep():
    d = decide(make_sweep(RUNNING_STATUS), study=(asked(0, 3e-4), asked(1, 2e-2)))
    creates = d.of(CreateTrial)
    assert [c.number for c in creates] == [0, 1]
    manifest = creates[0].manifest
    assert manifest["metadata"]["name"] == "lr-t0"
    assert manifest["metadata"]["namespace"] == "team-a"
    assert manifest["metadata"]["labels"][LABEL_SWEEP] == "lr"
    assert manifest["metadata"]["labels"][LABEL_TRIAL] == "0"
    (owner,) = manifest["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "FineTuneSweep",
        "lr",
        "uid-s",
        True,
    )
    assert manifest["spec"]["training"] == {"maxSteps": 100, "evalEverySteps": 20,
                                            "learningRate": 3e-4}  # fmt: skip
    assert manifest["spec"]["runtime"]["queueName"] == "team-a-queue"
    assert d.of(Ask) == []  # two running: parallelism 2
    assert [r["state"] for r in d.status_patch["trials"]] == ["Pending", "Pending"]
    assert d.status_patch["running"] == 2


def test_a_trial_asked_but_never_made_is_made_again_once_and_never_doubled():
    # The operator was killed between asking the study and creating the FineTuneJob of trial 2.
    study = (asked(0, state="COMPLETE", values=(1.2,)), asked(1), asked(2, 7e-3))
    d = decide(make_sweep(RUNNING_STATUS), (job(0, "Succeeded"), job(1)), study)
    (create,) = d.of(CreateTrial)
    assert create.number == 2
    assert create.manifest["metadata"]["name"] == "lr-t2"
    assert create.manifest["spec"]["training"]["learningRate"] == 7e-3  # the stored values
    assert d.of(Ask) == []  # 1 running + 1 being made = parallelism
    # The next look sees its FineTuneJob: nothing is made twice.
    d = decide(make_sweep(RUNNING_STATUS), (job(0, "Succeeded"), job(1), job(2)), study)
    assert d.of(CreateTrial) == [] and d.of(Ask) == []


def test_once_the_sweep_ended_a_trial_never_made_is_failed_instead():
    failed = {**RUNNING_STATUS, "phase": "Failed"}
    d = decide(make_sweep(failed), (job(0, "Failed"),), (asked(0, state="FAIL"), asked(1)))
    assert d.of(CreateTrial) == []
    (tell,) = d.of(Tell)
    assert (tell.number, tell.state) == (1, "FAIL")
    assert "never ran" in tell.message
    assert Reason.TRIAL_ABANDONED in reasons(d)


def test_a_finetunejob_the_study_does_not_know_is_deleted():
    d = decide(make_sweep(RUNNING_STATUS), (job(0), job(5)), (asked(0),))
    assert d.of(DeleteTrial) == [DeleteTrial("lr-t5")]
    assert Reason.TRIAL_UNKNOWN in reasons(d)


# --------------------------------------------------------------------------- running


def test_values_reach_the_study_at_the_step_they_were_computed():
    trials = (job(0, step=47, metrics={"eval_loss": 1.5, "loss": 1.1}), job(1, step=12))
    d = decide(make_sweep(RUNNING_STATUS), trials, (asked(0), asked(1)))
    # status.progress.step is 47; eval_loss is from the evaluation at step 40 (every 20).
    assert d.of(Report) == [Report(0, 40, 1.5)]
    rows = d.status_patch["trials"]
    assert rows[0]["values"] == {"eval_loss": "1.5"} and rows[0]["step"] == 47
    # Reported already: not again.
    d = decide(make_sweep(RUNNING_STATUS), trials, (asked(0, last_step=40), asked(1)))
    assert d.of(Report) == []


def test_several_objectives_run_without_pruning_and_say_so():
    two = [
        {"metric": "eval_loss", "direction": "minimize"},
        {"metric": "loss", "direction": "minimize"},
    ]
    sweep = make_sweep(RUNNING_STATUS, objectives=two)
    d = decide(sweep, (job(0, step=40, metrics={"eval_loss": 1.5, "loss": 1.0}),), (asked(0),))
    assert d.of(Report) == []
    pruning = condition(d, "Pruning")
    assert (pruning["status"], pruning["reason"]) == ("False", "MultiObjective")
    assert "trials run to the end" in pruning["message"]


def test_a_pruned_trial_is_stopped_and_its_reason_shown():
    message = "pruned at step 20: eval_loss=4.1 (median pruner)"
    study = (asked(0, state="COMPLETE", values=(1.0,)), asked(1, state="PRUNED", message=message))
    trials = (job(0, "Succeeded"), job(1, step=23, metrics={"eval_loss": 4.1}))
    d = decide(make_sweep(RUNNING_STATUS), trials, study, best=(0,))
    assert d.of(StopTrial) == [StopTrial("lr-t1")]
    assert Reason.TRIAL_PRUNED in reasons(d)
    row = d.status_patch["trials"][1]
    assert (row["state"], row["message"], row["step"]) == ("Pruned", message, 23)
    assert d.status_patch["pruned"] == 1
    # Stopped (suspended) already: nothing more to do with it.
    stopped = (job(0, "Succeeded"), job(1, "Suspended", suspended=True, step=23))
    d = decide(make_sweep(RUNNING_STATUS), stopped, study, best=(0,))
    assert d.of(StopTrial) == []


def test_a_finished_trial_is_told_with_its_values_or_failed_naming_the_metric():
    trials = (
        job(0, "Succeeded", metrics={"eval_loss": 0.9, "loss": 0.7}, output="s3://b/0"),
        job(1, "Succeeded", metrics={"loss": 0.7}),
        job(2, "Failed", message="RestartsExhausted: exit code 1"),
    )
    d = decide(
        make_sweep(RUNNING_STATUS, maxFailedTrials=3), trials, (asked(0), asked(1), asked(2))
    )
    tells = {t.number: t for t in d.of(Tell)}
    assert (tells[0].state, tells[0].values) == ("COMPLETE", (0.9,))
    assert tells[1].state == "FAIL"
    assert tells[1].message == "lr-t1 succeeded but it reported no eval_loss (reported: loss)"
    assert tells[2].message == "lr-t2 failed: RestartsExhausted: exit code 1"
    assert d.of(Ask) == [Ask(1)]  # 3 asked, none running, budget 4
    assert "phase" not in d.status_patch  # finishes only after the study was told


# --------------------------------------------------------------------------- the end


def test_every_trial_done_and_the_budget_used_the_sweep_succeeds_with_its_best():
    study = (
        asked(0, 1e-4, state="COMPLETE", values=(1.4,)),
        asked(1, 3e-3, state="COMPLETE", values=(0.8,)),
        asked(2, 9e-2, state="PRUNED", message="pruned at step 20"),
        asked(3, 2e-5, state="FAIL", message="lr-t3 failed"),
    )
    trials = (
        job(0, "Succeeded", output="s3://b/lr-t0/output"),
        job(1, "Succeeded", output="s3://b/lr-t1/output"),
        job(2, "Suspended", suspended=True),
        job(3, "Failed"),
    )
    d = decide(make_sweep(RUNNING_STATUS), trials, study, best=(1,))
    assert d.status_patch["phase"] == "Succeeded"
    assert d.status_patch["bestTrial"] == {
        "number": 1,
        "name": "lr-t1",
        "parameters": {LR: "0.003"},
        "values": {"eval_loss": "0.8"},
        "output": "s3://b/lr-t1/output",
    }
    assert d.status_patch["bestValue"] == "0.8"
    assert condition(d, "Succeeded")["reason"] == "BestTrialFound"
    assert (d.status_patch["completed"], d.status_patch["pruned"], d.status_patch["failed"]) == (
        2,
        1,
        1,
    )
    assert kinds(d) == []


def test_the_budget_used_no_more_trials_are_asked_while_the_last_ones_run():
    study = (*tuple(asked(n, state="COMPLETE", values=(1.0,)) for n in range(3)), asked(3))
    trials = (*(job(n, "Succeeded") for n in range(3)), job(3, step=10))
    d = decide(make_sweep(RUNNING_STATUS), trials, study, best=(0,))
    assert d.of(Ask) == [] and d.status_patch.get("phase") is None
    assert d.requeue_after == 30


def test_more_failed_trials_than_allowed_fail_the_sweep_and_stop_the_rest():
    study = (asked(0), asked(1), asked(2))
    trials = (job(0, "Failed"), job(1, "Failed"), job(2, step=30))
    d = decide(make_sweep(RUNNING_STATUS), trials, study)
    assert d.status_patch["phase"] == "Failed"
    assert condition(d, "Failed")["reason"] == "TooManyFailedTrials"
    assert d.of(StopTrial) == [StopTrial("lr-t2")]
    assert {(t.number, t.state) for t in d.of(Tell)} == {(0, "FAIL"), (1, "FAIL"), (2, "FAIL")}
    assert d.of(Ask) == [] and d.of(CreateTrial) == []


def test_a_sweep_whose_trials_were_all_pruned_or_failed_fails():
    study = (
        asked(0, state="PRUNED"),
        asked(1, state="PRUNED"),
        asked(2, state="FAIL"),
        asked(3, state="PRUNED"),
    )
    trials = tuple(job(n, "Suspended", suspended=True) for n in range(4))
    d = decide(make_sweep(RUNNING_STATUS), trials, study)
    assert d.status_patch["phase"] == "Failed"
    assert condition(d, "Failed")["reason"] == "NoTrialCompleted"


def test_without_study_storage_nothing_runs_and_the_condition_says_why():
    d = sweep_decision(make_sweep(), (), None, NOW, SweepSettings(storage_configured=False))
    ready = condition(d, "StudyReady")
    assert (ready["status"], ready["reason"]) == ("False", "StorageNotConfigured")
    assert "KUBETUNE_SWEEP_STORAGE" in ready["message"]
    assert kinds(d) == [] and d.status_patch["phase"] == "Pending"


def test_an_invalid_sweep_fails_naming_the_field():
    sweep = make_sweep()
    sweep["spec"]["parameters"][0]["path"] = "training.learnRate"
    d = decide(sweep)
    assert d.status_patch["phase"] == "Failed"
    invalid = condition(d, "InvalidSpec")
    assert invalid["message"].startswith(
        "spec.parameters[0].path: 'learnRate' is not a field of training"
    )
    assert kinds(d) == []


# --------------------------------------------------------------------------- with Optuna


def _run(tmp_path: Path, sweep: dict[str, Any], curve: Any) -> tuple[dict[str, Any], list[int]]:
    """Drive the decision against a real study, the way the operator does, with trials whose
    held-out loss at each step comes from ``curve(learning_rate, step)``; each look, every
    running trial moves on 20 steps. Returns the final status and the most trials seen
    running at once."""
    model = FineTuneSweep.model_validate(sweep)
    studies = Studies(f"sqlite:///{tmp_path / 'study.db'}")
    study = studies.open(model.spec, study_name("team-a", "lr", "uid-s"))
    jobs: dict[int, TrialJob] = {}
    params: dict[int, float] = {}
    most_running = []
    for _ in range(100):
        d = sweep_decision(sweep, tuple(jobs.values()), view(study), NOW, SETTINGS)
        apply(study, model.spec, d.actions)
        sweep["status"] = {**(sweep.get("status") or {}), **d.status_patch}
        for action in d.actions:
            if isinstance(action, CreateTrial):
                params[action.number] = action.manifest["spec"]["training"]["learningRate"]
                jobs[action.number] = job(action.number, step=0)
            elif isinstance(action, StopTrial):
                n = int(action.name.rsplit("-t", 1)[1])
                jobs[n] = TrialJob(n, action.name, "Suspended", True, jobs[n].step, jobs[n].metrics)
        if sweep["status"].get("phase") in ("Succeeded", "Failed"):
            break
        if d.changes_study:
            continue
        running = [j for j in jobs.values() if j.phase == "Running"]
        most_running.append(len(running))
        for j in running:
            step = j.step + 20
            phase = "Succeeded" if step >= 100 else "Running"
            metrics = {"eval_loss": curve(params[j.number], step)}
            jobs[j.number] = TrialJob(j.number, j.name, phase, False, step, metrics,
                                      output=f"s3://b/{j.name}/output")  # fmt: skip
    return sweep["status"], most_running


def test_against_a_real_study_the_pruner_stops_bad_trials_and_the_best_is_marked(tmp_path: Path):
    """Held-out loss falls with steps when the learning rate is near 3e-3, hardly moves far
    from it: the median pruner stops trials that lag the completed ones at the same step."""
    import math

    def curve(lr: float, step: int) -> float:
        distance = abs(math.log10(lr) - math.log10(3e-3))
        return 3.0 - (step / 100) * max(0.1, 2.5 - 1.5 * distance)

    sweep = make_sweep(maxTrials=8, parallelism=2, maxFailedTrials=0,
                       algorithm={"name": "random", "seed": 0})  # fmt: skip
    status, most_running = _run(tmp_path, sweep, curve)
    assert status["phase"] == "Succeeded", status
    assert max(most_running) == 2  # never more than parallelism
    rows = status["trials"]
    assert len(rows) == 8 and {r["name"] for r in rows} == {f"lr-t{n}" for n in range(8)}
    pruned = [r for r in rows if r["state"] == "Pruned"]
    assert pruned, rows
    assert all(r["step"] < 100 for r in pruned)  # stopped before the budget of steps
    completed = [r for r in rows if r["state"] == "Completed"]
    best = min(completed, key=lambda r: float(r["values"]["eval_loss"]))
    assert status["bestTrial"]["name"] == best["name"]
    assert status["bestTrial"]["output"] == f"s3://b/{best['name']}/output"
    # A pruned trial was worse, at the step it was stopped, than the best one there.
    for row in pruned:
        lr = float(row["parameters"][LR])
        assert curve(lr, 20) > curve(float(best["parameters"][LR]), 20)


def test_a_seeded_study_asks_for_different_values_each_time(tmp_path: Path):
    sweep = make_sweep(maxTrials=6, parallelism=1, pruner=None,
                       algorithm={"name": "tpe", "seed": 5, "startupTrials": 6})  # fmt: skip
    status, _ = _run(tmp_path, sweep, lambda lr, step: random.Random(lr).random())
    values = [r["parameters"][LR] for r in status["trials"]]
    assert len(set(values)) == 6, values


@pytest.mark.parametrize("seed", [None, 3])
def test_a_grid_sweep_tries_every_point_once(tmp_path: Path, seed: int | None):
    values = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    sweep = make_sweep(
        maxTrials=10,
        parallelism=2,
        pruner=None,
        parameters=[{"path": LR, "type": "categorical", "values": values}],
        algorithm={"name": "grid", **({"seed": seed} if seed is not None else {})},
    )
    status, _ = _run(tmp_path, sweep, lambda lr, step: lr)
    tried = sorted(float(r["parameters"][LR]) for r in status["trials"])
    assert tried == values  # the budget is the grid's size, each point once
    assert status["bestTrial"]["parameters"][LR] == "0.0001"


# --------------------------------------------------------------------------- finetunejob://<sweep>/best


def test_a_job_on_the_best_of_a_sweep_waits_for_the_sweep_then_starts_from_its_best():
    settings = Settings(facts=ClusterFacts(trainer_image="trainer:test"),
                        default_storage="s3://b/runs", dependency_poll_seconds=7)  # fmt: skip
    job_body = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "dpo", "namespace": "team-a", "uid": "uid-j", "generation": 1},
        "spec": {
            "method": "dpo",
            "model": {"source": "finetunejob://lr/best"},
            "data": {"sources": [{"uri": "builtin://arithmetic-preference"}]},
        },
    }
    running = make_sweep(RUNNING_STATUS)
    d = lifecycle.reconcile(
        copy.deepcopy(job_body), Observed(dependencies={"lr/best": best_dependency(running)}),
        NOW, settings,
    )  # fmt: skip
    assert d.status_patch["phase"] == Phase.waiting_for_dependencies.value
    assert d.requeue_after == 7
    done = make_sweep(
        {"phase": "Succeeded", "bestTrial": {"number": 1, "name": "lr-t1",
                                             "output": "s3://b/runs/team-a/lr-t1/output"}}
    )  # fmt: skip
    d = lifecycle.reconcile(
        copy.deepcopy(job_body), Observed(dependencies={"lr/best": best_dependency(done)}),
        NOW, settings,
    )  # fmt: skip
    assert d.status_patch["phase"] == Phase.running.value
    (create,) = [a for a in d.actions if isinstance(a, Create)]
    plan = next(m for m in create.manifests if m["kind"] == "ConfigMap")
    assert "s3://b/runs/team-a/lr-t1/output" in str(plan["data"])
    assert best_dependency(None) is None


@pytest.mark.parametrize("phase", ["Pending", "Running", "Failed"])
def test_the_best_of_an_unfinished_sweep_is_not_ready(phase: str):
    dep = best_dependency(make_sweep({"phase": phase}))
    assert dep is not None and dep["status"]["phase"] == phase and dep["status"]["output"] is None


def test_a_trial_is_read_from_its_finetunejob_status():
    from kubetune.controller.sweep_io import trial_job

    obj = {
        "metadata": {"name": "lr-t3", "labels": {LABEL_SWEEP: "lr", LABEL_TRIAL: "3"}},
        "spec": {"runtime": {"suspend": True}},
        "status": {
            "phase": "Failed",
            "progress": {
                "step": 47,
                "loss": "1.2500",
                "evalMetrics": {"eval_loss": "1.61", "eval_perplexity": "5.0", "eval_x": "nan"},
            },
            "conditions": [{"type": "Failed", "status": "True", "message": "exit code 1"}],
            "output": "s3://b/lr-t3/output",
        },
    }
    job = trial_job(obj)
    assert job == TrialJob(
        number=3,
        name="lr-t3",
        phase="Failed",
        suspended=True,
        step=47,
        metrics={"loss": 1.25, "eval_loss": 1.61, "eval_perplexity": 5.0},  # nan left out
        output="s3://b/lr-t3/output",
        message="exit code 1",
    )
    assert trial_job({"metadata": {"name": "x", "labels": {}}}) is None  # not a trial
