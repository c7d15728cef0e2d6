"""The loop, proven: simulated labelers with a planted preference (concise answers over chatty
ones) and one noisy labeler vote on 260 pairs through the API; the noisy labeler is excluded;
the snapshot trains a DPO model (``kubetune run --local``, an unmodified FineTuneJob whose data
source is ``studio://HOST/CAMPAIGN@VERSION``; the written snapshot directory reads the same);
on held-out prompts the model's implicit reward prefers the concise answer with a bootstrap
95% interval above 0.5."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from kubetune_trainer.data.synthetic import DATA_DIR
from kubetune_trainer.evaluation.statistics import bootstrap_mean
from tests.studio.conftest import RunningStudio
from tests.studio.studio_support import Api, admin_api, set_up_campaign

ITEMS = 260
GOLD = 20
HELD_OUT = 120
CHATTY = (
    "Sure! I think the answer is {n}.",
    "Let me see... it is {n}, I believe.",
    "Good question. The result should be {n}.",
)
GOOD = {f"good{i}@example.com": f"good-password-{i}" for i in range(3)}
NOISY = {"noisy@example.com": "noisy-password"}
BETA = 0.1


def prompts(split: str, count: int, skip: int = 0) -> list[dict]:
    """Distinct prompts of a builtin split (the same question can occur twice)."""
    path = DATA_DIR / "arithmetic-prompts" / f"{split}.jsonl"
    rows = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(json.dumps(row["prompt"], sort_keys=True), row)
    return list(rows.values())[skip : skip + count]


def concise(row: dict) -> str:
    return row["answer"]


def chatty(row: dict, index: int) -> str:
    return CHATTY[index % len(CHATTY)].format(n=row["answer"])


def generations() -> list[dict]:
    """What an eval job would save: each model's response per prompt."""
    out = []
    for i, row in enumerate(prompts("train", ITEMS)):
        out.append({"prompt": row["prompt"], "model": "concise", "response": concise(row)})
        out.append({"prompt": row["prompt"], "model": "chatty", "response": chatty(row, i)})
    return out


def gold_items() -> list[dict]:
    out = []
    for i, row in enumerate(prompts("train", GOLD, skip=ITEMS)):
        short, long = concise(row), chatty(row, i)
        a, b, answer = (short, long, "a") if i % 2 else (long, short, "b")
        out.append({"prompt": row["prompt"], "response_a": a, "response_b": b, "answer": answer})
    return out


def vote_once(api: Api, slug: str, rng: np.random.Generator, noisy: bool) -> bool:
    """One vote on the labeler's next item, False when nothing is left: the planted preference
    (the shorter answer 88%, the other 8%, tie 4%), or uniformly random for the noisy one."""
    item = api.ok("GET", f"/api/campaigns/{slug}/next")["item"]
    if item is None:
        return False
    shorter = "a" if len(item["response_a"]) < len(item["response_b"]) else "b"
    longer = "b" if shorter == "a" else "a"
    if noisy:
        choice = str(rng.choice(["a", "b", "tie", "both_bad"]))
    else:
        choice = str(rng.choice([shorter, longer, "tie"], p=[0.88, 0.08, 0.04]))
    api.ok(
        "POST",
        f"/api/campaigns/{slug}/votes",
        json={
            "item_id": item["item_id"],
            "choice": choice,
            "confidence": int(rng.integers(1, 6)),
            "time_spent_ms": int(rng.integers(3000, 20000)),
        },
    )
    return True


def read_preferences(uri: str) -> list[dict]:
    """The rows a DPO job reads from ``uri`` (the trainer's own data loading)."""
    from kubetune_trainer.data import load_data
    from kubetune_trainer.plan import DataSpec

    spec = DataSpec.model_validate({"sources": [{"uri": uri, "format": "preference"}]})
    return list(load_data(spec, kind="preference").train)


def implicit_reward_wins(model_dir: Path, reference: str, rows: list[dict]) -> np.ndarray:
    """Per held-out pair: 1 when the DPO model's implicit reward,
    beta * (log pi(y|x) - log pi_ref(y|x)), is higher for the concise answer."""
    import torch

    from kubetune_trainer.evaluation.measures import loss_tokens
    from kubetune_trainer.models import load_model_and_tokenizer

    def logps(source: str) -> np.ndarray:
        model, tokenizer = load_model_and_tokenizer(source)
        model.eval()
        out = []
        for row in rows:
            pair = []
            for completion in (row["chosen"], row["rejected"]):
                ids, labels = loss_tokens(
                    tokenizer, {"prompt": row["prompt"], "completion": completion}, 256
                )
                with torch.no_grad():
                    logits = model(torch.tensor([ids])).logits[0, :-1]
                targets = torch.tensor(labels[1:])
                scored = targets != -100
                picked = logits.log_softmax(-1)[scored].gather(1, targets[scored][:, None])
                pair.append(float(picked.sum()))
            out.append(pair)
        return np.array(out)

    margin = BETA * (logps(str(model_dir)) - logps(reference))
    return (margin[:, 0] > margin[:, 1]).astype(float)


def test_votes_with_a_planted_preference_train_a_dpo_model_that_holds_it(
    studio: RunningStudio, tmp_path: Path, tier_cache: Path
) -> None:
    admin = admin_api(studio.url)
    set_up_campaign(
        admin,
        "concise",
        generations(),
        GOOD | NOISY,
        gold=gold_items(),
        models=("concise", "chatty"),
        baseline="chatty",
        labels_per_item=3,
        gold_every=10,
        min_consensus_votes=20,
    )
    rng = np.random.default_rng(0)
    labelers = [(Api(studio.url, e, p), False) for e, p in GOOD.items()]
    labelers += [(Api(studio.url, e, p), True) for e, p in NOISY.items()]
    while labelers:  # they take turns, as people working at the same time would
        labelers = [
            (api, noisy) for api, noisy in labelers if vote_once(api, "concise", rng, noisy)
        ]

    report = admin.ok("GET", "/api/campaigns/concise/report")
    assert report["overview"]["items"] == ITEMS
    assert report["overview"]["items_at_overlap"] == ITEMS
    status = {q["email"]: q for q in report["labelers"]}
    assert status["noisy@example.com"]["excluded"], status["noisy@example.com"]
    assert not any(status[e]["excluded"] for e in GOOD)
    (rate,) = report["win_rates"]
    assert rate["model"] == "concise" and rate["low"] > 0.5, rate

    made = admin.ok("POST", "/api/campaigns/concise/snapshots")
    manifest = made["manifest"]
    assert manifest["counts"]["pairs"] >= 200, manifest["counts"]
    assert manifest["filters"]["excluded_labelers"] == [
        str(next(i for i, q in manifest["agreement"]["labelers"].items() if q["excluded"]))
    ]
    assert manifest["counts"]["votes_excluded_labelers"] > 0
    snapshot_dir = Path(made["location"])
    rows = [json.loads(x) for x in (snapshot_dir / "train.jsonl").read_text().splitlines()]
    chosen_concise = np.mean([r["chosen_model"] == "concise" for r in rows])
    assert chosen_concise > 0.9

    # The snapshot as the studio serves it (studio://) and as written (a path, or a PVC mount).
    host = studio.url.removeprefix("http://")
    source = f"studio://{host}/concise@{made['version']}"
    token = admin.http.headers["Authorization"].removeprefix("Bearer ")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBETUNE_STUDIO_TOKEN", token)
        served = read_preferences(source)
    assert served == read_preferences(str(snapshot_dir)) and len(served) == len(rows)

    job = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "dpo-from-studio", "namespace": "studio"},
        "spec": {
            "method": "dpo",
            "model": {"source": "builtin://tiny-llama"},
            "data": {"sources": [{"uri": source, "format": "preference"}]},
            "training": {
                "epochs": 1,
                "learningRate": 1e-3,
                "perDeviceBatchSize": 16,
                "maxLength": 96,
                "logEverySteps": 5,
            },
            "dpo": {"beta": BETA},
        },
    }
    job_file = tmp_path / "dpo.yaml"
    job_file.write_text(yaml.safe_dump(job))
    storage = tmp_path / "runs"
    env = os.environ | {
        "OMP_NUM_THREADS": "1",
        "KUBETUNE_METRICS_PORT": "0",
        "KUBETUNE_STUDIO_TOKEN": token,
    }
    command = [sys.executable, "-m", "kubetune.cli", "run", "--local", str(job_file)]
    done = subprocess.run([*command, "--storage", str(storage), "--mode", "single"], env=env)
    assert done.returncode == 0

    held_out = []
    for i, row in enumerate(prompts("test", HELD_OUT)):
        held_out.append(
            {
                "prompt": row["prompt"],
                "chosen": [{"role": "assistant", "content": concise(row)}],
                "rejected": [{"role": "assistant", "content": chatty(row, i)}],
            }
        )
    wins = implicit_reward_wins(
        storage / "studio" / "dpo-from-studio" / "output", "builtin://tiny-llama", held_out
    )
    accuracy = bootstrap_mean(wins)
    assert accuracy.low > 0.5, accuracy.format()
