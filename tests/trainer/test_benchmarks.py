# ruff: noqa: E501  (benchmark rows read best one record per line)
"""lm-evaluation-harness inside kubetune, offline: the builtin task folder's three output
types, user task folders with relative data files, and MMLU, ARC and HellaSwag with their stock
prompts and metrics on tiny files staged in each benchmark's own schema.

The multiple-choice accuracy is checked against an independent computation that does not use
lm-eval: each choice's log-likelihood summed from a plain forward pass of the model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune_trainer.evaluation.builtin_tasks import BUILTIN_TASK_DIRS
from kubetune_trainer.evaluation.suite import EvalError, NamedModel, Settings, evaluate_models
from kubetune_trainer.models import load_model_and_tokenizer
from kubetune_trainer.plan import EvalSpec, ModelSpec

pytestmark = pytest.mark.trainer

BASE = "builtin://tiny-llama"


def evaluate(metric: dict[str, Any], source: str = BASE) -> Any:
    spec = EvalSpec.model_validate({"metrics": [{"name": "m", "type": "lmEval", **metric}]})
    evaluation = evaluate_models(
        spec,
        [NamedModel("model", ModelSpec(source=source))],
        None,
        settings=Settings(max_length=256, batch_size=16, seed=1, resamples=500),
    )
    return evaluation.results["model"]["m"]


def continuation_log_likelihood(model: Any, tokenizer: Any, context: str, choice: str) -> float:
    """log P(choice | context), summed over the choice's tokens, from one forward pass."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + choice, add_special_tokens=False)["input_ids"]
    assert whole[: len(context_ids)] == context_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([whole])).logits[0].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    return sum(
        float(log_probs[position - 1, whole[position]])
        for position in range(len(context_ids), len(whole))
    )


def test_multiple_choice_accuracy_equals_an_independent_computation() -> None:
    result = evaluate({"task": "arithmetic_mc", "chatTemplate": True, "limit": 40})
    model, tokenizer = load_model_and_tokenizer(BASE)
    model.eval()
    docs = [
        json.loads(line) for line in (BUILTIN_TASK_DIRS["arithmetic"] / "data" / "mc.jsonl").open()
    ][:40]
    correct = []
    for doc, sample in zip(docs, result.samples, strict=True):
        context = tokenizer.apply_chat_template(
            [{"role": "user", "content": doc["question"]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        mine = [continuation_log_likelihood(model, tokenizer, context, c) for c in doc["choices"]]
        theirs = [response[0] for response in sample["response"]]
        # lm-eval moves the context's trailing whitespace (the chat template's "\n\n" after
        # the assistant header) into every continuation: the same term in each choice's
        # score, so the choices' differences, which decide the answer, must agree.
        assert [t - theirs[0] for t in theirs] == pytest.approx(
            [m - mine[0] for m in mine], abs=1e-3
        )
        correct.append(float(max(range(4), key=lambda i: mine[i]) == doc["label"]))
    assert result.value == pytest.approx(sum(correct) / len(correct))
    assert result.rows == correct
    # lm-eval's standard error of a mean, with the sample count.
    p = result.value
    assert result.estimate.stderr == pytest.approx(math.sqrt(p * (1 - p) / 39), rel=1e-6)
    assert result.estimate.n == 40
    assert result.estimate.low < p < result.estimate.high


def test_generation_and_rolling_perplexity_tasks() -> None:
    gen = evaluate({"task": "arithmetic_gen", "chatTemplate": True, "limit": 12})
    assert gen.details["metric"] == "exact_match" and gen.details["filter"] == "first-number"
    assert len(gen.rows) == 12 and all(r in (0.0, 1.0) for r in gen.rows)
    assert all(isinstance(s["resps"][0][0], str) for s in gen.samples)

    ppl = evaluate({"task": "arithmetic_ppl", "limit": 20})
    assert ppl.details["metric"] == "word_perplexity" and ppl.lower_is_better
    # No stderr from lm-eval for a perplexity: kubetune's bootstrap over documents, whose
    # statistic (exp of the summed loss over the summed words) reproduces lm-eval's value.
    assert ppl.details["lm_eval_stderr"] is None
    assert ppl.value == pytest.approx(ppl.details["lm_eval_value"], rel=1e-9)
    assert ppl.estimate.low < ppl.value < ppl.estimate.high and ppl.estimate.n == 20


def test_a_user_task_folder_with_relative_data_files(tmp_path: Path) -> None:
    """A task folder in lm-eval's format, its data beside the YAML: exact match of a model
    that answers 4 to everything is the share of questions whose answer is 4."""
    from tests.trainer.test_eval_and_serve import build_parrot

    parrot = build_parrot("4", tmp_path / "parrot")
    folder = tmp_path / "tasks"
    (folder / "data").mkdir(parents=True)
    rows = [{"q": f"Question {i}?", "a": a} for i, a in enumerate(["4", "4", "9", "4", "12", "7"])]
    (folder / "data" / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "fours.yaml").write_text(
        "task: fours\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: data/qa.jsonl\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{q}}'\n"
        "doc_to_target: '{{a}}'\ngeneration_kwargs:\n  until: ['\\n']\n  max_gen_toks: 4\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    result = evaluate({"task": "fours", "taskDirs": [str(folder)], "chatTemplate": True}, parrot)
    assert result.value == pytest.approx(3 / 6)
    assert result.rows == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]


def _staged(root: Path, relative: str, rows: list[dict[str, Any]]) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


MMLU = {
    "anatomy": [
        {"question": "Which organ pumps blood?", "subject": "anatomy",
         "choices": ["Lung", "Heart", "Liver", "Skin"], "answer": 1},
        {"question": "How many chambers has the human heart?", "subject": "anatomy",
         "choices": ["2", "3", "4", "5"], "answer": 2},
    ],
    "astronomy": [
        {"question": "What does the Earth orbit?", "subject": "astronomy",
         "choices": ["The Moon", "Mars", "The Sun", "Venus"], "answer": 2},
    ],
}  # fmt: skip
ARC = [
    {"id": "Mercury_1", "question": "Which gas do plants take in?",
     "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"], "label": ["A", "B", "C", "D"]},
     "answerKey": "B"},
    {"id": "Mercury_2", "question": "What melts ice?",
     "choices": {"text": ["heat", "cold", "dark"], "label": ["A", "B", "C"]}, "answerKey": "A"},
]  # fmt: skip
HELLASWAG = [
    {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
     "ctx_b": "then", "ctx": "Then, the man writes over the snow. then",
     "endings": [", the man adds wax.", ", the man puts on a hat.", ", the man walks.", ", the man is done."],
     "source_id": "activitynet~v_-1IBHYS3L-Y", "split": "val", "split_type": "indomain", "label": "3"},
]  # fmt: skip


def test_staged_mmlu_arc_and_hellaswag_keep_their_stock_prompts(tmp_path: Path) -> None:
    data = tmp_path / "staged"
    for subject, rows in MMLU.items():
        _staged(data, f"cais/mmlu/{subject}/test.jsonl", rows)
    _staged(data, "allenai/ai2_arc/ARC-Easy/test.jsonl", ARC)
    _staged(data, "Rowan/hellaswag/default/validation.jsonl", HELLASWAG)

    # A group of two MMLU subjects (the stock tasks, through a task folder's group YAML).
    group = tmp_path / "groups"
    group.mkdir()
    (group / "two.yaml").write_text(
        "group: mmlu_two\ntask: [mmlu_anatomy, mmlu_astronomy]\n"
        "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n"
    )
    mmlu = evaluate({"task": "mmlu_two", "taskDirs": [str(group)], "dataDir": str(data)})
    assert mmlu.estimate.n == 3 and len(mmlu.rows) == 3
    assert set(mmlu.categories) == {"anatomy", "astronomy"}
    assert mmlu.value == pytest.approx(sum(mmlu.rows) / 3)
    context, _ = mmlu.samples[0]["arguments"][0]
    assert context.startswith("The following are multiple choice questions (with answers) about")
    assert context.endswith(
        "Which organ pumps blood?\nA. Lung\nB. Heart\nC. Liver\nD. Skin\nAnswer:"
    )
    assert [a[1] for a in mmlu.samples[0]["arguments"]] == [" A", " B", " C", " D"]

    arc = evaluate({"task": "arc_easy", "dataDir": str(data)})
    assert arc.details["metric"] == "acc" and arc.estimate.n == 2
    assert list(arc.samples[0]["arguments"][1]) == [
        "Question: Which gas do plants take in?\nAnswer:",
        " carbon dioxide",
    ]

    hellaswag = evaluate({"task": "hellaswag", "dataDir": str(data), "lmEvalMetric": "acc_norm"})
    assert hellaswag.details["metric"] == "acc_norm" and hellaswag.estimate.n == 1
    context, ending = hellaswag.samples[0]["arguments"][3]
    assert context == "Removing ice from car: Then, the man writes over the snow. Then"
    assert ending == " , the man is done."

    with pytest.raises(
        EvalError, match=r"dataDir: task mmlu_anatomy needs .*cais/mmlu/anatomy/test.jsonl"
    ):
        evaluate({"task": "mmlu_anatomy", "dataDir": str(tmp_path / "empty")})
    with pytest.raises(EvalError, match=r"task arc_easy reads the Hub dataset allenai/ai2_arc"):
        evaluate({"task": "arc_easy"})
