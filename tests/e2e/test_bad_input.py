"""Bad input against a real control plane.

* The trainer's exit codes are kept end to end: kwok ends the trainer pod with a chosen exit code
  and termination message, and the operator reads them as the contract says (65 bad data and 78
  invalid plan: Failed at once, no attempt 2; 75 preempted: a disruption, not counted).
* `kubetune validate` agrees with the API server: on a seeded sample of mutated examples, a
  document validate accepts is one `kubectl create` accepts and the operator runs; a document it
  refuses is refused by the API server (server-side dry run) or by the operator's own check.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import kc, wait_for
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from test_operator import (
    NODE_GROUP,
    Operator,
    condition,
    create,
    events,
    ftj,
    launcher,
    outcome,
    status,
    wait_phase,
)

from kubetune.controller.lifecycle import spec_problems
from kubetune.validation import load_jobs, pipeline_problems
from tests.manifest_mutations import dump, example_documents, mutate

pytestmark = pytest.mark.e2e

BAD_ROW = (
    "error: data/train.jsonl: row 4 (line 5): malformed JSON: Expecting value: line 1 column 1 "
    "(char 0) (exit 65: bad data)"
)
REFUSED_PLAN = "error: invalid plan /etc/kubetune/plan.json: recipe: ... (exit 78: invalid plan)"


@pytest.fixture(scope="module")
def api(cluster) -> k8s.ApiClient:
    cluster.add_gpu_nodes(1, group=NODE_GROUP)  # where ftj() places its pods
    return k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="module")
def operator(cluster, api, tmp_path_factory) -> Iterator[Operator]:
    op = Operator(cluster.kubeconfig, tmp_path_factory.mktemp("operator-bad-input"))
    op.start()
    yield op
    op.stop()


@pytest.mark.parametrize(
    ("code", "message", "reason"),
    [(65, BAD_ROW, "BadData"), (78, REFUSED_PLAN, "InvalidPlan")],
    ids=["bad-data", "invalid-plan"],
)
def test_final_exit_codes_fail_the_job_without_a_retry(
    api, operator, namespace, code: int, message: str, reason: str
) -> None:
    pods = outcome("fail", "1s", exit_code=code) | {kc.TERMINATION_MESSAGE: message}
    create(api, namespace, ftj("final", pods=pods))
    s = wait_phase(api, namespace, "final", "Failed", timeout=60)
    failed = condition(s, "Failed")
    assert failed["reason"] == reason
    assert f"exit code {code}" in failed["message"]
    assert f"the trainer said: {message}" in failed["message"], failed["message"]
    assert (s["attempt"], s.get("restarts") or 0) == (1, 0)
    assert launcher(api, namespace, "final", 2) is None, "no attempt 2"


def test_exit_75_is_a_disruption_not_a_restart(api, operator, namespace) -> None:
    create(api, namespace, ftj("preempted", pods=outcome("fail", "2s", exit_code=75)))
    # Every attempt's pods exit 75: look once the first one is counted.
    s = wait_for(
        lambda: (st := status(api, namespace, "preempted")).get("attempt", 0) >= 2 and st,
        timeout=60,
        what="attempt 2",
    )
    assert s.get("restarts") in (None, 0) and s["disruptions"] >= 1
    assert s["phase"] != "Failed"
    assert "Disruption" in events(api, namespace, "preempted")


SAMPLE = 80
SEED = 15


def kubetune_verdict(text: str) -> list[str]:
    """The problems `kubetune validate` reports for a file holding text (its schema checks;
    local data paths are a check of this machine, not of the cluster)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.yaml"
        path.write_text(text)
        jobs, problems = load_jobs([path])
        return [str(p) for p in problems + pipeline_problems(jobs)]


def test_validate_agrees_with_the_api_server_on_mutated_examples(cluster, namespace) -> None:
    rng = random.Random(SEED)
    examples = example_documents()
    outcomes: Counter[str] = Counter()
    disagreements = []
    for _ in range(SAMPLE):
        doc = mutate(rng.choice(examples), rng)
        if isinstance(doc.get("metadata"), dict):
            doc["metadata"]["namespace"] = namespace
        text = dump(doc)
        ours = kubetune_verdict(text)
        server = cluster.kubectl_proc(
            "create", "--dry-run=server", "-o", "json", "-n", namespace, "-f", "-", input=text
        )
        if server.returncode != 0:
            verdict, detail = "refused by the API server", server.stderr.strip()
        elif problems := spec_problems(json.loads(server.stdout)):
            verdict, detail = "refused by the operator (InvalidSpec)", "; ".join(problems)
        else:
            verdict, detail = "accepted", ""
        outcomes[verdict] += 1
        if bool(ours) != (verdict != "accepted"):
            disagreements.append(f"{verdict}: {detail}\nkubetune validate: {ours}\n{text}")
    assert not disagreements, f"{len(disagreements)} of {SAMPLE}:\n" + "\n\n".join(disagreements)
    # The sample must hold both verdicts of the server, or the agreement proves little.
    assert outcomes["refused by the API server"] >= SAMPLE // 5, outcomes
    assert outcomes["accepted"] >= SAMPLE // 10, outcomes
