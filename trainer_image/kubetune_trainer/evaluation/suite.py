"""The metric suite: compute spec.eval.metrics on a model (:func:`evaluate_metrics`), write
``eval_results.json``, show them as a table. The eval method's recipe
(:mod:`kubetune_trainer.recipes.evaluate`) and the export stage's gate
(:mod:`kubetune_trainer.evaluation.gate`) both use it.

Per metric type (rows come from the metric's dataset, read by the data layer):

- perplexity: sft rows (messages, prompt-completion or text), scored on the tokens SFT trains on;
- accuracy: prompt rows with an answer column; greedy generations, read by the extractor;
- passAtK: prompt rows whose answer column holds the test program (map it with
  ``columns: {answer: tests}``); ``samples`` generations per problem (greedy for one sample,
  else sampled at temperature 0.8, the Codex paper's choice for pass@k), each program being the
  generation's code followed by the tests, run in :mod:`kubetune_trainer.evaluation.sandbox`;
- winRate: prompt rows; greedy completions of the model and of baselineModel, both scored by
  rewardModel; ties count half;
- judge: prompt rows; greedy completions judged by an OpenAI-compatible endpoint (single: mean
  1–5 score, with the row's answer as a reference when it has one; pairwise: win rate against
  baselineModel's completions, asked in both orders).

Results: ``{"model": SOURCE, "metrics": {NAME: VALUE}, "details": {NAME: {...}}}``. A value is
null when nothing could be scored (e.g. every judge reply unreadable); such a metric never
passes a gate.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.data import DataError, read_source
from kubetune_trainer.data.score_conditioning import is_conditioned
from kubetune_trainer.evaluation.measures import (
    extract_code,
    generate_completions,
    mean_pass_at_k,
    score_answers,
    token_perplexity,
    win_rate,
)
from kubetune_trainer.plan import EvalMetric, EvalSpec, ModelSpec

log = logging.getLogger("kubetune.trainer")

PASS_AT_K_TEMPERATURE = 0.8
RESULTS_FILE = "eval_results.json"


class EvalError(ValueError):
    """A metric that cannot be computed as specified; the message names the spec field."""


@dataclass
class _Settings:
    model: ModelSpec
    max_length: int
    batch_size: int
    seed: int


class _Models:
    """Models loaded once per evaluation, by source."""

    def __init__(self, device: str, dtype: Any) -> None:
        self.device = device
        self.dtype = dtype
        self._loaded: dict[str, tuple[Any, Any]] = {}

    def get(self, spec: ModelSpec) -> tuple[Any, Any]:
        key = spec.model_dump_json()
        if key not in self._loaded:
            from kubetune_trainer.models import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(spec, dtype=self.dtype)
            self._loaded[key] = (model.to(self.device), tokenizer)
        return self._loaded[key]


def _rows(metric: EvalMetric, where: str, kind: str) -> list[dict[str, Any]]:
    try:
        return read_source(metric.dataset, kind).rows  # type: ignore[arg-type]
    except DataError as err:
        raise EvalError(f"{where}.dataset: {err}") from None


def _answers(rows: list[dict[str, Any]], metric: EvalMetric, where: str) -> list[str]:
    for index, row in enumerate(rows):
        if row.get("answer") is None:
            raise EvalError(
                f"{where}.dataset: {metric.dataset.uri} row {index} has no "
                f"'{metric.dataset.columns.answer}' column (set columns.answer)"
            )
    return [str(row["answer"]) for row in rows]


def _score_kwargs(tokenizer: Any, metric: EvalMetric, where: str) -> dict[str, Any]:
    """The chat template variables that ask a score-conditioned model for metric.score."""
    if metric.score is None:
        return {}
    if not is_conditioned(tokenizer.chat_template):
        raise EvalError(
            f"{where}.score: the model was not trained with score conditioning "
            "(spec.training.scoreConditioning); remove score"
        )
    return {"score": metric.score}


def _greedy(
    model: Any, tokenizer: Any, prompts: list, metric: EvalMetric, kwargs: dict[str, Any]
) -> list[str]:
    found = generate_completions(
        model,
        tokenizer,
        prompts,
        max_new_tokens=metric.max_new_tokens,
        chat_template_kwargs=kwargs,
    )
    return [samples[0].text for samples in found]


def _perplexity(metric: EvalMetric, where: str, models: _Models, ctx: _Settings) -> tuple:
    model, tokenizer = models.get(ctx.model)
    result = token_perplexity(
        model,
        tokenizer,
        _rows(metric, where, "sft"),
        max_length=ctx.max_length,
        batch_size=ctx.batch_size,
    )
    return result.perplexity, asdict(result)


def _accuracy(metric: EvalMetric, where: str, models: _Models, ctx: _Settings) -> tuple:
    rows = _rows(metric, where, "prompt")
    answers = _answers(rows, metric, where)
    model, tokenizer = models.get(ctx.model)
    kwargs = _score_kwargs(tokenizer, metric, where)
    completions = _greedy(model, tokenizer, [r["prompt"] for r in rows], metric, kwargs)
    result = score_answers(completions, answers, extractor=metric.extractor, pattern=metric.pattern)
    return result.accuracy, asdict(result) | {"extractor": metric.extractor}


def _pass_at_k(metric: EvalMetric, where: str, models: _Models, ctx: _Settings) -> tuple:
    from kubetune_trainer.evaluation.sandbox import SandboxLimits, network_isolation, run_programs

    rows = _rows(metric, where, "prompt")
    tests = _answers(rows, metric, where)
    model, tokenizer = models.get(ctx.model)
    temperature = 0.0 if metric.samples == 1 else PASS_AT_K_TEMPERATURE
    found = generate_completions(
        model,
        tokenizer,
        [r["prompt"] for r in rows],
        max_new_tokens=metric.max_new_tokens,
        temperature=temperature,
        num_samples=metric.samples,
        seed=ctx.seed,
        chat_template_kwargs=_score_kwargs(tokenizer, metric, where),
    )
    programs = [
        f"{extract_code(sample.text)}\n\n{test}\n"
        for samples, test in zip(found, tests, strict=True)
        for sample in samples
    ]
    limits = SandboxLimits(timeout_seconds=metric.timeout_seconds, memory_mb=metric.memory_mb)
    results = run_programs(programs, limits)
    n = metric.samples
    passed = [[r.passed for r in results[i * n : (i + 1) * n]] for i in range(len(rows))]
    by_k = mean_pass_at_k(passed, metric.k)
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    details = {
        "problems": len(rows),
        "samples": n,
        "temperature": temperature,
        "passed_samples": sum(sum(p) for p in passed),
        "problems_solved": sum(any(p) for p in passed),
        "pass_at_k": {str(k): v for k, v in by_k.items()},
        "sandbox_status": statuses,
        "network_isolation": network_isolation(),
    }
    return by_k[min(metric.k)], details


def _win_rate(metric: EvalMetric, where: str, models: _Models, ctx: _Settings) -> tuple:
    try:
        from kubetune_trainer.evaluation.rewards import RewardModelScorer
    except ImportError as err:
        raise EvalError(f"{where}: winRate needs the reward-model scorer: {err}") from None
    assert metric.baseline_model is not None and metric.reward_model is not None
    rows = _rows(metric, where, "prompt")
    prompts = [r["prompt"] for r in rows]
    model, tokenizer = models.get(ctx.model)
    mine = _greedy(model, tokenizer, prompts, metric, _score_kwargs(tokenizer, metric, where))
    base_model, base_tokenizer = models.get(metric.baseline_model)
    theirs = _greedy(base_model, base_tokenizer, prompts, metric, {})
    scorer = RewardModelScorer(metric.reward_model, device=models.device)
    mine_scores = scorer.score(prompts, mine, batch_size=ctx.batch_size)
    their_scores = scorer.score(prompts, theirs, batch_size=ctx.batch_size)
    result = win_rate(mine_scores, their_scores)
    result.examples = [
        {"model": m, "baseline": t, "model_score": ms, "baseline_score": ts}
        for m, t, ms, ts in list(zip(mine, theirs, mine_scores, their_scores, strict=True))[:3]
    ]
    return result.win_rate, asdict(result) | {"prompts": len(rows)}


def _judge(metric: EvalMetric, where: str, models: _Models, ctx: _Settings) -> tuple:
    from kubetune_trainer.evaluation.judge import (
        ChatClient,
        JudgeError,
        judge_pairwise,
        judge_single,
    )

    assert metric.judge is not None
    try:
        client = ChatClient.from_spec(metric.judge, field_path=f"{where}.judge")
    except JudgeError as err:
        raise EvalError(str(err)) from None
    rows = _rows(metric, where, "prompt")
    prompts = [r["prompt"] for r in rows]
    model, tokenizer = models.get(ctx.model)
    mine = _greedy(model, tokenizer, prompts, metric, _score_kwargs(tokenizer, metric, where))
    if metric.judge.mode == "single":
        references = [r.get("answer") for r in rows]
        result = judge_single(client, prompts, mine, references=references)
    else:
        assert metric.baseline_model is not None
        base_model, base_tokenizer = models.get(metric.baseline_model)
        theirs = _greedy(base_model, base_tokenizer, prompts, metric, {})
        result = judge_pairwise(client, prompts, mine, theirs)
    details = result.details | {
        "endpoint": metric.judge.endpoint,
        "judge_model": metric.judge.model,
    }
    return result.value, details


_COMPUTE: dict[str, Callable[[EvalMetric, str, _Models, _Settings], tuple]] = {
    "perplexity": _perplexity,
    "accuracy": _accuracy,
    "passAtK": _pass_at_k,
    "winRate": _win_rate,
    "judge": _judge,
}


def evaluate_metrics(
    spec: EvalSpec,
    model: ModelSpec,
    *,
    device: str = "cpu",
    dtype: Any = None,
    max_length: int = 2048,
    batch_size: int = 8,
    seed: int = 42,
) -> dict[str, Any]:
    """Every metric of ``spec`` on ``model``: ``{"model", "metrics", "details"}`` (see the
    module docstring). Raises :class:`EvalError` naming the field (``eval.metrics[i]...``)
    when a metric cannot be computed as specified."""
    models = _Models(device, dtype)
    settings = _Settings(model, max_length, batch_size, seed)
    metrics: dict[str, float | None] = {}
    details: dict[str, dict[str, Any]] = {}
    for index, metric in enumerate(spec.metrics):
        where = f"eval.metrics[{index}]"
        started = time.monotonic()
        value, detail = _COMPUTE[metric.type.value](metric, where, models, settings)
        value = None if value is None or math.isnan(value) else float(value)
        metrics[metric.name] = value
        details[metric.name] = {"type": metric.type.value, **detail}
        details[metric.name]["seconds"] = round(time.monotonic() - started, 3)
        log.info(
            "event=eval_metric name=%s type=%s value=%s seconds=%.1f",
            metric.name,
            metric.type.value,
            value,
            time.monotonic() - started,
        )
    return {"model": model.source, "metrics": metrics, "details": details}


def _headline(detail: dict[str, Any]) -> str:
    kind = detail["type"]
    if kind == "perplexity":
        return (
            f"{detail['tokens']} tokens, {detail['rows']} rows, mean loss {detail['mean_loss']:.4f}"
        )
    if kind == "accuracy":
        return (
            f"{detail['correct']}/{detail['total']} correct, {detail['no_answer']} without answer"
        )
    if kind == "passAtK":
        ks = ", ".join(f"pass@{k}={v:.3f}" for k, v in detail["pass_at_k"].items())
        return f"{ks}; {detail['problems_solved']}/{detail['problems']} problems solved"
    if kind == "winRate":
        return f"{detail['wins']} wins, {detail['ties']} ties, {detail['losses']} losses"
    scored = f"{detail['scored']}/{detail['total']} scored"
    failures = (
        f"{detail['parse_failures']} parse failures, {detail['request_failures']} request failures"
    )
    return f"{detail['mode']}: {scored}, {failures}"


def results_table(results: dict[str, Any]) -> str:
    """A readable table of the results."""
    rows = [("METRIC", "TYPE", "VALUE", "DETAILS")]
    for name, value in results["metrics"].items():
        detail = results["details"][name]
        shown = "-" if value is None else f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"
        rows.append((name, detail["type"], shown, _headline(detail)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"model: {results['model']}"]
    for row in rows:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        )
    return "\n".join(lines)


def write_results(results: dict[str, Any], output_dir: Path) -> Path:
    """Write eval_results.json atomically into output_dir."""
    output_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output_dir, prefix=".eval-results-")
    with os.fdopen(fd, "w") as handle:
        json.dump(results, handle, indent=1)
    path = output_dir / RESULTS_FILE
    Path(tmp).replace(path)
    return path
