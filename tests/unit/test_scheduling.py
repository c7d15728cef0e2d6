"""Which events cost a reconcile pass (kubetune.controller.scheduling): the operator's own status
patches and a launcher's pods starting cost nothing; a new job, a spec change, a checkpoint, a
launcher that finishes, and pods that run again for a job that said they did not, cost one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kubetune.builders import names
from kubetune.controller.api_client import ApiClient
from kubetune.controller.config import OperatorConfig
from kubetune.controller.lifecycle import Create, Decision
from kubetune.controller.metrics import OperatorMetrics
from kubetune.controller.peering import Peering
from kubetune.controller.scheduling import Scheduler

NS = "team-a"


def scheduler() -> Scheduler:
    config = OperatorConfig()
    api = ApiClient(config)  # never connects: events are handled without I/O
    return Scheduler(config, api, OperatorMetrics(), Peering(config, api))


def job(generation: int = 1, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo", "namespace": NS, "generation": generation},
        "spec": {"method": "sft"},
        "status": status,
    }


def launcher(ready: int = 0, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": names.launcher_name("demo", 1),
            "namespace": NS,
            "labels": {names.LABEL_JOB: "demo"},
        },
        "spec": {"parallelism": 1},
        "status": {"ready": ready, **status},
    }


def passes(steps: Callable[[Scheduler], None]) -> list[tuple[str, str]]:
    """The jobs the scheduler would reconcile after ``steps``."""

    async def run() -> list[tuple[str, str]]:
        s = scheduler()
        steps(s)
        due = sorted(s.timers)
        for handle in s.timers.values():
            handle.cancel()
        return due

    return asyncio.run(run())


def created_launcher(s: Scheduler) -> None:
    """The job's first pass happened and created attempt 1's launcher; timers cleared."""
    s.job_event(None, job())
    s.timers.clear()
    s._seed_signals(NS, "demo", Decision(actions=[Create([launcher()])]))


def test_a_new_job_is_reconciled_once_and_its_own_patch_costs_nothing():
    def steps(s: Scheduler) -> None:
        s.job_event("ADDED", job())
        s.timers.clear()
        s.job_event("MODIFIED", job(phase="Running", attempt=1))  # the operator's patch

    assert passes(lambda s: s.job_event("ADDED", job())) == [(NS, "demo")]
    assert passes(steps) == []


def test_a_spec_change_and_a_new_checkpoint_are_reconciled():
    def spec_changed(s: Scheduler) -> None:
        created_launcher(s)
        s.job_event("MODIFIED", job(generation=2, phase="Running"))

    def checkpoint(s: Scheduler) -> None:
        created_launcher(s)
        s.job_event("MODIFIED", job(phase="Running", lastCheckpoint={"uri": "s3://b/c", "step": 4}))

    assert passes(spec_changed) == [(NS, "demo")]
    assert passes(checkpoint) == [(NS, "demo")]


def test_launcher_events_that_change_nothing_the_lifecycle_reads_cost_nothing():
    def steps(s: Scheduler) -> None:
        created_launcher(s)
        s.child_event("ADDED", launcher())
        s.child_event("MODIFIED", launcher(active=1))
        s.child_event("MODIFIED", launcher(ready=1, active=1))  # its pod runs

    assert passes(steps) == []


def test_a_finished_launcher_is_reconciled():
    def steps(s: Scheduler) -> None:
        created_launcher(s)
        s.child_event("MODIFIED", launcher(conditions=[{"type": "Complete", "status": "True"}]))

    assert passes(steps) == [(NS, "demo")]


def test_pods_that_run_again_are_reconciled_only_for_a_job_that_said_they_did_not():
    flagged = [{"type": "PodsReady", "status": "False", "reason": "Unschedulable"}]

    def steps(s: Scheduler) -> None:
        created_launcher(s)
        s.job_event("MODIFIED", job(phase="Running", conditions=flagged))
        s.child_event("MODIFIED", launcher(ready=1))

    assert passes(steps) == [(NS, "demo")]


def test_a_pods_check_is_skipped_when_the_launchers_events_say_they_run():
    """After the grace: nothing when the launcher's events said its pods run; a look at the
    pods (one request, a pass only if somebody said why they do not run) when they did not; a
    pass at once for a job whose PodsReady is False already (it refreshes the word)."""
    launcher_name = names.launcher_name("demo", 1)
    looks: list[int] = []

    def check(s: Scheduler) -> None:
        s.schedule_pods_check(NS, "demo", launcher_name, 0, expected=2)
        s._check_pods((NS, "demo"))
        looks.append(len(s.tasks))
        for task in s.tasks:
            task.cancel()

    def steps(s: Scheduler) -> None:
        created_launcher(s)
        s.child_event("MODIFIED", launcher(ready=1))
        check(s)

    def still_pending(s: Scheduler) -> None:
        created_launcher(s)
        check(s)

    def silent_for_ten_graces(s: Scheduler) -> None:
        created_launcher(s)
        silence = s.config.pods_grace * 10
        s.schedule_pods_check(NS, "demo", launcher_name, 0, expected=1, silent_for=silence)
        s._check_pods((NS, "demo"))
        looks.append(len(s.tasks))

    def flagged(s: Scheduler) -> None:
        created_launcher(s)
        conditions = [{"type": "PodsReady", "status": "False", "reason": "Unschedulable"}]
        s.job_event("MODIFIED", job(phase="Running", conditions=conditions))
        s.timers.clear()
        check(s)

    assert passes(steps) == [] and looks == [0]
    assert passes(still_pending) == [] and looks[-1] == 1
    assert passes(flagged) == [(NS, "demo")] and looks[-1] == 0
    assert passes(silent_for_ten_graces) == [(NS, "demo")] and looks[-1] == 0


def test_only_a_new_jobs_first_pass_uses_the_events_body_instead_of_a_fresh_read():
    """A job nobody has written a status on is what its event shows; any later version may
    be behind the operator's own last patch, so its pass reads the job again."""
    kept: list[dict[str, Any]] = []

    def new_job(s: Scheduler) -> None:
        s.job_event("ADDED", job())
        kept.append(dict(s.untouched))

    def listed_at_start(s: Scheduler) -> None:
        s.job_event(None, job(phase="Running", attempt=1))
        kept.append(dict(s.untouched))

    def edited_before_its_pass(s: Scheduler) -> None:
        s.job_event("ADDED", job())
        s.job_event("MODIFIED", job(generation=2))
        kept.append(dict(s.untouched))

    assert passes(new_job) == [(NS, "demo")] and kept[-1] == {(NS, "demo"): job()}
    assert passes(listed_at_start) == [(NS, "demo")] and kept[-1] == {}
    assert passes(edited_before_its_pass) == [(NS, "demo")] and kept[-1] == {}


def test_a_launcher_that_finished_unseen_is_reconciled():
    """A launcher whose earlier events this process never saw (its state was dropped, or it
    was made before a restart) and that has finished asks for a pass; one that runs does not."""

    def finished(s: Scheduler) -> None:
        created_launcher(s)
        s.signals.clear()
        s.child_event("MODIFIED", launcher(conditions=[{"type": "Complete", "status": "True"}]))

    def running(s: Scheduler) -> None:
        created_launcher(s)
        s.signals.clear()
        s.child_event("MODIFIED", launcher(active=1))

    assert passes(finished) == [(NS, "demo")]
    assert passes(running) == []
