"""Method eval: compute spec.eval.metrics on the model (the metric suite,
:mod:`kubetune_trainer.evaluation.suite`), write ``eval_results.json`` and print a table."""

from __future__ import annotations

import logging

from kubetune_trainer.evaluation.suite import evaluate_metrics, results_table, write_results
from kubetune_trainer.recipes.common import RecipeResult, RunContext, torch_dtype

log = logging.getLogger("kubetune.trainer")


def run(ctx: RunContext) -> RecipeResult:
    recipe = ctx.plan.recipe
    if not ctx.is_main:  # evaluation runs on one process; the others have nothing to do
        return RecipeResult(0, False, {}, None)
    assert recipe.eval is not None
    results = evaluate_metrics(
        recipe.eval,
        recipe.model,
        device="cuda" if ctx.hardware.cuda else "cpu",
        dtype=torch_dtype(ctx.precision),
        max_length=recipe.training.max_length,
        batch_size=recipe.training.per_device_batch_size,
        seed=recipe.training.seed,
    )
    path = write_results(results, ctx.output_dir)
    table = results_table(results)
    job = f"{ctx.plan.job.namespace}/{ctx.plan.job.name}"
    for line in table.splitlines():
        log.info("event=eval_table job=%s line=%r", job, line)
    print(table, flush=True)
    log.info("event=eval_results job=%s path=%s", job, path)
    numeric = {f"eval_{k}": v for k, v in results["metrics"].items() if v is not None}
    return RecipeResult(0, False, numeric, ctx.output_dir)
