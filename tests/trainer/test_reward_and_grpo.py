"""Reward models, GRPO and RLOO on tiny builtin models: a reward model learns a held-out
preference and its output scores through RewardModelScorer; GRPO and RLOO raise the mean of a
rule reward."""

from __future__ import annotations

import json
import random
from pathlib import Path
from statistics import fmean
from typing import Any

import pytest
from trainer_support import run_job

from kubetune_trainer.plan import Plan

pytestmark = pytest.mark.trainer


def history(plan: Plan) -> list[dict[str, Any]]:
    path = Path(plan.storage.root) / plan.storage.run_name / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------ reward model


def even_answer_pairs(path: Path, split: str, count: int, seed: int) -> list[dict[str, Any]]:
    """hh-rlhf rows over the builtin arithmetic questions, labelled by a rater who prefers even
    numbers: of two adjacent numbers near the answer, the even one is chosen. Both responses
    have the same form, so a random score head ranks them about at chance; a from-scratch tiny
    model cannot learn arithmetic correctness itself within a CPU budget."""
    source = Path(__file__).resolve().parents[2] / "trainer_image/kubetune_trainer/data"
    lines = (source / f"synthetic_data/arithmetic-preference/{split}.jsonl").read_text()
    rng = random.Random(seed)
    rows = []
    for line in lines.splitlines()[:count]:
        row = json.loads(line)
        human = f"\n\nHuman: {row['prompt'][-1]['content']}\n\nAssistant: "
        answer = int(row["answer"])
        even = answer + answer % 2
        odd = even + rng.choice((-1, 1))
        rows.append({"chosen": human + str(even), "rejected": human + str(odd), "gap": 0.5})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def pairwise_accuracy(model_source: str, rows: list[dict[str, Any]]) -> float:
    """Share of pairs the RewardModelScorer ranks chosen above rejected."""
    from kubetune_trainer.data.conversations import parse_hh
    from kubetune_trainer.evaluation.rewards import RewardModelScorer
    from kubetune_trainer.plan import ModelSpec

    scorer = RewardModelScorer(ModelSpec(source=model_source))
    prompts = [parse_hh(r["chosen"], "chosen")[:-1] for r in rows]
    chosen = scorer.score(prompts, [parse_hh(r["chosen"], "c")[-1]["content"] for r in rows])
    rejected = scorer.score(prompts, [parse_hh(r["rejected"], "r")[-1]["content"] for r in rows])
    return fmean(c > r for c, r in zip(chosen, rejected, strict=True))


def test_reward_model_learns_heldout_preference_and_scores_through_scorer(tmp_path: Path) -> None:
    train_rows = even_answer_pairs(tmp_path / "train.jsonl", "train", 320, seed=1)
    heldout_rows = even_answer_pairs(tmp_path / "test.jsonl", "test", 96, seed=2)
    assert train_rows and heldout_rows
    data_source = {"format": "hh-rlhf"}
    plan = run_job(
        tmp_path,
        "rm",
        "reward",
        {
            "data": {
                "sources": [{"uri": str(tmp_path / "train.jsonl"), **data_source}],
                "evalSources": [{"uri": str(tmp_path / "test.jsonl"), **data_source}],
            },
            "training": {
                "epochs": 1,
                "learningRate": 1e-3,
                "perDeviceBatchSize": 16,
                "maxLength": 64,
                "logEverySteps": 5,
                "trlArgs": {"eval_on_start": True},
            },
            "reward": {"marginColumn": "gap", "centerRewardsCoefficient": 0.01},
        },
    )
    evals = [e for e in history(plan) if "eval_accuracy" in e]
    before, after = evals[0]["eval_accuracy"], evals[-1]["eval_accuracy"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 20
    assert after >= 0.9 and after > before + 0.3, (before, after)
    # The output is a model source the scorer (and so ppo/grpo reward terms) loads.
    scored = pairwise_accuracy(plan.storage.output_dir, heldout_rows)
    assert scored == pytest.approx(after, abs=0.02), (scored, after)


# ------------------------------------------------------------------------------ GRPO / RLOO

DIGIT = r"\d"


@pytest.mark.parametrize("variant", ["grpo", "rloo"])
def test_grpo_and_rloo_raise_mean_rule_reward(tmp_path: Path, variant: str) -> None:
    """From the random-init tiny Llama, about 1 in 200 sampled tokens is a digit, so a few of
    each step's completions contain one; the reward (1 when a digit appears) must climb."""
    plan = run_job(
        tmp_path,
        variant,
        "grpo",
        {
            "data": {"sources": [{"uri": "builtin://arithmetic-prompts", "maxSamples": 320}]},
            "training": {
                "maxSteps": 30,
                "learningRate": 2e-3,
                "scheduler": "constant",
                "perDeviceBatchSize": 32,
                "logEverySteps": 1,
            },
            "grpo": {
                "variant": variant,
                "rewards": [{"type": "regex", "pattern": DIGIT}],
                "numGenerations": 8,
                "maxCompletionLength": 16,
                "temperature": 1.0,
            },
        },
    )
    rewards = [e["reward"] for e in history(plan) if "reward" in e]
    assert len(rewards) == 30
    early, late = fmean(rewards[:5]), fmean(rewards[-5:])
    assert late >= 0.5 and late > early + 0.3, (early, late)
    assert (Path(plan.storage.output_dir) / "config.json").is_file()
