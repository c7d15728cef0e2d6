"""The data-side techniques on CPU, each against the same run without it:

- curriculum: on a task with a planted easy → hard structure, held-out exact match after a small
  step budget, curriculum against shuffled, compared on the same examples (paired bootstrap);
- score conditioning, trained on rated answers in the conversation format with role markers:
  asking for the top score against asking for the bottom one and against plain SFT on the
  same data; the score reaches the model through generate, serve and eval alike;
- exact resume mid-curriculum (with packing: stages are packed apart), the reference-loss cache;
- GRPO whose external reward term is the data's meta_eval_score.

The tasks (tests/trainer/technique_tasks.py) are rules a tiny model learns in tens of steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from statistics import fmean
from typing import Any

import pytest
from technique_tasks import (
    NO_SAVES,
    TRAINING,
    easy_hard_rows,
    last_digit_question,
    number_pools,
    scored_last_digit_rows,
    write_jsonl,
)
from trainer_support import CPU, run_job

from kubetune.api import FineTuneJob
from kubetune.planner import make_plan
from kubetune_trainer.exit_codes import EXIT_PREEMPTED
from kubetune_trainer.plan import Plan

pytestmark = pytest.mark.trainer

Prompt = list[dict[str, str]]


def correct(chat: Any, prompts: list[tuple[Prompt, str]], score: float | None = None) -> list[int]:
    """1 per prompt whose greedy answer is exactly the expected one."""
    found = chat.complete([p for p, _ in prompts], max_new_tokens=6, score=score)
    return [
        int(samples[0].text.strip() == answer)
        for samples, (_, answer) in zip(found, prompts, strict=True)
    ]


# --------------------------------------------------------------------------- curriculum

# The proof that a curriculum beats shuffled order at a small step budget did not hold on the
# planted last-digit / add-one task (60 steps: 0.042 vs 0.031 held-out exact match, paired
# difference 0.010 [-0.042, 0.062]). What is tested here: the curriculum's order is applied and
# survives a resume.


# --------------------------------------------------------------------------- score conditioning

SCORE_STEPS = 80


@pytest.fixture(scope="module")
def scored_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same SFT on rated answers (conversation format, role markers) with and without
    score conditioning; each question is answered right (score 5) and twice not at all (scores
    2 and 1)."""
    from kubetune_trainer.serving.inference import ChatModel

    tmp = tmp_path_factory.mktemp("scored")
    train, held = number_pools()
    data = write_jsonl(tmp / "rated.jsonl", scored_last_digit_rows(train))
    model = {"source": "builtin://tiny-llama", "conversationFormat": "roleMarkers"}
    source = {"uri": data, "format": "conversation"}
    training = {**TRAINING, "maxSteps": SCORE_STEPS}
    spec = {"model": model, "data": {"sources": [source]}, "checkpoint": NO_SAVES}
    conditioned = run_job(
        tmp, "conditioned", "sft", {**spec, "training": {**training, "scoreConditioning": {}}}
    )
    plain = run_job(tmp, "plain", "sft", {**spec, "training": training})
    prompts = [([{"role": "user", "content": last_digit_question(n)}], str(n)[2]) for n in held]
    chat = ChatModel.load(conditioned.storage.output_dir)
    return {
        "chat": chat,
        "prompts": prompts,
        "plain_output": plain.storage.output_dir,
        "default": correct(chat, prompts),
        "top": correct(chat, prompts, score=5.0),
        "bottom": correct(chat, prompts, score=1.0),
        "plain": correct(ChatModel.load(plain.storage.output_dir), prompts),
    }


def test_asking_for_the_top_score_answers_where_plain_sft_and_the_bottom_score_do_not(
    scored_runs: dict[str, Any],
) -> None:
    from kubetune_trainer.evaluation.statistics import paired_difference

    top, bottom, plain = scored_runs["top"], scored_runs["bottom"], scored_runs["plain"]
    assert scored_runs["default"] == top  # without a score the model is asked for the highest
    figures = f"top {fmean(top):.3f}, bottom {fmean(bottom):.3f}, plain SFT {fmean(plain):.3f}"
    for baseline in (bottom, plain):
        gain = paired_difference(top, baseline)
        assert gain.significant and gain.delta.value > 0, f"{figures}: {gain.delta}"


def test_serve_and_eval_pass_the_score_and_refuse_it_without_conditioning(
    scored_runs: dict[str, Any], tmp_path: Path
) -> None:
    import urllib.error
    import urllib.request

    from kubetune_trainer.evaluation.suite import EvalError, evaluate_metrics
    from kubetune_trainer.plan import EvalSpec, ModelSpec
    from kubetune_trainer.serving.inference import ChatModel
    from kubetune_trainer.serving.openai_server import ChatServer, ServerSettings

    chat, prompts = scored_runs["chat"], scored_runs["prompts"][:24]
    rows = [{"prompt": p, "answer": a} for p, a in prompts]
    uri = write_jsonl(tmp_path / "heldout.jsonl", rows)
    metric = {
        "type": "accuracy",
        "extractor": "exact",
        "maxNewTokens": 6,
        "dataset": {"uri": uri, "format": "prompt-only"},
    }
    spec = EvalSpec.model_validate(
        {"metrics": [{**metric, "name": "top"}, {**metric, "name": "bottom", "score": 1.0}]}
    )
    results = evaluate_metrics(spec, ModelSpec(source=chat.name))["metrics"]
    assert results["top"] == pytest.approx(fmean(scored_runs["default"][:24]))
    assert results["bottom"] == pytest.approx(fmean(scored_runs["bottom"][:24]))

    with ChatServer(chat, ServerSettings(model_name=chat.name)) as server:
        for score, expected in ((None, scored_runs["default"]), (1.0, scored_runs["bottom"])):
            for index in range(4):
                body = {"messages": prompts[index][0], "temperature": 0, "max_tokens": 6}
                if score is not None:
                    body["score"] = score
                request = urllib.request.Request(
                    f"{server.url}/chat/completions", data=json.dumps(body).encode()
                )
                reply = json.loads(urllib.request.urlopen(request).read())
                answer = reply["choices"][0]["message"]["content"].strip()
                assert int(answer == prompts[index][1]) == expected[index]

    plain = ChatModel.load(scored_runs["plain_output"])
    with ChatServer(plain, ServerSettings(model_name=plain.name)) as plain_server:
        body = {"messages": prompts[0][0], "score": 5}
        request = urllib.request.Request(
            f"{plain_server.url}/chat/completions", data=json.dumps(body).encode()
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        error = json.loads(refused.value.read())["error"]
        assert refused.value.code == 400 and error["param"] == "score"
    with pytest.raises(EvalError, match=r"eval.metrics\[1\].score: the model was not trained"):
        evaluate_metrics(spec, ModelSpec(source=plain.name))


# --------------------------------------------------------------------------- resume, packing


RESUME_STEPS = 24


def resume_spec(data: str) -> dict[str, Any]:
    curriculum = {"difficulty": "length", "pacing": "stages", "stages": 3, "fullAt": 0.75}
    return {
        "data": {"sources": [{"uri": data}]},
        "training": {
            "maxSteps": RESUME_STEPS,
            "learningRate": 1e-3,
            "perDeviceBatchSize": 4,
            "maxLength": 64,
            "packing": True,
            "logEverySteps": 1,
            "seed": 7,
            "curriculum": curriculum,
        },
        "checkpoint": {"everySteps": 4, "keepLast": 2},
    }


def start(tmp: Path, name: str, spec: dict[str, Any], attempt: int) -> tuple[Plan, Any]:
    job = FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": "t"},
            "spec": {"method": "sft", "model": {"source": "builtin://tiny-llama"}, **spec},
        }
    )
    plan = make_plan(job, attempt=attempt, default_storage=str(tmp / "runs"), scaling=CPU)
    path = tmp / f"{name}-{attempt}.json"
    path.write_text(plan.to_json())
    run_dir = Path(plan.storage.root) / plan.storage.run_name
    env = os.environ | {
        "KUBETUNE_METRICS_PORT": "0",
        "KUBETUNE_PROGRESS_INTERVAL": "0",
        "KUBETUNE_PROGRESS_FILE": str(run_dir / "progress.json"),
        "KUBETUNE_DATA_TRACE": str(tmp / f"trace-{name}-{attempt}"),
    }
    command = [sys.executable, "-m", "kubetune_trainer.cli", "--plan", str(path)]
    return plan, subprocess.Popen(command, env=env)


def losses_and_rows(plan: Plan, traces: list[Path]) -> tuple[dict[int, float], dict[int, list]]:
    run_dir = Path(plan.storage.root) / plan.storage.run_name
    losses = {}
    for line in (run_dir / "history.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "loss" in entry:
            losses[entry["step"]] = entry["loss"]
    rows = {}
    for trace in traces:
        for line in (trace / "rank-0.jsonl").read_text().splitlines():
            entry = json.loads(line)
            rows[entry["step"]] = entry["rows"]
    return losses, rows


def test_sigterm_mid_curriculum_then_resume_trains_the_same_rows_and_losses(
    tmp_path: Path,
) -> None:
    train, _ = number_pools()
    data = write_jsonl(tmp_path / "data.jsonl", easy_hard_rows(train[:400], easy_share=0.5))
    spec = resume_spec(data)
    reference, whole = start(tmp_path, "whole", spec, attempt=1)
    assert whole.wait(timeout=600) == 0
    expected_losses, expected_rows = losses_and_rows(reference, [tmp_path / "trace-whole-1"])

    plan, first = start(tmp_path, "cut", spec, attempt=1)
    progress = Path(plan.storage.root) / plan.storage.run_name / "progress.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert first.poll() is None, "trainer exited before it was stopped"
        try:
            if json.loads(progress.read_text()).get("step", 0) >= 10:
                break
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == EXIT_PREEMPTED
    stopped_at = json.loads(progress.read_text())["step"]
    assert 10 <= stopped_at < RESUME_STEPS
    _, second = start(tmp_path, "cut", spec, attempt=2)
    assert second.wait(timeout=600) == 0
    losses, rows = losses_and_rows(plan, [tmp_path / "trace-cut-1", tmp_path / "trace-cut-2"])
    assert sorted(rows) == sorted(expected_rows) == list(range(1, RESUME_STEPS + 1))
    for step in expected_rows:
        assert rows[step] == expected_rows[step], f"step {step} trained other rows"
        assert losses[step] == pytest.approx(expected_losses[step], abs=1e-4), f"step {step}"


def test_packing_keeps_stages_apart() -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from kubetune_trainer.models import load_model, load_tokenizer
    from kubetune_trainer.plan import CurriculumSpec
    from kubetune_trainer.training.curriculum import DIFFICULTY, STAGE, CurriculumMixin

    train, _ = number_pools()
    rows = easy_hard_rows(train[:120], easy_share=0.5)
    dataset = Dataset.from_list(
        [
            {"messages": r["messages"], STAGE: r["difficulty"], DIFFICULTY: float(r["difficulty"])}
            for r in rows
        ]
    )
    tokenizer = load_tokenizer("builtin://tiny-llama")
    curriculum = CurriculumSpec(difficulty="length", pacing="stages", stages=2)
    trainer_type = type("T", (CurriculumMixin, SFTTrainer), {"curriculum": curriculum})
    args = SFTConfig(
        output_dir="unused",
        use_cpu=True,
        bf16=False,
        report_to=[],
        max_steps=1,
        max_length=64,
        packing=True,
        packing_strategy="bfd",
        assistant_only_loss=True,
        dataset_num_proc=None,
    )
    trainer = trainer_type(
        model=load_model("builtin://tiny-llama", tokenizer=tokenizer),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    packed = trainer.train_dataset
    assert len(packed) < len(rows)  # rows really were packed together
    for row in packed:
        text = tokenizer.decode(row["input_ids"])
        kinds = {"easy" if "Last digit" in text else None, "hard" if " + 1?" in text else None}
        expected = "easy" if row[STAGE] == 0 else "hard"
        assert kinds - {None} == {expected}, text
    assert packed[DIFFICULTY] == [float(s) for s in packed[STAGE]]


def test_reference_losses_match_the_models_own_loss_and_are_cached(tmp_path: Path) -> None:
    import torch

    from kubetune_trainer.evaluation.difficulty import reference_losses
    from kubetune_trainer.evaluation.measures import loss_tokens
    from kubetune_trainer.models import load_model_and_tokenizer
    from kubetune_trainer.plan import ModelSpec

    train, _ = number_pools()
    rows = [{"messages": r["messages"]} for r in easy_hard_rows(train[:10], easy_share=0.5)]
    spec = ModelSpec(source="builtin://tiny-llama")
    losses = reference_losses(spec, rows, max_length=64, cache_dir=tmp_path, is_main=True)
    model, tokenizer = load_model_and_tokenizer(spec)
    for row, loss in zip(rows, losses, strict=True):
        ids, labels = loss_tokens(tokenizer, row, 64)
        with torch.no_grad():
            own = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        assert loss == pytest.approx(float(own), rel=1e-5)
    (cached,) = tmp_path.glob("reference-loss-*.json")
    record = json.loads(cached.read_text())
    record["losses"] = [float(i) for i in range(len(rows))]
    cached.write_text(json.dumps(record))
    again = reference_losses(spec, rows, max_length=64, cache_dir=tmp_path, is_main=True)
    assert again == record["losses"]  # read from the cache, not computed again


# --------------------------------------------------------------------------- external reward


def test_grpo_external_reward_is_the_rows_meta_eval_score(tmp_path: Path) -> None:
    """Four rated conversations, each step completes all four prompts four times: the logged
    external term is the mean of their meta_eval_score, and the reward is the blend."""
    scores = [4.5, 1.0, 3.0, 2.5]
    rows = [
        {
            "conversation": [
                {"role": "human", "content": last_digit_question(n)},
                {"role": "assistant", "content": str(n)[2]},
            ],
            "meta_eval_score": score,
            "score_reason": "rated by hand",
        }
        for n, score in zip((347, 512, 906, 281), scores, strict=True)
    ]
    data = write_jsonl(tmp_path / "rated.jsonl", rows)
    plan = run_job(
        tmp_path,
        "grpo-rated",
        "grpo",
        {
            "data": {"sources": [{"uri": data, "format": "conversation"}]},
            "training": {
                "maxSteps": 3,
                "learningRate": 1e-3,
                "perDeviceBatchSize": 16,
                "logEverySteps": 1,
            },
            "grpo": {
                "numGenerations": 4,
                "maxCompletionLength": 8,
                "blendAlpha": 0.4,
                "rewards": [{"type": "externalColumn"}, {"type": "regex", "pattern": r"\d"}],
            },
        },
    )
    history = Path(plan.storage.root) / plan.storage.run_name / "history.jsonl"
    logged = [e for e in map(json.loads, history.read_text().splitlines()) if "reward" in e]
    assert len(logged) == 3
    for entry in logged:
        external = entry["reward_terms/externalColumn"]
        assert external == pytest.approx(fmean(scores))
        blended = 0.6 * external + 0.4 * entry["reward_terms/regex"]
        assert entry["reward"] == pytest.approx(blended, abs=1e-5)
