"""An evaluation's results into the experiment tracker of spec.tracking (training metrics get
there through the HF Trainer's own integrations, ``report_to``).

- wandb: a run of job type ``eval`` with each model's value and interval bounds as summary
  metrics (``MODEL/METRIC``, ``MODEL/METRIC_low``, ``MODEL/METRIC_high``) and the comparison as
  a ``wandb.Table`` (one row per model and metric: value, interval, delta to the baseline and
  its interval, significance);
- mlflow: a run with the same metrics (``MODEL.METRIC``...), the baseline and models as
  params, and the results JSON, Markdown and HTML report as artifacts;
- tensorboard: scalars ``MODEL/METRIC``.

Tracker settings come from the environment the trainer set up (:func:`tracking_environment`):
``WANDB_PROJECT``/``WANDB_MODE``/``WANDB_DIR``, ``MLFLOW_TRACKING_URI``/
``MLFLOW_EXPERIMENT_NAME``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from kubetune_trainer.plan import TrackingSpec

log = logging.getLogger("kubetune.trainer")

TABLE_COLUMNS = [
    "model",
    "metric",
    "value",
    "low",
    "high",
    "n",
    "delta",
    "delta_low",
    "delta_high",
    "significant",
]


def tracking_environment(tracking: TrackingSpec, default_project: str) -> dict[str, str]:
    """The variables the trackers' own clients read, from spec.tracking (existing values
    win: a pod's environment or a test may set them)."""
    project = tracking.project or default_project
    if tracking.backend == "wandb":
        found = {"WANDB_PROJECT": project}
        if tracking.uri:
            found["WANDB_BASE_URL"] = tracking.uri
        return found
    if tracking.backend == "mlflow":
        found = {"MLFLOW_EXPERIMENT_NAME": project}
        if tracking.uri:
            found["MLFLOW_TRACKING_URI"] = tracking.uri
        return found
    return {}


def comparison_rows(document: dict[str, Any]) -> list[list[Any]]:
    """One row per model and metric (see TABLE_COLUMNS); pure."""
    rows = []
    for model in document["models"]:
        found = document["comparisons"].get(model["name"], {})
        for metric, result in model["metrics"].items():
            estimate = result.get("estimate") or {}
            comparison = found.get(metric)
            delta = comparison["delta"] if comparison else {}
            rows.append(
                [
                    model["name"],
                    metric,
                    result["value"],
                    estimate.get("low"),
                    estimate.get("high"),
                    estimate.get("n"),
                    delta.get("value"),
                    delta.get("low"),
                    delta.get("high"),
                    comparison["significant"] if comparison else None,
                ]
            )
    return rows


def flat_metrics(document: dict[str, Any], separator: str) -> dict[str, float]:
    """``MODEL<sep>METRIC`` (and ``_low``/``_high``) for every value with a number; pure."""
    out: dict[str, float] = {}
    for row in comparison_rows(document):
        model, metric, value, low, high = row[:5]
        key = re.sub(r"[^A-Za-z0-9_./-]", "_", f"{model}{separator}{metric}")
        for suffix, number in (("", value), ("_low", low), ("_high", high)):
            if number is not None:
                out[key + suffix] = float(number)
    return out


def log_evaluation(
    tracking: TrackingSpec, job: str, document: dict[str, Any], files: list[Path]
) -> None:
    """Send the results to the tracker; a tracker that fails is logged, never fatal."""
    if tracking.backend == "none":
        return
    try:
        {"wandb": _wandb, "mlflow": _mlflow, "tensorboard": _tensorboard}[tracking.backend](
            job, document, files
        )
    except Exception as err:  # the results are on disk already; tracking is a copy
        log.warning("event=tracking_failed backend=%s error=%r", tracking.backend, err)


def _wandb(job: str, document: dict[str, Any], files: list[Path]) -> None:
    import wandb

    run = wandb.init(name=job, job_type="eval", config={"baseline": document["baseline"]})
    try:
        run.summary.update(flat_metrics(document, "/"))
        run.log({"comparison": wandb.Table(columns=TABLE_COLUMNS, data=comparison_rows(document))})
        for path in files:
            run.save(str(path), base_path=str(path.parent), policy="now")
    finally:
        run.finish()


def _mlflow(job: str, document: dict[str, Any], files: list[Path]) -> None:
    import mlflow

    if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        mlflow.set_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])
    with mlflow.start_run(run_name=job):
        mlflow.log_params(
            {
                "baseline": document["baseline"] or "",
                "models": ",".join(m["name"] for m in document["models"]),
            }
        )
        mlflow.log_metrics(flat_metrics(document, "."))
        for path in files:
            mlflow.log_artifact(str(path))


def _tensorboard(job: str, document: dict[str, Any], files: list[Path]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=os.environ.get("TENSORBOARD_LOGGING_DIR") or None)
    try:
        for key, value in flat_metrics(document, "/").items():
            writer.add_scalar(key, value)
    finally:
        writer.close()
