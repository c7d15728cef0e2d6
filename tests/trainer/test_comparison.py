"""Evaluation during training and models side by side, on one small pipeline trained once for
the module: SFT with held-out loss and perplexity at every evalEverySteps, early stopping and
the best evaluation's weights as the output; DPO on the SFT model's own mistakes with held-out
preference metrics; then an eval job over base, SFT and DPO that writes JSON, Markdown and an
HTML report, which a real headless Chromium opens."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.evaluation.report import REPORT_HTML, REPORT_MARKDOWN
from kubetune_trainer.evaluation.suite import RESULTS_FILE
from kubetune_trainer.plan import Plan
from tests.trainer.trainer_support import run_dir, run_job

pytestmark = pytest.mark.trainer

MAX_STEPS = 150
EVAL_EVERY = 5
SFT_SPEC = {
    "data": {
        "sources": [{"uri": "builtin://arithmetic-sft", "maxSamples": 1600}],
        "evalSources": [{"uri": "builtin://arithmetic-sft", "split": "test", "maxSamples": 48}],
    },
    "training": {
        "maxSteps": MAX_STEPS,
        "learningRate": 3e-3,
        "warmupRatio": 0.05,
        "perDeviceBatchSize": 32,
        "maxLength": 96,
        "logEverySteps": EVAL_EVERY,
        "evalEverySteps": EVAL_EVERY,
        "bestModel": {"metric": "perplexity"},
        "earlyStopping": {"metric": "eval_loss", "patience": 2, "minDelta": 0.02},
    },
}
PROMPTS = {"uri": "builtin://arithmetic-prompts", "format": "prompt-only"}


@dataclass
class Pipeline:
    sft: Plan
    dpo: Plan
    evaluation: Plan


def history(plan: Plan) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir(plan) / "history.jsonl").open()]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    tmp = tmp_path_factory.mktemp("compare")
    sft = run_job(tmp, "sft", "sft", SFT_SPEC)
    sft_output = sft.storage.output_dir
    dpo = run_job(
        tmp,
        "dpo",
        "dpo",
        {
            "data": {
                "sources": [{**PROMPTS, "maxSamples": 320}],
                "evalSources": [{**PROMPTS, "split": "test", "maxSamples": 64}],
            },
            "training": {
                "maxSteps": 10,
                "learningRate": 2e-4,
                "perDeviceBatchSize": 16,
                "maxLength": 96,
                "logEverySteps": EVAL_EVERY,
                "evalEverySteps": EVAL_EVERY,
            },
            "dpo": {"beta": 0.1, "onPolicy": {"samples": 4, "maxNewTokens": 6}},
        },
        model=sft_output,
    )
    evaluation = run_job(
        tmp,
        "compare",
        "eval",
        {
            "eval": {
                "modelName": "dpo",
                "models": [
                    {"name": "base", "source": "builtin://tiny-llama"},
                    {"name": "sft", "source": sft_output},
                ],
                "baseline": "base",
                "metrics": [
                    {
                        "name": "exact_match",
                        "type": "accuracy",
                        "extractor": "lastNumber",
                        "maxNewTokens": 6,
                        "dataset": {**PROMPTS, "split": "test", "maxSamples": 100},
                    },
                    {
                        "name": "perplexity",
                        "type": "perplexity",
                        "dataset": {
                            "uri": "builtin://arithmetic-sft",
                            "split": "test",
                            "maxSamples": 32,
                        },
                    },
                    {
                        "name": "multiple_choice",
                        "type": "lmEval",
                        "task": "arithmetic_mc",
                        "chatTemplate": True,
                        "limit": 60,
                    },
                ],
            },
            "training": {"perDeviceBatchSize": 32, "maxLength": 96},
        },
        model=dpo.storage.output_dir,
    )
    return Pipeline(sft, dpo, evaluation)


def test_sft_reports_held_out_loss_and_perplexity_at_every_evaluation(
    pipeline: Pipeline,
) -> None:
    entries = history(pipeline.sft)
    evaluations = [e for e in entries if "eval_loss" in e]
    last_step = max(e["step"] for e in entries)
    assert [e["step"] for e in evaluations] == list(range(EVAL_EVERY, last_step + 1, EVAL_EVERY))
    for entry in evaluations:
        assert entry["eval_perplexity"] == pytest.approx(math.exp(entry["eval_loss"]))
    assert evaluations[-1]["eval_loss"] < evaluations[0]["eval_loss"] - 0.5
    progress = json.loads((run_dir(pipeline.sft) / "progress.json").read_text())
    assert float(progress["evalMetrics"]["eval_loss"]) == pytest.approx(
        evaluations[-1]["eval_loss"], rel=1e-5
    )


def test_early_stopping_stops_and_the_best_evaluation_is_the_output(pipeline: Pipeline) -> None:
    """Training stopped before maxSteps, after `patience` evaluations without an improvement
    by minDelta; the output is the best evaluation's weights: scoring the output on the same
    held-out rows gives that evaluation's loss, not the last one's."""
    from kubetune_trainer.evaluation.measures import token_perplexity
    from kubetune_trainer.models import load_model_and_tokenizer
    from tests.trainer.test_eval_and_serve import rows_of

    evaluations = [e for e in history(pipeline.sft) if "eval_loss" in e]
    last = evaluations[-1]["step"]
    assert last < MAX_STEPS
    losses = [e["eval_loss"] for e in evaluations]
    best_so_far = [min(losses[: i + 1]) for i in range(len(losses))]
    # The stop: the last two evaluations did not beat the best before them by 0.02.
    assert all(loss > best_so_far[-3] - 0.02 for loss in losses[-2:])
    best = min(evaluations, key=lambda e: e["eval_perplexity"])
    result = json.loads((run_dir(pipeline.sft) / "result-attempt-1.json").read_text())
    assert result["metrics"]["best_step"] == best["step"]

    model, tokenizer = load_model_and_tokenizer(pipeline.sft.storage.output_dir)
    held_out = rows_of(SFT_SPEC["data"]["evalSources"][0], "sft")
    scored = token_perplexity(model, tokenizer, held_out, max_length=96)
    assert scored.mean_loss == pytest.approx(best["eval_loss"], abs=2e-3)
    if best["step"] != last:
        assert abs(scored.mean_loss - evaluations[-1]["eval_loss"]) > 1e-3


def test_dpo_on_its_own_mistakes_reports_held_out_preference_metrics(pipeline: Pipeline) -> None:
    entries = history(pipeline.dpo)
    evaluations = [e for e in entries if "eval_rewards/accuracies" in e]
    assert [e["step"] for e in evaluations] == [EVAL_EVERY, 2 * EVAL_EVERY]
    for entry in evaluations:
        assert {"eval_loss", "eval_rewards/margins", "eval_rewards/chosen"} <= set(entry)
    assert evaluations[-1]["eval_rewards/margins"] > 0
    train = [e for e in entries if "loss" in e]
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=0.05)


def test_eval_job_compares_base_sft_and_dpo_with_intervals(pipeline: Pipeline) -> None:
    output = Path(pipeline.evaluation.storage.output_dir)
    document = json.loads((output / RESULTS_FILE).read_text())
    assert [m["name"] for m in document["models"]] == ["base", "sft", "dpo"]
    assert document["baseline"] == "base" and document["subject"] == "dpo"
    for model in document["models"]:
        for name, metric in model["metrics"].items():
            estimate = metric["estimate"]
            assert estimate["low"] <= metric["value"] <= estimate["high"], (model["name"], name)
        assert model["metrics"]["exact_match"]["estimate"]["n"] == 100
        assert model["metrics"]["multiple_choice"]["estimate"]["n"] == 60
        samples = output / model["samples"]["exact_match"]
        assert len(samples.read_text().splitlines()) == 100
    # Early stopping ends this SFT long before it answers many questions exactly; its held-out
    # perplexity is far below the base model's, significantly, on the same rows.
    for trained in ("sft", "dpo"):
        found = document["comparisons"][trained]["perplexity"]
        assert found["better"] is True and found["delta"]["high"] < 0
        assert found["pValue"] < 0.05
    assert set(document["comparisons"]) == {"sft", "dpo"}
    table = (output / REPORT_MARKDOWN).read_text()
    assert table.startswith("Model: dpo vs baseline base\n")
    assert "| metric " in table and " | Δ sft " in table and " | Δ dpo " in table
    history_path = document["models"][1]["history"]
    assert history_path and Path(history_path) == run_dir(pipeline.sft) / "history.jsonl"


def test_html_report_opens_in_a_browser_with_its_plots(pipeline: Pipeline) -> None:
    from selenium.webdriver.common.by import By

    from tests.support.browser import browser_paths, headless_chromium

    report = Path(pipeline.evaluation.storage.output_dir) / REPORT_HTML
    text = report.read_text()
    assert "http://" not in text.replace("http://www.w3.org", "")  # self-contained
    with headless_chromium(browser_paths()) as driver:
        driver.get(report.as_uri())
        assert driver.find_element(By.ID, "summary").text.startswith("Model: dpo vs baseline base")
        rows = driver.find_elements(By.CSS_SELECTOR, "#comparison tbody tr")
        assert [r.find_element(By.TAG_NAME, "td").text.split()[0] for r in rows] == [
            "exact_match",
            "perplexity",
            "multiple_choice",
        ]
        plots = driver.find_elements(By.CSS_SELECTOR, "#metric-plots svg")
        curves = driver.find_elements(By.CSS_SELECTOR, "#curves svg")
        assert len(plots) == 3 and len(curves) >= 1
        for svg in plots + curves:
            assert svg.size["width"] > 50 and svg.size["height"] > 50
            # Bars or lines were drawn: paths inside the figure.
            assert len(svg.find_elements(By.CSS_SELECTOR, "path")) > 3


def test_kubetune_compare_renders_finished_runs(
    pipeline: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubetune.cli import main as kubetune_main

    storage = pipeline.sft.storage.root
    page = tmp_path / "compare.html"
    assert kubetune_main(["compare", "t/compare", "sft", "dpo", "--storage", storage,
                          "--html", str(page)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    # The eval job as it reported itself, with intervals and deltas...
    report = (Path(pipeline.evaluation.storage.output_dir) / REPORT_MARKDOWN).read_text()
    assert report.strip() in printed
    # ...and the training runs by their last held-out metrics (no intervals without
    # per-example scores, said so).
    assert "no intervals without per-example scores" in printed
    last_sft = [e for e in history(pipeline.sft) if "eval_loss" in e][-1]
    training_rows = [line for line in printed.splitlines() if line.startswith("| eval_loss")]
    assert training_rows and f"{last_sft['eval_loss']:.3f}" in training_rows[-1]
    html = page.read_text()
    assert html.count("<svg") >= 4 and "training loss" in html

    assert kubetune_main(["compare", "nope", "--storage", storage]) == 1
    assert "nope: no run under" in capsys.readouterr().err
