"""The pure lifecycle: every phase of the switch, restarts and their accounting, suspension,
deadlines, TTL, invalid specs, dependencies; no cluster."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune.api import Phase
from kubetune.builders import ClusterFacts, names
from kubetune.controller.lifecycle import (
    PATIENCE_GRACES,
    TRANSITIONS,
    Child,
    Create,
    Decision,
    Delete,
    Observed,
    Settings,
    backoff_seconds,
    launcher_signal,
    launcher_state,
    pods_need_pass,
    pods_problem,
    pods_started,
    pods_to_explain,
    reads,
    reconcile,
    rfc3339,
    spec_problems,
    status_wants_pass,
)

NOW = datetime(2026, 11, 22, 3, 0, 0, tzinfo=UTC)
SETTINGS = Settings(
    facts=ClusterFacts(trainer_image="trainer:test"),
    default_storage="s3://bucket/runs",
    dependency_poll_seconds=7,
)


def make_job(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo", "namespace": "team-a", "uid": "uid-1", "generation": 1},
        "spec": {
            "method": "sft",
            "model": {"source": "builtin://tiny-llama"},
            "data": {"sources": [{"uri": "builtin://arithmetic-sft"}]},
            "resume": {"maxRestarts": 2, "backoffSeconds": 10, "maxBackoffSeconds": 25},
        },
    }
    job["spec"].update(spec)
    if status is not None:
        job["status"] = status
    return job


def launcher_job(attempt: int, condition: dict[str, str] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": names.launcher_name("demo", attempt),
            "labels": {names.LABEL_ATTEMPT: str(attempt)},
        },
        "status": {"active": 1},
    }
    if condition is not None:
        obj["status"] = {"conditions": [{"status": "True", **condition}]}
    return obj


SUCCEEDED = {"type": "Complete"}
APP_FAIL = {
    "type": "Failed",
    "reason": "PodFailurePolicy",
    "message": "Container trainer for pod team-a/demo-a1-0-x failed with exit code 1 matching "
    "FailJob rule at index 2",
}
PREEMPTED = {
    "type": "Failed",
    "reason": "PodFailurePolicy",
    "message": "Pod team-a/demo-a1-0-x has condition DisruptionTarget matching FailJob rule at "
    "index 0",
}
INVALID_PLAN = {
    "type": "Failed",
    "reason": "PodFailurePolicy",
    "message": "Container trainer for pod team-a/demo-a1-0-x failed with exit code 78 matching "
    "FailJob rule at index 2",
}
JOB_DEADLINE = {"type": "Failed", "reason": "DeadlineExceeded", "message": "too long"}


def world_with(launcher: dict[str, Any] | None, *extra: Child) -> Observed:
    children = list(extra)
    if launcher is not None:
        attempt = int(launcher["metadata"]["labels"][names.LABEL_ATTEMPT])
        finished = launcher_state(launcher)[0] != "running"
        children.append(Child("batch/v1", "Job", launcher["metadata"]["name"], attempt, finished))
    return Observed(launcher=launcher, children=tuple(children))


def running(attempt: int = 1, **extra: Any) -> dict[str, Any]:
    return {"phase": "Running", "attempt": attempt, "startTime": rfc3339(NOW), **extra}


def cond(decision: Decision, type_: str) -> dict[str, Any]:
    return next(c for c in decision.status_patch["conditions"] if c["type"] == type_)


def apply(job: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """The job as it reads after the status patch."""
    out = copy.deepcopy(job)
    status = out.setdefault("status", {})
    for key, value in decision.status_patch.items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = value
    return out


def kinds(decision: Decision) -> list[tuple[str, str]]:
    return [(m["kind"], m["metadata"]["name"]) for c in decision.creates for m in c.manifests]


# --------------------------------------------------------------------------- pods that do not run


def pending_launcher(age: float, ready: int = 0) -> dict[str, Any]:
    obj = launcher_job(1)
    obj["metadata"]["creationTimestamp"] = rfc3339(NOW - timedelta(seconds=age))
    obj["spec"] = {"parallelism": 1}
    obj["status"] = {"active": 1, "ready": ready}
    return obj


def pending_pod(conditions=(), waiting: dict[str, str] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Pending", "conditions": list(conditions)}
    if waiting:
        status["containerStatuses"] = [{"name": "trainer", "state": {"waiting": waiting}}]
    return {"metadata": {"name": "demo-a1-0-abcde"}, "status": status}


UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": '0/4 nodes are available: persistentvolumeclaim "kubetune-runs" not found.',
}
QUOTA = {
    "reason": "FailedCreate",
    "lastTimestamp": "2026-11-22T02:59:50Z",
    "message": 'Error creating: pods "demo-a1-0-x" is forbidden: exceeded quota: gpus, '
    "requested: requests.nvidia.com/gpu=2, used: requests.nvidia.com/gpu=0, limited: "
    "requests.nvidia.com/gpu=1",
}


def test_pods_are_asked_about_only_after_the_grace():
    grace = SETTINGS.pods_grace_seconds
    assert not pods_to_explain(pending_launcher(grace - 1), NOW, grace)
    assert pods_to_explain(pending_launcher(grace), NOW, grace)
    assert not pods_to_explain(pending_launcher(grace * 10, ready=1), NOW, grace)
    assert not pods_to_explain(launcher_job(1, SUCCEEDED), NOW, grace)


PATIENCE = SETTINGS.pods_grace_seconds * PATIENCE_GRACES


def aged(pod: dict[str, Any], age: float) -> dict[str, Any]:
    pod["metadata"]["creationTimestamp"] = rfc3339(NOW - timedelta(seconds=age))
    return pod


@pytest.mark.parametrize(
    ("pods", "events", "reason", "says"),
    [
        ((pending_pod([UNSCHEDULABLE]),), (), "Unschedulable", "kubetune-runs"),
        ((), (QUOTA,), "FailedCreate", "exceeded quota: gpus"),
        (
            (pending_pod(waiting={"reason": "ImagePullBackOff", "message": "no such image"}),),
            (),
            "PodsPending",
            "ImagePullBackOff: no such image",
        ),
        (
            (aged(pending_pod(), PATIENCE + 1),),
            (),
            "PodsPending",
            f"Pending for {int(PATIENCE + 1)}s, default-scheduler said nothing",
        ),
    ],
    ids=["scheduler", "quota", "waiting-container", "silence-past-patience"],
)
def test_pods_problem_quotes_who_knows(pods, events, reason, says):
    launcher = pending_launcher(SETTINGS.pods_grace_seconds)
    got_reason, message = pods_problem(launcher, pods, events, NOW, PATIENCE)
    assert got_reason == reason
    assert says in message


def test_pods_in_a_busy_schedulers_queue_are_no_problem_until_the_patience_runs_out():
    launcher = pending_launcher(PATIENCE - 1)
    queued = (aged(pending_pod(), PATIENCE - 1),)  # no PodScheduled condition: not looked at
    assert pods_problem(launcher, queued, (), NOW, PATIENCE) is None
    assert not pods_need_pass(queued, (), 1, NOW, PATIENCE)
    # One pod of two missing: worth a pass once the Job controller says why, not before.
    assert not pods_need_pass(queued, (), 2, NOW, PATIENCE)
    assert pods_need_pass(queued, (QUOTA,), 2, NOW, PATIENCE)
    assert not pods_need_pass(queued, (QUOTA,), 1, NOW, PATIENCE)  # an old word: all exist now
    assert pods_need_pass((aged(pending_pod([UNSCHEDULABLE]), 1),), (), 1, NOW, PATIENCE)
    # Pods not created, nobody says why: a count once the patience runs out.
    assert pods_problem(launcher, (), (), NOW, PATIENCE) is None
    late = pods_problem(pending_launcher(PATIENCE), (), (), NOW, PATIENCE)
    assert late == ("PodsPending", f"1 of 1 pods not created after {int(PATIENCE)}s")
    # Looks end when every pod runs, whatever the launcher's events said so far.
    running_pod = {"metadata": {"name": "demo-a1-0-abcde"}, "status": {"phase": "Running"}}
    assert pods_started((running_pod,), 1) and not pods_started((running_pod,), 2)
    assert not pods_started(queued, 1)
    # A pod on its way out does not count as existing.
    leaving = aged(pending_pod(), 1)
    leaving["metadata"]["deletionTimestamp"] = rfc3339(NOW)
    assert pods_need_pass((leaving,), (QUOTA,), 1, NOW, PATIENCE)


def test_queued_pods_after_the_grace_are_looked_at_again_and_not_reported():
    job = make_job(running())
    world = Observed(
        launcher=pending_launcher(SETTINGS.pods_grace_seconds + 5),
        launcher_pods=(aged(pending_pod(), SETTINGS.pods_grace_seconds + 4),),
    )
    d = reconcile(job, world, NOW, SETTINGS)
    said = {c["type"] for c in d.status_patch.get("conditions") or []}
    assert "PodsReady" not in said and d.events == []
    assert d.recheck_pods_after == SETTINGS.pods_grace_seconds and d.pods_expected == 1


def test_pods_not_running_after_the_grace_become_a_condition_and_one_event():
    job = make_job(running())
    launcher = pending_launcher(SETTINGS.pods_grace_seconds + 5)
    world = Observed(launcher=launcher, launcher_pods=(pending_pod([UNSCHEDULABLE]),))
    d = reconcile(job, world, NOW, SETTINGS)
    pods = cond(d, "PodsReady")
    assert (pods["status"], pods["reason"]) == ("False", "Unschedulable")
    assert "persistentvolumeclaim" in pods["message"]
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "Unschedulable")]
    assert d.recheck_pods_after is not None
    # The same word again: no new event.
    again = reconcile(apply(job, d), world, NOW + timedelta(seconds=30), SETTINGS)
    assert again.events == []
    # The pods run: the condition turns True, once.
    running_now = pending_launcher(SETTINGS.pods_grace_seconds + 60, ready=1)
    cleared = reconcile(apply(job, d), Observed(launcher=running_now), NOW, SETTINGS)
    pods = cond(cleared, "PodsReady")
    assert (pods["status"], pods["reason"]) == ("True", "PodsRunning")
    assert [e.reason for e in cleared.events] == ["PodsRunning"]


def test_pods_within_the_grace_are_rechecked_not_reported():
    job = make_job(running())
    d = reconcile(job, Observed(launcher=pending_launcher(10)), NOW, SETTINGS)
    assert "PodsReady" not in {c["type"] for c in d.status_patch.get("conditions") or []}
    assert d.recheck_pods_after == pytest.approx(SETTINGS.pods_grace_seconds - 10)


def test_launcher_signal_changes_only_with_what_the_lifecycle_reads():
    a, b = pending_launcher(1), pending_launcher(2)
    b["status"]["active"] = 1  # pods created, not ready: nothing the lifecycle reads
    assert launcher_signal(a) == launcher_signal(b) == ("running", False)
    assert launcher_signal(pending_launcher(1, ready=1)) == ("running", True)
    assert launcher_signal(launcher_job(1, SUCCEEDED))[0] == "succeeded"


@pytest.mark.parametrize(
    ("status", "wanted"),
    [
        (None, "none"),  # nothing of a new job exists yet
        ({"phase": "WaitingForDependencies"}, "none"),
        ({"phase": "Pending", "attempt": 1}, "jobs"),
        (running(), "jobs"),
        ({"phase": "Exporting", "attempt": 1, "exportAttempt": 1}, "jobs"),
        ({"phase": "Suspended", "attempt": 1}, "all"),  # the suspended attempt's other children
        ({"phase": "Succeeded", "attempt": 1}, "all"),  # the TTL deletes every child
    ],
)
def test_a_pass_reads_only_what_its_decision_can_depend_on(status, wanted):
    assert reads(make_job(status)) == wanted


def test_only_a_new_checkpoint_in_the_status_asks_for_a_pass():
    checkpoint = {"uri": "s3://bucket/runs/ckpt/step-00000040", "step": 40}
    job = make_job(running(lastCheckpoint=checkpoint, progress={"step": 41}))
    assert status_wants_pass(job)
    said = apply(job, reconcile(job, world_with(launcher_job(1)), NOW, SETTINGS))
    assert not status_wants_pass(said)
    said["status"]["progress"] = {"step": 42}  # the trainer's progress: no pass
    assert not status_wants_pass(said)


# --------------------------------------------------------------------------- start


def test_new_job_launches_attempt_one_with_every_child():
    d = reconcile(make_job(), Observed(), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Running"
    assert d.status_patch["attempt"] == 1
    assert d.status_patch["startTime"] == rfc3339(NOW)
    assert kinds(d) == [
        ("ServiceAccount", "demo-trainer"),
        ("Role", "demo-trainer"),
        ("RoleBinding", "demo-trainer"),
        ("ConfigMap", "demo-plan-a1"),
        ("Service", "demo-a1"),
        ("Job", "demo-a1"),
    ]
    assert cond(d, "Running")["status"] == "True"
    # One event per phase change the status shows: Pending is never written, only Running.
    assert [(e.reason, e.message) for e in d.events] == [
        ("Launched", "Running: attempt 1 launched")
    ]
    assert d.status_patch["observedGeneration"] == 1
    # Nothing asks about the pods unless they have not run within the grace.
    assert d.recheck_pods_after == SETTINGS.pods_grace_seconds


def test_children_carry_the_owner_reference():
    d = reconcile(make_job(), Observed(), NOW, SETTINGS)
    for create in d.creates:
        for m in create.manifests:
            (owner,) = m["metadata"]["ownerReferences"]
            assert owner["uid"] == "uid-1" and owner["controller"] is True


def test_reconcile_is_idempotent_once_running():
    job = make_job(running())
    d = reconcile(job, world_with(launcher_job(1)), NOW, SETTINGS)
    assert not d.creates and not d.deletes
    job2 = apply(job, d)
    d2 = reconcile(job2, world_with(launcher_job(1)), NOW, SETTINGS)
    assert d2.status_patch == {} and d2.actions == []


def test_running_without_launcher_recreates_it_by_name():
    # A crash between the decision to launch and the creation: the next pass creates again.
    d = reconcile(make_job(running()), Observed(), NOW, SETTINGS)
    assert ("Job", "demo-a1") in kinds(d)


def test_deleting_job_does_nothing():
    job = make_job(running())
    job["metadata"]["deletionTimestamp"] = rfc3339(NOW)
    d = reconcile(job, Observed(), NOW, SETTINGS)
    assert d.actions == [] and d.status_patch == {}


# --------------------------------------------------------------------------- dependencies


def dpo_job(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return make_job(
        status,
        method="dpo",
        model={"source": "finetunejob://base"},
        data={"sources": [{"uri": "builtin://arithmetic-preference"}]},
    )


def test_waits_for_missing_and_unfinished_dependencies():
    d = reconcile(dpo_job(), Observed(dependencies={"base": None}), NOW, SETTINGS)
    assert d.status_patch["phase"] == "WaitingForDependencies"
    ready = cond(d, "DependenciesReady")
    assert ready["status"] == "False"
    assert ready["message"] == "spec.model: job 'base' does not exist"
    assert not d.creates and d.requeue_after == 7
    base = {"status": {"phase": "Running"}}
    d = reconcile(dpo_job(), Observed(dependencies={"base": base}), NOW, SETTINGS)
    assert "job 'base' is Running" in cond(d, "DependenciesReady")["message"]


def test_runs_with_the_dependency_output_as_model():
    base = {"status": {"phase": "Succeeded", "output": "s3://bucket/runs/team-a/base/output"}}
    job = dpo_job({"phase": "WaitingForDependencies"})
    d = reconcile(job, Observed(dependencies={"base": base}), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Running"
    assert cond(d, "DependenciesReady")["status"] == "True"
    (cm,) = [m for c in d.creates for m in c.manifests if m["kind"] == "ConfigMap"]
    assert '"source":"s3://bucket/runs/team-a/base/output"' in cm["data"]["plan.json"].replace(
        " ", ""
    )


def test_succeeded_dependency_without_output_keeps_waiting():
    base = {"status": {"phase": "Succeeded"}}
    d = reconcile(
        dpo_job({"phase": "Pending"}), Observed(dependencies={"base": base}), NOW, SETTINGS
    )
    assert d.status_patch["phase"] == "WaitingForDependencies"
    assert cond(d, "DependenciesReady")["reason"] == "OutputMissing"


# --------------------------------------------------------------------------- outcomes


def test_success_sets_output_and_completion():
    job = make_job(running())
    d = reconcile(job, world_with(launcher_job(1, SUCCEEDED)), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Succeeded"
    assert d.status_patch["output"] == "s3://bucket/runs/team-a/demo/output"
    assert d.status_patch["completionTime"] == rfc3339(NOW)
    assert cond(d, "Succeeded")["status"] == "True"
    assert cond(d, "Running")["status"] == "False"
    assert "Succeeded" in {e.reason for e in d.events}


def test_application_failure_counts_and_backs_off_then_resumes():
    job = make_job(running(lastCheckpoint={"uri": "s3://b/ckpt-40", "step": 40}))
    d = reconcile(job, world_with(launcher_job(1, APP_FAIL)), NOW, SETTINGS)
    assert d.status_patch["attempt"] == 2
    assert d.status_patch["restarts"] == 1
    assert d.status_patch["disruptions"] == 0
    assert d.status_patch["nextAttemptTime"] == rfc3339(NOW + timedelta(seconds=10))
    assert d.requeue_after == 10
    assert not d.creates  # the next attempt waits for its backoff
    resuming = cond(d, "Resuming")
    assert resuming["reason"] == "ApplicationFailure"
    assert "exit code 1" in resuming["message"]
    assert "Warning" in {e.type for e in d.events}

    job = apply(job, d)
    old = Child("batch/v1", "Job", "demo-a1", 1, finished=True)
    # Before the backoff: nothing yet.
    early = reconcile(job, Observed(children=(old,)), NOW + timedelta(seconds=5), SETTINGS)
    assert not early.creates and early.requeue_after == pytest.approx(5)
    # After: attempt 2, and the failed attempt 1 is kept for inspection.
    later = NOW + timedelta(seconds=10)
    d2 = reconcile(job, Observed(children=(old,)), later, SETTINGS)
    assert ("Job", "demo-a2") in kinds(d2) and ("ConfigMap", "demo-plan-a2") in kinds(d2)
    assert not d2.deletes
    assert d2.status_patch["nextAttemptTime"] is None
    assert "resuming from step 40" in cond(d2, "Running")["message"]
    # The failure is not counted twice.
    job2 = apply(job, d2)
    d3 = reconcile(job2, world_with(launcher_job(2), old), later, SETTINGS)
    assert "restarts" not in d3.status_patch and "attempt" not in d3.status_patch


def test_disruption_does_not_count_against_max_restarts():
    job = make_job(running(restarts=2))  # maxRestarts is 2: exhausted for applications
    d = reconcile(job, world_with(launcher_job(1, PREEMPTED)), NOW, SETTINGS)
    assert d.status_patch["attempt"] == 2
    assert d.status_patch["disruptions"] == 1
    assert "restarts" not in d.status_patch
    assert cond(d, "Resuming")["reason"] == "Disruption"


def test_restarts_exhausted_fails_with_reason_and_exit_code():
    job = make_job(running(attempt=3, restarts=2))
    d = reconcile(job, world_with(launcher_job(3, APP_FAIL)), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Failed"
    failed = cond(d, "Failed")
    assert failed["reason"] == "RestartsExhausted"
    assert "exit code 1" in failed["message"]
    assert "maxRestarts (2) exhausted" in failed["message"]
    assert "PodFailurePolicy" in failed["message"]
    assert not d.creates


def test_invalid_plan_exit_is_not_retried():
    d = reconcile(make_job(running()), world_with(launcher_job(1, INVALID_PLAN)), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Failed"
    assert cond(d, "Failed")["reason"] == "InvalidPlan"


BAD_DATA = {
    "type": "Failed",
    "reason": "PodFailurePolicy",
    "message": "Container trainer for pod team-a/demo-a1-0-x failed with exit code 65 matching "
    "FailJob rule at index 2",
}
BAD_ROW = (
    "error: data/train.jsonl: row 4 (line 5): malformed JSON: Expecting value: line 1 column 1 "
    "(char 0) (exit 65: bad data)"
)


def test_bad_data_fails_at_once_with_the_file_and_row():
    world = world_with(launcher_job(1, BAD_DATA))
    world = Observed(
        launcher=world.launcher,
        children=world.children,
        launcher_pods=(
            stopped_pod("Terminated by the Job controller", container="trainer", code=143),
            stopped_pod(BAD_ROW, container="trainer", code=65),
        ),
    )
    d = reconcile(make_job(running()), world, NOW, SETTINGS)
    assert d.status_patch["phase"] == "Failed"
    failed = cond(d, "Failed")
    assert failed["reason"] == "BadData"
    assert "exit code 65" in failed["message"]
    assert f"the trainer said: {BAD_ROW}" in failed["message"]
    assert "a retry cannot help" in failed["message"]
    assert "attempt" not in d.status_patch and not d.creates, "no attempt 2"
    assert d.status_patch.get("restarts") is None
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "BadData")]


def test_bad_data_in_the_export_stage_is_final_too():
    job = make_job(exporting(), export=EXPORT)
    d = reconcile(job, export_world(export_job(1, export_failure(65))), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Failed"
    assert cond(d, "Failed")["reason"] == "BadData"
    assert "exportAttempt" not in d.status_patch


def test_launcher_deadline_fails():
    d = reconcile(make_job(running()), world_with(launcher_job(1, JOB_DEADLINE)), NOW, SETTINGS)
    assert cond(d, "Failed")["reason"] == "DeadlineExceeded"


@pytest.mark.parametrize(("failures", "expected"), [(0, 0), (1, 10), (2, 20), (3, 25), (40, 25)])
def test_backoff_doubles_and_is_capped(failures: int, expected: int):
    assert backoff_seconds(10, 25, failures) == expected


def test_backoff_grows_with_attempts():
    job = make_job(running(attempt=2, restarts=1))
    d = reconcile(job, world_with(launcher_job(2, APP_FAIL)), NOW, SETTINGS)
    assert d.status_patch["nextAttemptTime"] == rfc3339(NOW + timedelta(seconds=20))


# --------------------------------------------------------------------------- deadline, suspend


def test_active_deadline_fails_and_stops_the_launcher():
    job = make_job(running(startTime=rfc3339(NOW - timedelta(seconds=100))))
    job["spec"]["activeDeadlineSeconds"] = 60
    d = reconcile(job, world_with(launcher_job(1)), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Failed"
    assert cond(d, "Failed")["reason"] == "DeadlineExceeded"
    assert Delete("batch/v1", "Job", "demo-a1") in d.deletes


def test_active_deadline_requeues_at_the_deadline():
    job = make_job(running(startTime=rfc3339(NOW - timedelta(seconds=20))))
    job["spec"]["activeDeadlineSeconds"] = 60
    d = reconcile(job, world_with(launcher_job(1)), NOW, SETTINGS)
    assert d.requeue_after == pytest.approx(40)


def test_suspend_deletes_the_launcher_and_resume_starts_a_new_attempt():
    job = make_job(running())
    job["spec"]["runtime"] = {"suspend": True}
    d = reconcile(job, world_with(launcher_job(1)), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Suspended"
    assert d.deletes == [Delete("batch/v1", "Job", "demo-a1")]
    assert cond(d, "Suspended")["status"] == "True"
    job = apply(job, d)
    # Still suspended, launcher gone: nothing to do.
    assert reconcile(job, Observed(), NOW, SETTINGS).actions == []
    job["spec"]["runtime"] = {"suspend": False}
    plan_a1 = Child("v1", "ConfigMap", "demo-plan-a1", 1)  # attempt 1 was made
    d = reconcile(job, Observed(children=(plan_a1,)), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Running"
    assert d.status_patch["attempt"] == 2
    assert ("Job", "demo-a2") in kinds(d)
    assert cond(d, "Suspended")["status"] == "False"
    assert "restarts" not in d.status_patch


def test_suspended_before_start_creates_nothing_until_resumed():
    job = make_job(runtime={"suspend": True})
    d = reconcile(job, Observed(), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Suspended" and not d.creates
    job = apply(job, d)
    job["spec"]["runtime"] = {"suspend": False}
    d = reconcile(job, Observed(), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Running" and d.status_patch["attempt"] == 1


def test_suspend_during_backoff_cancels_the_pending_attempt():
    job = make_job(running(attempt=2, nextAttemptTime=rfc3339(NOW + timedelta(seconds=30))))
    job["spec"]["runtime"] = {"suspend": True}
    d = reconcile(job, Observed(), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Suspended"
    assert d.status_patch["nextAttemptTime"] is None


def test_stale_running_launchers_of_other_attempts_are_deleted():
    stale = Child("batch/v1", "Job", "demo-a1", 1, finished=False)
    job = make_job(running(attempt=2))
    d = reconcile(job, Observed(children=(stale,)), NOW, SETTINGS)
    assert Delete("batch/v1", "Job", "demo-a1") in d.deletes
    assert ("Job", "demo-a2") in kinds(d)


# --------------------------------------------------------------------------- terminal, TTL


def test_terminal_phases_do_nothing_without_ttl():
    for phase in ("Succeeded", "Failed"):
        job = make_job({"phase": phase, "completionTime": rfc3339(NOW)})
        d = reconcile(job, world_with(launcher_job(1, SUCCEEDED)), NOW, SETTINGS)
        assert d.actions == [] and d.requeue_after is None


def test_ttl_deletes_children_then_the_job():
    job = make_job({"phase": "Succeeded", "completionTime": rfc3339(NOW)})
    job["spec"]["ttlSecondsAfterFinished"] = 30
    cm = Child("v1", "ConfigMap", "demo-plan-a1", 1)
    world = world_with(launcher_job(1, SUCCEEDED), cm)
    early = reconcile(job, world, NOW + timedelta(seconds=10), SETTINGS)
    assert not early.deletes and early.requeue_after == pytest.approx(20)
    d = reconcile(job, world, NOW + timedelta(seconds=30), SETTINGS)
    assert [a.kind for a in d.deletes] == ["ConfigMap", "Job", "FineTuneJob"]
    assert d.deletes[-1] == Delete("kubetune.io/v1alpha1", "FineTuneJob", "demo")


def test_success_with_zero_ttl_deletes_at_once():
    job = make_job(running())
    job["spec"]["ttlSecondsAfterFinished"] = 0
    d = reconcile(job, world_with(launcher_job(1, SUCCEEDED)), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Succeeded"
    assert d.deletes[-1].kind == "FineTuneJob"


# --------------------------------------------------------------------------- invalid spec


def test_invalid_spec_names_the_field_and_creates_nothing():
    job = make_job(resume={"backoffSeconds": 100, "maxBackoffSeconds": 10})
    d = reconcile(job, Observed(), NOW, SETTINGS)
    assert not d.creates
    assert d.status_patch["phase"] == "Failed"
    invalid = cond(d, "InvalidSpec")
    assert invalid["status"] == "True"
    assert (
        invalid["message"]
        == "spec.resume.maxBackoffSeconds: must be at least resume.backoffSeconds"
    )
    assert [e.type for e in d.events] == ["Warning"]


def test_spec_problems_lists_nested_paths():
    job = make_job(training={"learningRate": "fast"})
    (problem,) = spec_problems(job)
    assert problem.startswith("spec.training.learningRate:")


def test_corrected_spec_leaves_invalid_failure():
    job = make_job(resume={"backoffSeconds": 100, "maxBackoffSeconds": 10})
    job = apply(job, reconcile(job, Observed(), NOW, SETTINGS))
    # Same generation: stays failed.
    assert reconcile(job, Observed(), NOW, SETTINGS).actions == []
    job["spec"]["resume"] = {"backoffSeconds": 1, "maxBackoffSeconds": 10}
    job["metadata"]["generation"] = 2
    d = reconcile(job, Observed(), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Running"
    assert cond(d, "InvalidSpec")["status"] == "False"
    assert ("Job", "demo-a1") in kinds(d)


def test_build_error_fails_with_the_field():
    job = make_job(runtime={"launcher": "rayjob"})  # no RayJob CRD in SETTINGS
    d = reconcile(job, Observed(), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Failed"
    failed = cond(d, "Failed")
    assert failed["reason"] == "BuildFailed"
    assert failed["message"].startswith("spec.runtime.launcher:")


# --------------------------------------------------------------------------- conditions


def test_checkpoint_reported_by_the_trainer_becomes_a_condition():
    job = make_job(running(lastCheckpoint={"uri": "s3://b/ckpt", "step": 12}))
    d = reconcile(job, world_with(launcher_job(1)), NOW, SETTINGS)
    assert cond(d, "Checkpointed")["message"] == "step 12 at s3://b/ckpt"
    assert "lastCheckpoint" not in d.status_patch and "progress" not in d.status_patch


def test_condition_transition_time_kept_while_status_unchanged():
    job = make_job(running())
    first = apply(job, reconcile(job, world_with(launcher_job(1)), NOW, SETTINGS))
    t0 = next(c for c in first["status"]["conditions"] if c["type"] == "Running")
    first["metadata"]["generation"] = 2
    later = NOW + timedelta(minutes=5)
    d = reconcile(first, world_with(launcher_job(1)), later, SETTINGS)
    assert cond(d, "Running")["lastTransitionTime"] == t0["lastTransitionTime"]
    assert cond(d, "Running")["observedGeneration"] == 2


def test_operator_never_writes_trainer_fields():
    job = make_job(running(progress={"step": 3}, lastCheckpoint={"uri": "u", "step": 3}))
    for launcher in (launcher_job(1), launcher_job(1, SUCCEEDED), launcher_job(1, APP_FAIL)):
        d = reconcile(job, world_with(launcher), NOW, SETTINGS)
        assert not {"progress", "lastCheckpoint"} & set(d.status_patch)


# --------------------------------------------------------------------------- launcher states


@pytest.mark.parametrize(
    ("obj", "state", "kind"),
    [
        (launcher_job(1), "running", None),
        (launcher_job(1, SUCCEEDED), "succeeded", None),
        (launcher_job(1, {"type": "SuccessCriteriaMet"}), "succeeded", None),
        (launcher_job(1, APP_FAIL), "failed", "application"),
        (launcher_job(1, PREEMPTED), "failed", "disruption"),
        ({"kind": "RayJob", "status": {"jobStatus": "RUNNING"}}, "running", None),
        ({"kind": "RayJob", "status": {"jobStatus": "SUCCEEDED"}}, "succeeded", None),
        (
            {"kind": "RayJob", "status": {"jobDeploymentStatus": "Failed", "reason": "AppFailed"}},
            "failed",
            "application",
        ),
    ],
)
def test_launcher_state(obj: dict[str, Any], state: str, kind: str | None):
    got, failure = launcher_state(obj)
    assert got == state
    assert (failure.kind if failure else None) == kind


# --------------------------------------------------------------------------- the switch


def _scenarios() -> list[tuple[dict[str, Any], Observed]]:
    base = {"status": {"phase": "Succeeded", "output": "s3://o"}}
    out: list[tuple[dict[str, Any], Observed]] = []
    for phase in [None, *[p.value for p in Phase]]:
        for launcher in (
            None,
            launcher_job(1),
            launcher_job(1, SUCCEEDED),
            launcher_job(1, APP_FAIL),
        ):
            for suspend in (False, True):
                status = {"phase": phase, "attempt": 1} if phase else None
                job = make_job(status, runtime={"suspend": suspend})
                out.append((job, world_with(launcher)))
        out.append(
            (dpo_job({"phase": phase} if phase else None), Observed(dependencies={"base": base}))
        )
    return out


@pytest.mark.parametrize(("job", "world"), _scenarios())
def test_every_transition_is_allowed(job: dict[str, Any], world: Observed):
    before = (job.get("status") or {}).get("phase")
    d = reconcile(job, world, NOW, SETTINGS)
    after = d.status_patch.get("phase", before)
    if after != before:
        assert Phase(after) in TRANSITIONS[Phase(before) if before else None], (before, after)
        assert d.events, "a transition posts an event"
    for action in d.actions:
        assert isinstance(action, Create | Delete) or action.reason


def test_resume_after_suspension_during_backoff_reuses_the_unmade_attempt():
    job = make_job(
        running(attempt=2, nextAttemptTime=rfc3339(NOW + timedelta(seconds=30))),
        runtime={"suspend": True},
    )
    old = Child("batch/v1", "Job", "demo-a1", 1, finished=True)
    job = apply(job, reconcile(job, Observed(children=(old,)), NOW, SETTINGS))
    job["spec"]["runtime"] = {"suspend": False}
    d = reconcile(job, Observed(children=(old,)), NOW, SETTINGS)
    assert "attempt" not in d.status_patch  # attempt 2 was never made: it is the one launched
    assert ("Job", "demo-a2") in kinds(d)


# --------------------------------------------------------------------------- exporting

EXPORT = {"formats": ["safetensors", "gguf"]}
GATE_EXPORT = {
    "formats": ["safetensors"],
    "gate": {"metric": "add_accuracy", "min": 0.9},
}
GATE_EVAL = {
    "metrics": [
        {
            "name": "add_accuracy",
            "type": "accuracy",
            "dataset": {"uri": "builtin://arithmetic-sft"},
            "extractor": "lastNumber",
        }
    ]
}
ARTIFACTS = [
    {"format": "safetensors", "uri": "s3://bucket/export/model", "verified": True},
    {"format": "gguf-f16", "uri": "s3://bucket/export/model-f16.gguf", "verified": True},
]


def export_failure(code: int) -> dict[str, str]:
    return {
        "type": "Failed",
        "reason": "PodFailurePolicy",
        "message": f"Container export for pod team-a/demo-export-a1-x failed with exit code "
        f"{code} matching FailJob rule at index 2",
    }


EXPORT_EVICTED = {
    "type": "Failed",
    "reason": "PodFailurePolicy",
    "message": "Pod team-a/demo-export-a1-x has condition DisruptionTarget matching FailJob "
    "rule at index 0",
}


def export_job(n: int, condition: dict[str, str] | None = None) -> dict[str, Any]:
    obj = launcher_job(1, condition)
    obj["metadata"] = {
        "name": names.export_job_name("demo", n),
        "labels": {
            names.LABEL_ATTEMPT: "1",
            names.LABEL_EXPORT_ATTEMPT: str(n),
            names.LABEL_COMPONENT: "export",
        },
    }
    return obj


def export_child(n: int, finished: bool = False) -> Child:
    return Child("batch/v1", "Job", names.export_job_name("demo", n), 1, finished, "export")


def export_world(exporter: dict[str, Any] | None, *extra: Child, pods=()) -> Observed:
    """Training attempt 1 finished; the export Job of the current export attempt as given."""
    children = [Child("batch/v1", "Job", "demo-a1", 1, True, "launcher"), *extra]
    if exporter is not None:
        n = int(exporter["metadata"]["labels"][names.LABEL_EXPORT_ATTEMPT])
        children.append(export_child(n, launcher_state(exporter)[0] != "running"))
    return Observed(exporter=exporter, children=tuple(children), export_pods=tuple(pods))


def exporting(n: int = 1, **extra: Any) -> dict[str, Any]:
    return running(**{"phase": "Exporting", "exportAttempt": n, **extra})


def stopped_pod(message: str, container: str = "export", code: int = 79) -> dict[str, Any]:
    state = {"terminated": {"exitCode": code, "message": message}}
    return {"status": {"containerStatuses": [{"name": container, "state": state}]}}


def created(decision: Decision) -> list[dict[str, Any]]:
    return [m for c in decision.creates for m in c.manifests]


def test_training_success_with_export_enters_exporting_and_runs_the_export_job():
    job = make_job(running(), export=EXPORT)
    d = reconcile(job, world_with(launcher_job(1, SUCCEEDED)), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Exporting"
    assert d.status_patch["exportAttempt"] == 1
    assert d.status_patch["output"] == "s3://bucket/runs/team-a/demo/output"
    assert "completionTime" not in d.status_patch
    assert kinds(d) == [("Job", "demo-export-a1")]  # nothing of training is made again
    (export,) = created(d)
    container = export["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-2:] == ["--stage", "export"]
    volumes = export["spec"]["template"]["spec"]["volumes"]
    assert {"name": "plan", "configMap": {"name": "demo-plan-a1"}} in volumes
    exported = cond(d, "Exported")
    assert (exported["status"], exported["reason"]) == ("False", "ExportRunning")
    assert cond(d, "Running")["reason"] == "TrainingSucceeded"
    assert "Succeeded" not in {c["type"] for c in d.status_patch["conditions"]}
    assert [e.reason for e in d.events] == ["TrainingSucceeded", "ExportLaunched"]


@pytest.mark.parametrize("export", [None, {"formats": []}])
def test_training_success_without_export_formats_succeeds_at_once(export):
    job = make_job(running()) if export is None else make_job(running(), export=export)
    d = reconcile(job, world_with(launcher_job(1, SUCCEEDED)), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Succeeded"
    assert not d.creates and "exportAttempt" not in d.status_patch
    assert "Exported" not in {c["type"] for c in d.status_patch["conditions"]}


def test_eval_job_success_carries_the_trainers_summary():
    summary = (
        "Model: dpo vs baseline base\n"
        "exact_match: 0.810 [0.750, 0.860] n=200  (↑ from 0.050; Δ +0.760 [0.700, 0.820], "
        "significantly better)"
    )
    job = make_job(running(evaluation={"models": ["base", "dpo"], "summary": summary}))
    d = reconcile(job, world_with(launcher_job(1, SUCCEEDED)), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Succeeded"
    message = cond(d, "Succeeded")["message"]
    assert message.startswith("attempt 1 succeeded; dpo vs baseline base: exact_match: 0.810")
    assert "significantly better" in message
    assert "evaluation" not in d.status_patch  # the trainer's field, never the operator's


def test_running_export_is_left_alone():
    job = make_job(exporting(), export=EXPORT)
    world = export_world(export_job(1))
    d = reconcile(job, world, NOW, SETTINGS)
    assert not d.creates and not d.deletes
    assert cond(d, "Exported")["message"] == "export attempt 1 is running"
    d2 = reconcile(apply(job, d), world, NOW, SETTINGS)
    assert d2.status_patch == {} and d2.actions == []


def test_export_success_lists_the_artifacts_the_stage_reported():
    job = make_job(exporting(artifacts=ARTIFACTS), export=EXPORT)
    d = reconcile(job, export_world(export_job(1, SUCCEEDED)), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Succeeded"
    assert d.status_patch["completionTime"] == rfc3339(NOW)
    assert "artifacts" not in d.status_patch  # the stage's field, never the operator's
    exported = cond(d, "Exported")
    assert (exported["status"], exported["reason"]) == ("True", "Exported")
    assert exported["message"] == (
        "export attempt 1 succeeded: 2 artifact(s) (safetensors, gguf-f16), 2 verified"
    )
    assert cond(d, "Succeeded")["reason"] == "Exported"
    assert {"Exported", "Succeeded"} <= {e.reason for e in d.events}


def test_export_success_without_artifacts_is_a_warning():
    job = make_job(exporting(), export=EXPORT)
    d = reconcile(job, export_world(export_job(1, SUCCEEDED)), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Succeeded"
    assert "reported no artifacts" in cond(d, "Exported")["message"]
    assert ("Warning", "NoArtifactsReported") in {(e.type, e.reason) for e in d.events}


def test_export_gate_not_met_succeeds_with_the_stages_message():
    job = make_job(exporting(), export=GATE_EXPORT, eval=GATE_EVAL)
    pod = stopped_pod("add_accuracy 0.41 is below the gate's min 0.9")
    d = reconcile(job, export_world(export_job(1, export_failure(79)), pods=[pod]), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Succeeded"
    assert "exportAttempt" not in d.status_patch and not d.creates  # not retried
    exported = cond(d, "Exported")
    assert (exported["status"], exported["reason"]) == ("False", "ExportGateNotMet")
    assert exported["message"].endswith("add_accuracy 0.41 is below the gate's min 0.9")
    assert cond(d, "Succeeded")["reason"] == "ExportGateNotMet"
    assert "Failed" not in {c["type"] for c in d.status_patch["conditions"]}


def test_export_gate_not_met_without_a_message_names_the_gate():
    job = make_job(exporting(), export=GATE_EXPORT, eval=GATE_EVAL)
    d = reconcile(job, export_world(export_job(1, export_failure(79))), NOW, SETTINGS)
    assert cond(d, "Exported")["message"].endswith("spec.export.gate asks for add_accuracy >= 0.9")


def test_export_failure_retries_the_export_alone_after_the_backoff():
    job = make_job(exporting(restarts=1), export=EXPORT)
    pod = stopped_pod("Traceback ... OSError: disk full")
    d = reconcile(job, export_world(export_job(1, export_failure(1)), pods=[pod]), NOW, SETTINGS)
    assert d.status_patch["exportAttempt"] == 2
    assert d.status_patch["exportRestarts"] == 1
    assert d.status_patch["nextAttemptTime"] == rfc3339(NOW + timedelta(seconds=10))
    assert {"attempt", "restarts", "phase"}.isdisjoint(d.status_patch)  # training untouched
    assert not d.creates and d.requeue_after == 10
    exported = cond(d, "Exported")
    assert exported["reason"] == "ExportFailure"
    assert "exit code 1" in exported["message"] and "OSError: disk full" in exported["message"]
    assert ("Warning", "ExportFailure") in {(e.type, e.reason) for e in d.events}

    job = apply(job, d)
    old = export_child(1, finished=True)
    early = reconcile(job, export_world(None, old), NOW + timedelta(seconds=4), SETTINGS)
    assert not early.creates and early.requeue_after == pytest.approx(6)
    d2 = reconcile(job, export_world(None, old), NOW + timedelta(seconds=10), SETTINGS)
    assert kinds(d2) == [("Job", "demo-export-a2")]
    assert not d2.deletes  # the failed export Job and the training launcher are kept
    assert d2.status_patch["nextAttemptTime"] is None
    assert "ExportRetried" in {e.reason for e in d2.events}
    volumes = created(d2)[0]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "plan", "configMap": {"name": "demo-plan-a1"}} in volumes
    # Counted once: the next pass sees attempt 2 running and changes nothing of the count.
    d3 = reconcile(apply(job, d2), export_world(export_job(2), old), NOW, SETTINGS)
    assert "exportRestarts" not in d3.status_patch and "exportAttempt" not in d3.status_patch


def test_export_disruption_is_retried_without_counting():
    job = make_job(exporting(exportRestarts=2), export=EXPORT)  # maxRestarts 2: exhausted
    d = reconcile(job, export_world(export_job(1, EXPORT_EVICTED)), NOW, SETTINGS)
    assert d.status_patch["exportAttempt"] == 2
    assert d.status_patch["disruptions"] == 1
    assert "exportRestarts" not in d.status_patch
    assert cond(d, "Exported")["reason"] == "ExportDisruption"


def test_export_failures_exhausted_fail_with_the_exit_code():
    job = make_job(exporting(3, exportRestarts=2), export=EXPORT)
    failed_job = export_job(3, export_failure(1))
    d = reconcile(job, export_world(failed_job), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Failed"
    failed = cond(d, "Failed")
    assert failed["reason"] == "ExportFailed"
    assert "export attempt 3 failed" in failed["message"]
    assert "exit code 1" in failed["message"]
    assert "resume.maxRestarts (2) exhausted" in failed["message"]
    assert cond(d, "Exported")["reason"] == "ExportFailed"
    assert not d.creates


def test_export_invalid_plan_fails_without_retry():
    job = make_job(exporting(), export=EXPORT)
    d = reconcile(job, export_world(export_job(1, export_failure(78))), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Failed"
    assert cond(d, "Failed")["reason"] == "ExportInvalidPlan"
    assert "exit code 78" in cond(d, "Failed")["message"]
    assert not d.creates and "exportAttempt" not in d.status_patch


def test_export_job_is_recreated_by_name_after_a_crash():
    # The status said exportAttempt 1 but the Job was never created (operator died between).
    d = reconcile(make_job(exporting(), export=EXPORT), export_world(None), NOW, SETTINGS)
    assert kinds(d) == [("Job", "demo-export-a1")]
    assert "exportAttempt" not in d.status_patch


def test_suspend_during_export_deletes_the_export_job_and_resume_exports_again():
    job = make_job(exporting(), export=EXPORT, runtime={"suspend": True})
    world = export_world(export_job(1))
    d = reconcile(job, world, NOW, SETTINGS)
    assert d.status_patch["phase"] == "Suspended"
    assert d.deletes == [Delete("batch/v1", "Job", "demo-export-a1")]  # the launcher is done
    job = apply(job, d)
    job["spec"]["runtime"] = {"suspend": False}
    # The deleted export Job may linger (terminating): its name is not reused.
    d = reconcile(job, export_world(None, export_child(1)), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Exporting"
    assert d.status_patch["exportAttempt"] == 2
    assert kinds(d) == [("Job", "demo-export-a2")]  # no retraining
    assert cond(d, "Suspended")["status"] == "False"
    assert "exportRestarts" not in d.status_patch and "attempt" not in d.status_patch


def test_deadline_during_export_fails_and_stops_the_export_job():
    job = make_job(exporting(startTime=rfc3339(NOW - timedelta(seconds=100))), export=EXPORT)
    job["spec"]["activeDeadlineSeconds"] = 60
    d = reconcile(job, export_world(export_job(1)), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Failed"
    assert cond(d, "Failed")["reason"] == "DeadlineExceeded"
    assert d.deletes == [Delete("batch/v1", "Job", "demo-export-a1")]


def test_export_removed_from_the_spec_while_exporting_succeeds():
    d = reconcile(make_job(exporting()), export_world(export_job(1)), NOW, SETTINGS)
    assert d.status_patch["phase"] == "Succeeded"
    assert d.deletes == [Delete("batch/v1", "Job", "demo-export-a1")]


def test_export_jobs_are_not_launchers():
    # A new training attempt keeps a (stale, running) export Job out of the launcher sweep, and
    # the export sweep keeps training launchers: each owns its kind of Job.
    stale_export = export_child(1)
    job = make_job(running(attempt=2))
    d = reconcile(job, Observed(children=(stale_export,)), NOW, SETTINGS)
    assert Delete("batch/v1", "Job", "demo-export-a1") not in d.deletes
    assert ("Job", "demo-a2") in kinds(d)
    running_launcher = Child("batch/v1", "Job", "demo-a1", 1, False, "launcher")
    job = make_job(exporting(), export=EXPORT, runtime={"suspend": True})
    d = reconcile(job, Observed(children=(running_launcher,)), NOW, SETTINGS)
    assert Delete("batch/v1", "Job", "demo-a1") in d.deletes  # suspension stops both kinds


def test_termination_message_is_read_from_the_export_container_only():
    job = make_job(exporting(), export=EXPORT)
    pods = [stopped_pod("sidecar noise", container="istio-proxy"), stopped_pod("  real\n  reason ")]
    d = reconcile(job, export_world(export_job(1, export_failure(1)), pods=pods), NOW, SETTINGS)
    message = cond(d, "Exported")["message"]
    assert "the export stage said: real reason;" in message and "sidecar" not in message


def _export_scenarios() -> list[tuple[dict[str, Any], Observed]]:
    out = []
    for exporter in (
        None,
        export_job(1),
        export_job(1, SUCCEEDED),
        export_job(1, export_failure(1)),
        export_job(1, export_failure(79)),
    ):
        for suspend in (False, True):
            for phase in ("Exporting", "Suspended"):
                status = exporting(phase=phase)
                job = make_job(status, export=EXPORT, runtime={"suspend": suspend})
                out.append((job, export_world(exporter)))
    return out


@pytest.mark.parametrize(("job", "world"), _export_scenarios())
def test_every_export_transition_is_allowed(job: dict[str, Any], world: Observed):
    test_every_transition_is_allowed(job, world)
