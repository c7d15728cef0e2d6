"""Method eval: compute spec.eval.metrics on spec.model and on every model of spec.eval.models
(the metric suite, :mod:`kubetune_trainer.evaluation.suite`), compare each with the baseline
on the same examples, and write into the output directory:

- ``eval_results.json``: every value with its interval and sample count, and the comparisons;
- ``samples/MODEL/METRIC.jsonl``: the per-example outputs;
- ``eval_report.md`` and ``eval_report.html``: the comparison table, plots and training curves.

The summary (one line per metric, against the baseline) is printed, logged and reported through
the progress channel into the job's status.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kubetune_trainer.evaluation.report import (
    REPORT_HTML,
    REPORT_MARKDOWN,
    html_report,
    markdown,
    read_history,
    summary_lines,
)
from kubetune_trainer.evaluation.suite import (
    NamedModel,
    Settings,
    evaluate_models,
    results_document,
    results_table,
    write_results,
    write_samples,
)
from kubetune_trainer.evaluation.tracking import log_evaluation, tracking_environment
from kubetune_trainer.plan import ModelSpec, Plan
from kubetune_trainer.recipes.common import RecipeResult, RunContext, torch_dtype
from kubetune_trainer.reporting.progress import ProgressRecord
from kubetune_trainer.uris import local_storage

log = logging.getLogger("kubetune.trainer")


def models_of(plan: Plan) -> tuple[list[NamedModel], str, str | None]:
    """The models evaluated (spec.eval.models in order, then spec.model), the name of
    spec.model, and the baseline's name."""
    recipe = plan.recipe
    assert recipe.eval is not None
    subject = recipe.eval.model_name or plan.job.name
    named = [
        NamedModel(m.name, ModelSpec.model_validate(m.model_dump(exclude={"name"})), history_of(m))
        for m in recipe.eval.models
    ]
    named.append(NamedModel(subject, recipe.model, history_of(recipe.model)))
    baseline = recipe.eval.baseline or (named[0].name if recipe.eval.models else None)
    return named, subject, baseline


def history_of(model: ModelSpec) -> Path | None:
    """A trained job's history.jsonl, beside its output directory (local or PVC storage)."""
    path = local_storage(model.source)
    if path is None or model.source.startswith("builtin://"):
        return None
    history = path.parent / "history.jsonl"
    return history if history.is_file() else None


def run(ctx: RunContext) -> RecipeResult:
    recipe = ctx.plan.recipe
    if not ctx.is_main:  # evaluation runs on one process; the others have nothing to do
        return RecipeResult(0, False, {}, None)
    assert recipe.eval is not None
    named, subject, baseline = models_of(ctx.plan)
    settings = Settings(
        max_length=recipe.training.max_length,
        batch_size=recipe.training.per_device_batch_size,
        seed=recipe.training.seed,
        confidence=recipe.eval.confidence,
        resamples=recipe.eval.bootstrap_resamples,
    )
    evaluation = evaluate_models(
        recipe.eval,
        named,
        baseline,
        device="cuda" if ctx.hardware.cuda else "cpu",
        dtype=torch_dtype(ctx.precision),
        settings=settings,
    )
    document = results_document(evaluation, subject)
    out = ctx.output_dir
    path = write_results(document, out)
    write_samples(evaluation, out)
    table = markdown(document)
    (out / REPORT_MARKDOWN).write_text(table)
    histories = {m.name: read_history(m.history) for m in named if m.history is not None}
    (out / REPORT_HTML).write_text(html_report(document, histories))
    job = f"{ctx.plan.job.namespace}/{ctx.plan.job.name}"
    for name, value in tracking_environment(recipe.tracking, ctx.plan.job.namespace).items():
        os.environ.setdefault(name, value)
    log_evaluation(
        recipe.tracking,
        ctx.plan.job.name,
        document,
        [path, out / REPORT_MARKDOWN, out / REPORT_HTML],
    )
    # The table as people read it (a pod's log, the local run's output); the results file and
    # the event=eval_results line are the machine-readable record.
    print(results_table(document) if len(named) == 1 else table, flush=True)
    log.info("event=eval_results job=%s path=%s report=%s", job, path, out / REPORT_HTML)
    ctx.progress.report(
        ProgressRecord(
            evaluation={
                "models": [m.name for m in named],
                "baseline": baseline,
                "summary": "\n".join(summary_lines(document)),
                "results": str(path),
            }
        ),
        force=True,
    )
    numeric = {f"eval_{k}": v for k, v in document["metrics"].items() if v is not None}
    return RecipeResult(0, False, numeric, ctx.output_dir)
