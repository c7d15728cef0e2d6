"""`kubetune compare JOB...`: finished local runs side by side.

An eval job is shown as it reported itself (every model it evaluated, each value with its
interval, each difference to its baseline with the paired interval). Training jobs are shown
by their last held-out metrics and final training loss from ``history.jsonl`` (the trainer logs
held-out means without per-example scores, so these carry no interval: evaluate the outputs
with an eval job for that), with their loss curves in the HTML report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.evaluation.report import (
    html_report,
    markdown,
    read_history,
)
from kubetune_trainer.evaluation.results import RESULTS_VERSION
from kubetune_trainer.evaluation.suite import RESULTS_FILE
from kubetune_trainer.reporting.train_metrics import is_held_out_metric


class CompareError(ValueError):
    """A job that cannot be compared (not run, not finished); the message says which."""


@dataclass
class FinishedRun:
    name: str
    run_dir: Path
    history: list[dict[str, Any]]
    results: dict[str, Any] | None
    """eval_results.json of an eval job."""


def find_run(storage: Path, job: str) -> FinishedRun:
    """``NAMESPACE/NAME`` or a ``NAME`` unique across namespaces, under the storage root."""
    if "/" in job:
        candidates = [storage / job]
    else:
        candidates = sorted(p for p in storage.glob(f"*/{job}") if p.is_dir())
    candidates = [
        c for c in candidates if (c / "output").is_dir() or (c / "history.jsonl").is_file()
    ]
    if not candidates:
        raise CompareError(f"{job}: no run under {storage} (run it with kubetune run --local)")
    if len(candidates) > 1:
        names = ", ".join(f"{c.parent.name}/{c.name}" for c in candidates)
        raise CompareError(f"{job}: several runs match ({names}); name one as NAMESPACE/NAME")
    run_dir = candidates[0]
    results_path = run_dir / "output" / RESULTS_FILE
    results = json.loads(results_path.read_text()) if results_path.is_file() else None
    if results is not None and results.get("version") != RESULTS_VERSION:
        results = None
    history = read_history(run_dir / "history.jsonl")
    if results is None and not history:
        raise CompareError(f"{job}: {run_dir} has neither results nor a history yet")
    return FinishedRun(f"{run_dir.parent.name}/{run_dir.name}", run_dir, history, results)


def last_held_out(history: list[dict[str, Any]]) -> dict[str, float]:
    """The last evaluation's metrics and the final training loss; pure."""
    found: dict[str, float] = {}
    for entry in history:
        for key, value in entry.items():
            if isinstance(value, int | float) and (is_held_out_metric(key) or key == "loss"):
                found["train_loss" if key == "loss" else key] = float(value)
    return found


def training_document(runs: list[FinishedRun]) -> dict[str, Any]:
    """Training runs in the results document's shape (values without intervals); pure."""
    models = []
    for run in runs:
        values = last_held_out(run.history)
        models.append(
            {
                "name": run.name,
                "source": str(run.run_dir / "output"),
                "metrics": {
                    name: {
                        "type": "held-out" if name != "train_loss" else "training",
                        "value": value,
                        "lowerIsBetter": "loss" in name or "perplexity" in name,
                        "statistic": "mean",
                    }
                    for name, value in sorted(values.items())
                },
            }
        )
    return {
        "version": RESULTS_VERSION,
        "subject": runs[-1].name,
        "baseline": None,
        "confidence": 0.95,
        "models": models,
        "comparisons": {},
    }


def compare_runs(storage: Path, jobs: list[str]) -> tuple[str, str]:
    """(Markdown, HTML) comparing the jobs' runs."""
    runs = [find_run(storage, job) for job in jobs]
    evaluated = [run for run in runs if run.results is not None]
    trained = [run for run in runs if run.results is None]
    sections: list[str] = []
    pages: list[str] = []
    histories = {run.name: run.history for run in runs if run.history}
    for run in evaluated:
        assert run.results is not None
        sections.append(f"## {run.name}\n\n{markdown(run.results)}")
        histories |= {
            m["name"]: read_history(Path(m["history"]))
            for m in run.results["models"]
            if m.get("history")
        }
        pages.append(html_report(run.results, histories))
    if trained:
        document = training_document(trained)
        sections.append(
            "## Training runs (last evaluation; no intervals without per-example scores)\n\n"
            + markdown(document)
        )
        pages.append(html_report(document, {r.name: r.history for r in trained}))
    return "\n".join(sections), pages[0] if len(pages) == 1 else _join(pages)


def _join(pages: list[str]) -> str:
    """Several reports in one page: the first page's head, every page's body."""
    bodies = [page[page.index("<body>") + 6 : page.index("</body>")] for page in pages]
    head = pages[0][: pages[0].index("<body>") + 6]
    return head + "<hr>".join(bodies) + "</body></html>\n"
