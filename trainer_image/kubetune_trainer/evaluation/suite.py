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
  baselineModel's completions, asked in both orders);
- lmEval: a task of lm-evaluation-harness (:mod:`kubetune_trainer.evaluation.benchmarks`).

Every metric comes with its interval and sample count and its per-example scores
(:class:`~kubetune_trainer.evaluation.results.MetricResult`); several models are evaluated on
the same examples and compared, paired, with a baseline (:func:`evaluate_models`).

Results of one model (:func:`evaluate_metrics`, what the export gate reads):
``{"model": SOURCE, "metrics": {NAME: VALUE}, "details": {NAME: {...}}, "estimates": {...}}``.
A value is null when nothing could be scored (e.g. every judge reply unreadable); such a metric
never passes a gate. The eval job writes the document of :func:`results_document`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubetune_trainer.data import DataError, read_source
from kubetune_trainer.data.score_conditioning import is_conditioned
from kubetune_trainer.evaluation.measures import (
    extract_code,
    generate_completions,
    mean_pass_at_k,
    pass_at_k,
    score_answers,
    token_perplexity,
    win_rate,
)
from kubetune_trainer.evaluation.results import (
    RESULTS_VERSION,
    MetricResult,
    compare,
    comparison_json,
    estimate_rows,
    metric_json,
    reported,
    scored,
)
from kubetune_trainer.evaluation.statistics import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    Comparison,
)
from kubetune_trainer.plan import EvalMetric, EvalSpec, ModelSpec

log = logging.getLogger("kubetune.trainer")

PASS_AT_K_TEMPERATURE = 0.8
RESULTS_FILE = "eval_results.json"
SAMPLES_DIR = "samples"


class EvalError(ValueError):
    """A metric that cannot be computed as specified; the message names the spec field."""


@dataclass
class Settings:
    """How every metric of an evaluation is computed."""

    max_length: int = 2048
    batch_size: int = 8
    seed: int = 42
    confidence: float = DEFAULT_CONFIDENCE
    resamples: int = DEFAULT_RESAMPLES

    def scored(self, type_: str, ids: list[Any], rows: list[Any], **kwargs: Any) -> MetricResult:
        return scored(
            type_,
            ids,
            rows,
            confidence=self.confidence,
            resamples=self.resamples,
            seed=self.seed,
            **kwargs,
        )


@dataclass
class NamedModel:
    """A model of a side-by-side evaluation."""

    name: str
    spec: ModelSpec
    history: Path | None = None
    """The history.jsonl of the job that trained it, when it is a local job's output."""


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

    def release(self, keep: list[ModelSpec]) -> None:
        """Forget every loaded model but those in ``keep``."""
        kept = {spec.model_dump_json() for spec in keep}
        self._loaded = {k: v for k, v in self._loaded.items() if k in kept}


def _rows(metric: EvalMetric, where: str, kind: str) -> list[dict[str, Any]]:
    assert metric.dataset is not None
    try:
        return read_source(metric.dataset, kind).rows  # type: ignore[arg-type]
    except DataError as err:
        raise EvalError(f"{where}.dataset: {err}") from None


def _answers(rows: list[dict[str, Any]], metric: EvalMetric, where: str) -> list[str]:
    assert metric.dataset is not None
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


Compute = Callable[[EvalMetric, str, "_Models", ModelSpec, Settings], MetricResult]


def _perplexity(
    metric: EvalMetric, where: str, models: _Models, spec: ModelSpec, s: Settings
) -> MetricResult:
    rows = _rows(metric, where, "sft")
    model, tokenizer = models.get(spec)
    result = token_perplexity(
        model, tokenizer, rows, max_length=s.max_length, batch_size=s.batch_size
    )
    per_row = [
        [loss, tokens] for loss, tokens in zip(result.row_losses, result.row_tokens, strict=True)
    ]
    details = {
        k: v
        for k, v in asdict(result).items()
        if k not in ("row_index", "row_losses", "row_tokens")
    }
    samples = [
        {"id": i, "loss": loss, "tokens": tokens, "perplexity": math.exp(loss / tokens)}
        for i, (loss, tokens) in zip(result.row_index, per_row, strict=True)
    ]
    return s.scored(
        "perplexity",
        result.row_index,
        per_row,
        statistic="perplexity",
        lower_is_better=True,
        details=details,
        samples=samples,
    )


def _accuracy(
    metric: EvalMetric, where: str, models: _Models, spec: ModelSpec, s: Settings
) -> MetricResult:
    rows = _rows(metric, where, "prompt")
    answers = _answers(rows, metric, where)
    model, tokenizer = models.get(spec)
    kwargs = _score_kwargs(tokenizer, metric, where)
    completions = _greedy(model, tokenizer, [r["prompt"] for r in rows], metric, kwargs)
    result = score_answers(completions, answers, extractor=metric.extractor, pattern=metric.pattern)
    samples = [
        {"id": i, "prompt": row["prompt"], "answer": answer, "generated": text, "correct": ok}
        for i, (row, answer, text, ok) in enumerate(
            zip(rows, answers, completions, result.outcomes, strict=True)
        )
    ]
    details = {k: v for k, v in asdict(result).items() if k != "outcomes"}
    return s.scored(
        "accuracy",
        list(range(len(rows))),
        [float(ok) for ok in result.outcomes],
        details=details | {"extractor": metric.extractor},
        samples=samples,
    )


def _pass_at_k(
    metric: EvalMetric, where: str, models: _Models, spec: ModelSpec, s: Settings
) -> MetricResult:
    from kubetune_trainer.evaluation.sandbox import SandboxLimits, network_isolation, run_programs

    rows = _rows(metric, where, "prompt")
    tests = _answers(rows, metric, where)
    model, tokenizer = models.get(spec)
    temperature = 0.0 if metric.samples == 1 else PASS_AT_K_TEMPERATURE
    found = generate_completions(
        model,
        tokenizer,
        [r["prompt"] for r in rows],
        max_new_tokens=metric.max_new_tokens,
        temperature=temperature,
        num_samples=metric.samples,
        seed=s.seed,
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
    k = min(metric.k)
    per_problem = [pass_at_k(len(p), sum(p), k) for p in passed]
    samples = [
        {
            "id": i,
            "prompt": row["prompt"],
            "completions": [c.text for c in found[i]],
            "passed": passed[i],
            f"pass@{k}": per_problem[i],
        }
        for i, row in enumerate(rows)
    ]
    return s.scored(
        "passAtK", list(range(len(rows))), per_problem, details=details, samples=samples
    )


def _win_rate(
    metric: EvalMetric, where: str, models: _Models, spec: ModelSpec, s: Settings
) -> MetricResult:
    try:
        from kubetune_trainer.evaluation.rewards import RewardModelScorer
    except ImportError as err:
        raise EvalError(f"{where}: winRate needs the reward-model scorer: {err}") from None
    assert metric.baseline_model is not None and metric.reward_model is not None
    rows = _rows(metric, where, "prompt")
    prompts = [r["prompt"] for r in rows]
    model, tokenizer = models.get(spec)
    mine = _greedy(model, tokenizer, prompts, metric, _score_kwargs(tokenizer, metric, where))
    base_model, base_tokenizer = models.get(metric.baseline_model)
    theirs = _greedy(base_model, base_tokenizer, prompts, metric, {})
    scorer = RewardModelScorer(metric.reward_model, device=models.device)
    mine_scores = scorer.score(prompts, mine, batch_size=s.batch_size)
    their_scores = scorer.score(prompts, theirs, batch_size=s.batch_size)
    result = win_rate(mine_scores, their_scores)
    together = list(zip(prompts, mine, theirs, mine_scores, their_scores, strict=True))
    result.examples = [
        {"model": m, "baseline": t, "model_score": ms, "baseline_score": ts}
        for _, m, t, ms, ts in together[:3]
    ]
    samples = [
        {"id": i, "prompt": p, "model": m, "baseline": t, "model_score": ms, "baseline_score": ts}
        for i, (p, m, t, ms, ts) in enumerate(together)
    ]
    details = {k: v for k, v in asdict(result).items() if k != "outcomes"}
    return s.scored(
        "winRate",
        list(range(len(rows))),
        result.outcomes,
        details=details | {"prompts": len(rows)},
        samples=samples,
    )


def _judge(
    metric: EvalMetric, where: str, models: _Models, spec: ModelSpec, s: Settings
) -> MetricResult:
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
    model, tokenizer = models.get(spec)
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
    kept = [(i, score) for i, score in enumerate(result.scores) if score is not None]
    samples = [
        {"id": i, "prompt": p, "response": r, "score": score}
        for i, (p, r, score) in enumerate(zip(prompts, mine, result.scores, strict=True))
    ]
    return s.scored(
        "judge", [i for i, _ in kept], [v for _, v in kept], details=details, samples=samples
    )


def _lm_eval(
    metric: EvalMetric, where: str, models: _Models, spec: ModelSpec, s: Settings
) -> MetricResult:
    from kubetune_trainer.evaluation.benchmarks import BenchmarkError, run_task

    model, tokenizer = models.get(spec)
    try:
        task = run_task(
            model,
            tokenizer,
            metric,
            where,
            batch_size=s.batch_size,
            max_length=s.max_length,
            seed=s.seed,
            resamples=s.resamples,
        )
    except BenchmarkError as err:
        raise EvalError(str(err)) from None
    result = s.scored(
        "lmEval",
        task.ids,
        task.rows,
        statistic=task.aggregation,
        lower_is_better=not task.higher_is_better,
        details={
            "task": task.task,
            "metric": task.metric,
            "filter": task.filter,
            "documents": task.n,
            "lm_eval_value": task.value,
            "lm_eval_stderr": task.stderr,
        },
        samples=task.samples,
    )
    if task.stderr is not None:
        # lm-eval's own standard error, around lm-eval's own value.
        result.value = task.value
        result.estimate = reported(task.value, task.stderr, task.n, s.confidence)
    for name, category in task.categories.items():
        if category["value"] is None:
            continue
        if category["stderr"] is not None:
            n = int(category["n"] or 0)
            result.categories[name] = reported(
                category["value"], category["stderr"], n, s.confidence
            )
            continue
        prefix = f"{category['task']}/"
        rows = [row for i, row in zip(task.ids, task.rows, strict=True) if i.startswith(prefix)]
        found = estimate_rows(
            rows, task.aggregation, confidence=s.confidence, resamples=s.resamples, seed=s.seed
        )
        if found is not None:
            result.categories[name] = found
    return result


_COMPUTE: dict[str, Compute] = {
    "perplexity": _perplexity,
    "accuracy": _accuracy,
    "passAtK": _pass_at_k,
    "winRate": _win_rate,
    "judge": _judge,
    "lmEval": _lm_eval,
}


def evaluate_model(
    spec: EvalSpec, model: ModelSpec, models: _Models, settings: Settings
) -> dict[str, MetricResult]:
    """Every metric of ``spec`` on one model. Raises :class:`EvalError` naming the field
    (``eval.metrics[i]...``) when a metric cannot be computed as specified."""
    found: dict[str, MetricResult] = {}
    for index, metric in enumerate(spec.metrics):
        where = f"eval.metrics[{index}]"
        started = time.monotonic()
        result = _COMPUTE[metric.type.value](metric, where, models, model, settings)
        if result.value is not None and math.isnan(result.value):
            result.value = None
        result.details = {"type": metric.type.value, **result.details}
        result.details["seconds"] = round(time.monotonic() - started, 3)
        found[metric.name] = result
        log.info(
            "event=eval_metric model=%s name=%s type=%s value=%s interval=%s seconds=%.1f",
            model.source,
            metric.name,
            metric.type.value,
            result.value,
            result.estimate.format(4) if result.estimate else "-",
            time.monotonic() - started,
        )
    return found


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
    """Every metric of ``spec`` on ``model``: ``{"model", "metrics", "details", "estimates"}``
    (see the module docstring)."""
    settings = Settings(max_length, batch_size, seed, spec.confidence, spec.bootstrap_resamples)
    found = evaluate_model(spec, model, _Models(device, dtype), settings)
    return single_model_results(model.source, found)


def single_model_results(source: str, found: dict[str, MetricResult]) -> dict[str, Any]:
    return {
        "model": source,
        "metrics": {name: r.value for name, r in found.items()},
        "details": {name: r.details for name, r in found.items()},
        "estimates": {
            name: r.estimate.to_json() for name, r in found.items() if r.estimate is not None
        },
    }


@dataclass
class Evaluation:
    """Several models on the same metrics: their results and comparisons with the baseline."""

    models: list[NamedModel]
    results: dict[str, dict[str, MetricResult]]
    baseline: str | None
    settings: Settings
    metric_types: dict[str, str] = field(default_factory=dict)


def evaluate_models(
    spec: EvalSpec,
    named: list[NamedModel],
    baseline: str | None,
    *,
    device: str = "cpu",
    dtype: Any = None,
    settings: Settings | None = None,
) -> Evaluation:
    """Every metric on every model, one model at a time (each loaded once)."""
    settings = settings or Settings(confidence=spec.confidence, resamples=spec.bootstrap_resamples)
    models = _Models(device, dtype)
    shared = [m.baseline_model for m in spec.metrics if m.baseline_model is not None]
    results: dict[str, dict[str, MetricResult]] = {}
    for model in named:
        log.info("event=eval_model name=%s source=%s", model.name, model.spec.source)
        results[model.name] = evaluate_model(spec, model.spec, models, settings)
        models.release(keep=shared)
    return Evaluation(
        named, results, baseline, settings, {m.name: m.type.value for m in spec.metrics}
    )


def comparisons(evaluation: Evaluation) -> dict[str, dict[str, Comparison | None]]:
    """Per model other than the baseline, per metric: the paired difference to the baseline
    (None where the two share no scored example)."""
    if evaluation.baseline is None:
        return {}
    s = evaluation.settings
    base = evaluation.results[evaluation.baseline]
    out: dict[str, dict[str, Comparison | None]] = {}
    for model in evaluation.models:
        if model.name == evaluation.baseline:
            continue
        out[model.name] = {
            metric: compare(
                result, base[metric], confidence=s.confidence, resamples=s.resamples, seed=s.seed
            )
            for metric, result in evaluation.results[model.name].items()
        }
    return out


def results_document(evaluation: Evaluation, subject: str) -> dict[str, Any]:
    """The JSON document of an evaluation (``eval_results.json``). ``subject`` names the model
    whose values fill the top-level ``metrics`` (what gates and older readers use)."""
    main = evaluation.results[subject]
    source = next(m.spec.source for m in evaluation.models if m.name == subject)
    return {
        "version": RESULTS_VERSION,
        **single_model_results(source, main),
        "subject": subject,
        "confidence": evaluation.settings.confidence,
        "baseline": evaluation.baseline,
        "metricTypes": evaluation.metric_types,
        "models": [
            {
                "name": m.name,
                "source": m.spec.source,
                "history": str(m.history) if m.history else None,
                "metrics": {k: metric_json(r) for k, r in evaluation.results[m.name].items()},
                "details": {k: r.details for k, r in evaluation.results[m.name].items()},
                "samples": {
                    k: f"{SAMPLES_DIR}/{m.name}/{k}.jsonl"
                    for k, r in evaluation.results[m.name].items()
                    if r.samples
                },
            }
            for m in evaluation.models
        ],
        "comparisons": {
            model: {
                metric: None
                if found is None
                else comparison_json(found, evaluation.results[model][metric].lower_is_better)
                for metric, found in by_metric.items()
            }
            for model, by_metric in comparisons(evaluation).items()
        },
    }


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
    if kind == "lmEval":
        return f"lm-eval {detail['task']} {detail['metric']}, {detail['documents']} documents"
    scored_ = f"{detail['scored']}/{detail['total']} scored"
    failures = (
        f"{detail['parse_failures']} parse failures, {detail['request_failures']} request failures"
    )
    return f"{detail['mode']}: {scored_}, {failures}"


def _interval(estimate: dict[str, Any] | None) -> str:
    if not estimate:
        return "-"
    return f"[{_number(estimate['low'])}, {_number(estimate['high'])}] n={estimate['n']}"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"


def results_table(results: dict[str, Any]) -> str:
    """A readable table of one model's results, with each value's interval."""
    estimates = results.get("estimates", {})
    rows = [("METRIC", "TYPE", "VALUE", "95% INTERVAL", "DETAILS")]
    for name, value in results["metrics"].items():
        detail = results["details"][name]
        rows.append(
            (
                name,
                detail["type"],
                _number(value),
                _interval(estimates.get(name)),
                _headline(detail),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"model: {results['model']}"]
    for row in rows:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        )
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    Path(tmp).replace(path)


def write_results(results: dict[str, Any], output_dir: Path) -> Path:
    """Write eval_results.json atomically into output_dir."""
    path = output_dir / RESULTS_FILE
    _atomic_write(path, json.dumps(results, indent=1))
    return path


def write_samples(evaluation: Evaluation, output_dir: Path) -> list[Path]:
    """Per-example outputs: ``samples/MODEL/METRIC.jsonl``, one line per example."""
    written = []
    for model, found in evaluation.results.items():
        for metric, result in found.items():
            if not result.samples:
                continue
            path = output_dir / SAMPLES_DIR / model / f"{metric}.jsonl"
            lines = (json.dumps(sample, default=str) + "\n" for sample in result.samples)
            _atomic_write(path, "".join(lines))
            written.append(path)
    return written
