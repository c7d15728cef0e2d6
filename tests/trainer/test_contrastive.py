"""The contrastive auxiliary loss (spec.training.contrastive) on CPU, against the same DPO run
without it (same tiny model, data, seed and steps):

- the term, logged apart from the loss as contrastive_loss, falls over training;
- on held-out pairs the representation margin (cosine of the chosen response's last-token final
  hidden state to the prompt's, minus the rejected response's), measured here from the trained
  models' own forward, grows with the term and more than without it;
- the main metric, held-out DPO preference accuracy, is no worse than without it.

SFT (in-batch negatives: the other rows' responses) is run for a few steps, to show its term is
logged at every step beside the loss.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import fmean
from types import SimpleNamespace
from typing import Any

import pytest
from technique_tasks import (
    last_digit_preference_rows,
    last_digit_question,
    number_pools,
    write_jsonl,
)
from trainer_support import run_dir, run_job

pytestmark = pytest.mark.trainer

STEPS = 40
HELD_OUT = 64
ACCURACY_TOLERANCE = 0.05
"""How far below the plain run's held-out preference accuracy the contrastive run may end (a
little over 3 of the 64 held-out pairs)."""
CONTRASTIVE = {"weight": 1.0, "temperature": 0.07, "negatives": "inBatch", "pooling": "last"}
TRAINING: dict[str, Any] = {
    "maxSteps": STEPS,
    "learningRate": 3e-3,
    "perDeviceBatchSize": 16,
    "maxLength": 32,
    "logEverySteps": 1,
    "seed": 3,
    "trlArgs": {"eval_on_start": True},
}


def history_of(plan: Any) -> list[dict[str, Any]]:
    lines = (run_dir(plan) / "history.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def representation_margins(model_source: str, rows: list[dict[str, Any]]) -> list[float]:
    """Per held-out pair: cos(prompt, chosen) - cos(prompt, rejected), each side the backbone's
    final hidden state at its last token (the response's tokens follow the prompt rendered with
    its generation prompt)."""
    import torch
    import torch.nn.functional as F

    from kubetune_trainer.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_source)
    model.eval()
    prompt_ends, sequences = [], []
    for side in ("chosen", "rejected"):
        for row in rows:
            prompt = tokenizer.apply_chat_template(
                row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
            )
            full = tokenizer.apply_chat_template(
                row["prompt"] + row[side], tokenize=True, return_dict=False
            )
            assert full[: len(prompt)] == prompt
            prompt_ends.append(len(prompt) - 1)
            sequences.append(full)
    width = max(map(len, sequences))
    # Right padding leaves a causal model's states before the padding unchanged.
    ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    index = torch.arange(len(sequences))
    anchors = hidden[index, torch.tensor(prompt_ends)]
    answers = hidden[index, torch.tensor([len(s) - 1 for s in sequences])]
    closeness = F.cosine_similarity(anchors, answers, dim=-1)
    chosen, rejected = closeness[: len(rows)], closeness[len(rows) :]
    return (chosen - rejected).tolist()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("contrastive")
    train_numbers, held_numbers = number_pools(held_out=HELD_OUT)
    rows = last_digit_preference_rows(held_numbers)
    data = {
        "sources": [
            {
                "uri": write_jsonl(tmp / "train.jsonl", last_digit_preference_rows(train_numbers)),
                "format": "preference",
            }
        ],
        "evalSources": [{"uri": write_jsonl(tmp / "held-out.jsonl", rows), "format": "preference"}],
    }
    spec = {"data": data, "dpo": {"beta": 0.1}, "checkpoint": {"everySteps": 1000}}
    plain = run_job(tmp, "plain", "dpo", {**spec, "training": TRAINING})
    training = {**TRAINING, "contrastive": CONTRASTIVE}
    contrastive = run_job(tmp, "contrastive", "dpo", {**spec, "training": training})
    return {
        "plain": history_of(plain),
        "contrastive": history_of(contrastive),
        "margins": {
            "start": representation_margins("builtin://tiny-llama", rows),
            "plain": representation_margins(plain.storage.output_dir, rows),
            "contrastive": representation_margins(contrastive.storage.output_dir, rows),
        },
    }


def test_the_contrastive_term_is_logged_apart_and_falls(runs: dict[str, Any]) -> None:
    terms = [e["contrastive_loss"] for e in runs["contrastive"] if "contrastive_loss" in e]
    assert len(terms) == STEPS
    assert not any("contrastive_loss" in e for e in runs["plain"])
    quarter = STEPS // 4
    early, late = fmean(terms[:quarter]), fmean(terms[-quarter:])
    print(f"contrastive_loss: first {quarter} steps {early:.4f}, last {quarter} {late:.4f}")
    assert late < 0.5 * early, (early, late)
    evals = [e for e in runs["contrastive"] if "eval_contrastive_loss" in e]
    assert evals[-1]["eval_contrastive_loss"] < evals[0]["eval_contrastive_loss"]


def test_the_held_out_representation_margin_grows_more_with_the_term(
    runs: dict[str, Any],
) -> None:
    from kubetune_trainer.evaluation.statistics import paired_difference

    margins = runs["margins"]
    start, plain, contrastive = (fmean(margins[k]) for k in ("start", "plain", "contrastive"))
    print(f"held-out margin: start {start:.4f}, plain {plain:.4f}, contrastive {contrastive:.4f}")
    gain = paired_difference(margins["contrastive"], margins["plain"])
    assert gain.significant and gain.delta.value > 0, gain.delta
    assert contrastive > start + 0.05, (start, contrastive)


def test_held_out_preference_accuracy_is_no_worse_than_without_the_term(
    runs: dict[str, Any],
) -> None:
    def final_accuracy(history: list[dict[str, Any]]) -> float:
        evals = [e for e in history if "eval_rewards/accuracies" in e]
        assert evals[-1]["step"] == STEPS
        return evals[-1]["eval_rewards/accuracies"]

    plain, contrastive = final_accuracy(runs["plain"]), final_accuracy(runs["contrastive"])
    print(f"held-out preference accuracy: plain {plain:.4f}, contrastive {contrastive:.4f}")
    assert contrastive >= plain - ACCURACY_TOLERANCE, (plain, contrastive)


def test_sft_logs_its_in_batch_term_at_every_step(tmp_path: Path) -> None:
    """In process (a child process would cost more than the steps): the SFT recipe's trainer
    class on the tiny model the DPO runs built, four steps of last-digit conversations."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from kubetune_trainer.models import load_model_and_tokenizer
    from kubetune_trainer.plan import TrainingSpec
    from kubetune_trainer.recipes.sft_techniques import trainer_class

    train_numbers, _ = number_pools(held_out=HELD_OUT)
    rows = [
        {
            "messages": [
                {"role": "user", "content": last_digit_question(n)},
                {"role": "assistant", "content": str(n)[2]},
            ]
        }
        for n in train_numbers[:32]
    ]
    training = TrainingSpec.model_validate({"contrastive": {"weight": 0.1}})
    ctx = SimpleNamespace(plan=SimpleNamespace(recipe=SimpleNamespace(training=training)))
    model, tokenizer = load_model_and_tokenizer("builtin://tiny-llama")
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=1,
        max_length=32,
        assistant_only_loss=True,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        dataset_num_proc=None,
    )
    trainer = trainer_class(SFTTrainer, ctx)(  # type: ignore[arg-type]
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.train()
    steps = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    for entry in steps:
        # At initialisation the 8 responses are about equally close to each prompt: ~ln 8.
        assert 0 < entry["contrastive_loss"] < math.log(8) + 2, entry
        assert 0 <= entry["contrastive_accuracy"] <= 1 and "contrastive_margin" not in entry
