"""Self-critique against the same SFT without it, and against best-of-N sampling at the same
generation budget, in one run on CPU.

The task: "Last digit of 347?", on SFT data where two answers in three are the non-answer
"I do not know." and the rest the bare digit ("7"), so plain SFT learns to say "I do not
know.". The reward asks for a complete, right answer: answerMatch on the last number (1) plus a
regex for the sentence "The last digit of 347 is 7." (1): a right sentence scores 2, a right
bare digit or a wrong sentence 1, the non-answer 0. The starting policy is a short SFT on the
data: it answers some questions, often wrongly, never in a sentence.

The critic is a scripted OpenAI-compatible endpoint (:class:`ScriptedCritic`), standing in for
a larger model behind ``kubetune serve``. It reads the question and the answer from the
request and replies in the critique protocol: a right sentence it repeats; any other answer
it revises into a sentence whose digit is right for 60% of answers and the question's first
digit (wrong: the test numbers' digits all differ) for the rest, chosen by a hash of question
and answer so every run is the same; one request in eleven it answers without a "Revision:"
line (a parse failure).

Compared, each continuing from the starting policy for the same steps on the same data:

- plain: SFT on the data (the same run without selfCritique);
- self-critique: samples 2, rounds 1, critiqueWeight 0.5: 2 policy answers + 2 critic replies
  per prompt, 4 generations;
- best-of-N: N = 4 policy samples per prompt (the same budget), the best kept when it scores
  strictly higher than the first sample (the rule self-critique applies to a revision and its
  answer), mixed in at the same weight by the data mixture's rule.

Measured: the held-out reward (greedy answers to numbers no training row has), paired on the
same questions with bootstrap intervals. The three continuations train side by side.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

import pytest
from fastapi import FastAPI, Request
from technique_tasks import (
    NO_SAVES,
    NON_ANSWER,
    TRAINING,
    last_digit_question,
    number_pools,
    write_jsonl,
)
from trainer_support import run_dir, run_job, start_job

from kubetune_trainer.plan import Plan
from kubetune_trainer.recipes.self_critique import PROVENANCE_FILE
from tests.support.asgi import serving

pytestmark = pytest.mark.trainer

PROMPTS = 64
SAMPLES = 2
BEST_OF = SAMPLES * 2  # a policy answer and a critic reply per sample
WEIGHT = 0.5
WARMUP_STEPS = 30
STEPS = 40
REWARD = [
    {"type": "answerMatch", "match": "numeric"},
    {"type": "regex", "pattern": r"^The last digit of \d+ is \d\.$"},
]
ANSWER_TOKENS = 24
CRITIC_RIGHT = 0.6
PARSE_FAILURE_EVERY = 11

_QUESTION = re.compile(r"Last digit of (\d+)\?")


def sentence(number: str, digit: str) -> str:
    return f"The last digit of {number} is {digit}."


def last_digit_rows(numbers: list[int], seed: int = 5) -> list[dict[str, Any]]:
    """Messages rows with the right last digit as the answer column; the assistant says "I do
    not know." 60% of the time, the bare digit 25%, and the sentence 15%."""
    rng = random.Random(seed)
    rows = []
    for n in numbers:
        draw = rng.random()
        digit = str(n)[2]
        said = NON_ANSWER if draw < 0.6 else digit if draw < 0.85 else sentence(str(n), digit)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": last_digit_question(n)},
                    {"role": "assistant", "content": said},
                ],
                "answer": digit,
            }
        )
    return rows


def _fraction(*parts: str) -> float:
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def critic_reply(request: str) -> str:
    """The scripted critic's reply to one critique request (see the module docstring)."""
    number = _QUESTION.search(request).group(1)  # type: ignore[union-attr]
    answer = request.rsplit("[Answer]\n", 1)[1].strip()
    right = sentence(number, number[2])
    if _fraction("parse", number, answer) < 1 / PARSE_FAILURE_EVERY:
        return "I would rather not say."
    if answer == right:
        return f"Critique: the answer is right and complete.\nRevision: {right}"
    revision = (
        right if _fraction("right", number, answer) < CRITIC_RIGHT else sentence(number, number[0])
    )
    critique = f"{answer!r} does not say the last digit of {number} in a sentence."
    return f"Critique: {critique}\nRevision: {revision}"


@dataclass
class ScriptedCritic:
    """An OpenAI-compatible chat-completions endpoint answering with :func:`critic_reply`, and
    the requests it got."""

    url: str
    requests: list[dict[str, Any]]


def critic_app(requests: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(request: Request) -> dict[str, Any]:
        body: dict[str, Any] = await request.json()
        requests.append(body)
        content = critic_reply(body["messages"][-1]["content"])
        return {
            "id": "chatcmpl-critic",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
        }

    return app


@pytest.fixture(scope="module")
def critic() -> Iterator[ScriptedCritic]:
    requests: list[dict[str, Any]] = []
    with serving(critic_app(requests)) as base:
        yield ScriptedCritic(f"{base}/v1", requests)


def held_out_rewards(output: str, numbers: list[int]) -> list[float]:
    """The reward of the model's greedy answer to each held-out question."""
    from kubetune_trainer.evaluation.rewards import build_reward
    from kubetune_trainer.plan import RewardSource
    from kubetune_trainer.serving.inference import ChatModel

    chat = ChatModel.load(output, device="cpu")
    prompts = [[{"role": "user", "content": last_digit_question(n)}] for n in numbers]
    texts = [samples[0].text for samples in chat.complete(prompts, max_new_tokens=ANSWER_TOKENS)]
    reward = build_reward([RewardSource.model_validate(r) for r in REWARD], 1.0, tokenizer=None)
    return reward(prompts, texts, [{"answer": str(n)[2]} for n in numbers])


def best_of_n_rows(plan: Plan, tmp: Path) -> tuple[str, dict[str, float]]:
    """Best-of-N on the prompts self-critique answers: the training rows (a JSONL file) and
    figures of what was kept."""
    from kubetune_trainer.data import load_data
    from kubetune_trainer.evaluation.measures import generate_completions
    from kubetune_trainer.evaluation.rewards import build_reward
    from kubetune_trainer.models import load_model_and_tokenizer
    from kubetune_trainer.recipes.self_critique import best_revision, prompts_of

    recipe = plan.recipe
    options = recipe.self_critique
    assert recipe.data is not None and options is not None
    train = [dict(r) for r in load_data(recipe.data, kind="sft").train]
    prompts = prompts_of(train, options.max_prompts)
    model, tokenizer = load_model_and_tokenizer(recipe.model)
    found = generate_completions(
        model,
        tokenizer,
        [p["prompt"] for p in prompts],
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        num_samples=BEST_OF,
        batch_size=32 * BEST_OF,
        seed=recipe.training.seed,
    )
    reward = build_reward(options.rewards, options.blend_alpha, tokenizer=tokenizer)
    rows, first_scores, kept_scores = [], [], []
    for prompt, samples in zip(prompts, found, strict=True):
        texts = [c.text for c in samples]
        scores = reward([prompt["prompt"]] * len(texts), texts, [prompt] * len(texts))
        first_scores.append(scores[0])
        best = best_revision(scores[0], scores[1:])
        if best is None:
            continue
        kept_scores.append(scores[1 + best])
        reply = {"role": "assistant", "content": texts[1 + best]}
        rows.append({"messages": [*prompt["prompt"], reply], "answer": prompt["answer"]})
    figures = {
        "prompts": len(prompts),
        "kept": len(rows),
        "first_mean": fmean(first_scores),
        "kept_mean": fmean(kept_scores) if kept_scores else float("nan"),
    }
    return write_jsonl(tmp / "best-of-n.jsonl", rows), figures


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory, critic: ScriptedCritic) -> dict[str, Any]:
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("critique")
    train, held = number_pools()
    data = write_jsonl(tmp / "data.jsonl", last_digit_rows(train[:480]))
    source = {"uri": data}
    spec = {"data": {"sources": [source]}, "checkpoint": NO_SAVES}
    warm = run_job(tmp, "warm", "sft", {**spec, "training": {**TRAINING, "maxSteps": WARMUP_STEPS}})
    policy = warm.storage.output_dir
    warm_seconds = time.monotonic() - started
    training = {**TRAINING, "maxSteps": STEPS}
    self_critique = {
        "critic": {"endpoint": critic.url, "model": "scripted-critic", "parallel": 4},
        "rewards": REWARD,
        "critiqueWeight": WEIGHT,
        "samples": SAMPLES,
        "temperature": 1.0,
        "maxNewTokens": ANSWER_TOKENS,
        "maxPrompts": PROMPTS,
    }
    log = tmp / "critiqued.log"
    critiqued, critiquing = start_job(
        tmp,
        "critiqued",
        "sft",
        {**spec, "training": training, "selfCritique": self_critique},
        model=policy,
        log=log,
    )
    plain, training_plain = start_job(
        tmp, "plain", "sft", {**spec, "training": training}, model=policy
    )
    bon_data, bon = best_of_n_rows(critiqued, tmp)
    mixed = [{**source, "weight": 1 - WEIGHT}, {"uri": bon_data, "weight": WEIGHT}]
    best_of_n, training_bon = start_job(
        tmp,
        "best-of-n",
        "sft",
        {**spec, "data": {"sources": mixed}, "training": training},
        model=policy,
    )
    for child in (critiquing, training_plain, training_bon):
        assert child.wait(timeout=600) == 0
    return {
        "critiqued": critiqued,
        "log": log.read_text(),
        "best_of_n": bon,
        "rewards": {
            name: held_out_rewards(plan.storage.output_dir, held)
            for name, plan in (
                ("start", warm),
                ("plain", plain),
                ("self-critique", critiqued),
                ("best-of-n", best_of_n),
            )
        },
        "seconds": {"warm": round(warm_seconds), "total": round(time.monotonic() - started)},
    }


def steps_of(plan: Plan) -> list[dict[str, Any]]:
    path = Path(plan.storage.output_dir) / PROVENANCE_FILE
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_kept_revisions_score_higher_than_their_answers(
    compared: dict[str, Any], critic: ScriptedCritic
) -> None:
    steps = steps_of(compared["critiqued"])
    assert len(steps) == PROMPTS * SAMPLES  # one round
    assert len(critic.requests) == len(steps)
    assert set(steps[0]) == {
        "prompt_index", "prompt", "answer", "sample", "round", "original", "original_score",
        "critiqued", "critique", "revision", "revision_score", "kept", "error",
    }  # fmt: skip
    kept = [s for s in steps if s["kept"]]
    revised = [s for s in steps if s["revision"] is not None]
    failed = [s for s in steps if s["error"] is not None]
    assert kept and failed and len(revised) + len(failed) == len(steps)
    assert all(s["error"].startswith("parse failure") for s in failed)
    assert all(s["revision_score"] > s["original_score"] for s in kept)
    assert fmean(s["revision_score"] for s in kept) > fmean(s["original_score"] for s in kept)
    # Not every revision is better: the filter is what makes the kept ones so.
    assert any(s["revision_score"] <= s["original_score"] for s in revised)
    summary = (
        f"event=self_critique critic=scripted-critic prompts={PROMPTS} answers={len(steps)} "
        f"revisions={len(revised)} kept={len(kept)} parse_failures={len(failed)} "
        "request_failures=0"
    )
    assert summary in compared["log"]
    assert "event=self_critique_mix critique_weight=0.5" in compared["log"]


def test_self_critique_raises_the_held_out_reward_and_is_compared_with_best_of_n(
    compared: dict[str, Any],
) -> None:
    from kubetune_trainer.evaluation.statistics import bootstrap_mean, paired_difference

    rewards = compared["rewards"]
    figures = {name: bootstrap_mean(values).format() for name, values in rewards.items()}
    versus_plain = paired_difference(rewards["self-critique"], rewards["plain"])
    bon_versus_plain = paired_difference(rewards["best-of-n"], rewards["plain"])
    critique_versus_bon = paired_difference(rewards["self-critique"], rewards["best-of-n"])
    report = (
        f"held-out reward: {figures}; self-critique - plain {versus_plain.delta.format()}; "
        f"best-of-N - plain {bon_versus_plain.delta.format()}; self-critique - best-of-N "
        f"{critique_versus_bon.delta.format()}; best-of-N kept {compared['best_of_n']}; "
        f"seconds {compared['seconds']}"
    )
    print(report)
    assert fmean(rewards["plain"]) <= fmean(rewards["start"]) + 0.1, report  # "I do not know."
    assert versus_plain.significant and versus_plain.delta.value > 0, report
    # Best-of-N can only keep what the policy samples, and the policy rarely answers in a
    # sentence; the critic writes one for every answer it revises. (At this budget best-of-N
    # kept a better sample for a few prompts and did not move the greedy answers.)
    assert critique_versus_bon.significant and critique_versus_bon.delta.value > 0, report


def test_a_resumed_attempt_reads_the_saved_steps_instead_of_asking_again(
    compared: dict[str, Any], critic: ScriptedCritic
) -> None:
    from types import SimpleNamespace

    from kubetune_trainer.data import load_data
    from kubetune_trainer.recipes.self_critique import with_revisions

    plan = compared["critiqued"]
    asked = len(critic.requests)
    ctx = SimpleNamespace(
        plan=plan, run_dir=run_dir(plan), staging_dir=run_dir(plan) / "staging", is_main=True
    )
    assert plan.recipe.data is not None
    data = load_data(plan.recipe.data, kind="sft")
    # No model: computing the steps again would fail; reading them needs none.
    path = with_revisions(ctx, None, None, data)  # type: ignore[arg-type]
    assert len(critic.requests) == asked
    assert path.read_text() == (Path(plan.storage.output_dir) / PROVENANCE_FILE).read_text()
    revisions = [r for r in data.train if r["messages"][-1]["content"].startswith("The last")]
    mixed = re.search(r"data_rows=(\d+) revision_rows=(\d+)", compared["log"])
    assert mixed is not None
    assert len(data.train) == int(mixed.group(1)) + int(mixed.group(2))
    # Revision rows, plus the data's own sentences (15% of the data rows drawn).
    assert len(revisions) >= int(mixed.group(2))


def test_a_policy_as_small_as_the_builtins_cannot_critique_its_own_answers(
    compared: dict[str, Any],
) -> None:
    """Why the plan refuses critic.policy for builtin models: asked the critique protocol, the
    starting policy (tiny-llama after a short SFT) replies with nothing that parses."""
    from kubetune_trainer.evaluation.rewards import build_reward
    from kubetune_trainer.models import load_model_and_tokenizer
    from kubetune_trainer.plan import CriticSpec
    from kubetune_trainer.recipes.self_critique import PolicyCritic, critique_and_revise

    plan = compared["critiqued"]
    model, tokenizer = load_model_and_tokenizer(plan.recipe.model)
    options = plan.recipe.self_critique
    assert options is not None
    prompts = [
        {"prompt": [{"role": "user", "content": last_digit_question(n)}], "answer": str(n)[2]}
        for n in number_pools()[1][:16]
    ]
    policy = PolicyCritic(model, tokenizer, CriticSpec(policy=True, max_tokens=32), seed=1)
    reward = build_reward(options.rewards, options.blend_alpha, tokenizer=tokenizer)
    steps = critique_and_revise(prompts, [["I do not know."]] * 16, policy, reward, rounds=1)
    assert len(steps) == 16 and not any(s.kept for s in steps)
    assert all(s.error is not None and s.error.startswith("parse failure") for s in steps)
