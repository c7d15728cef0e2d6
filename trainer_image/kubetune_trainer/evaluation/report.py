"""The evaluation report, from the results document (``eval_results.json``): a summary in the
style of a model dashboard, a Markdown table (models side by side, each value with its
interval, each difference to the baseline with its paired interval), and one self-contained
HTML file with the same table and plots (bars with error bars per metric; training curves from
each trained model's ``history.jsonl``), the plots inline as SVG drawn by matplotlib.

Torch-free; the eval recipe writes all three, ``kubetune compare`` prints the first two.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

REPORT_MARKDOWN = "eval_report.md"
REPORT_HTML = "eval_report.html"


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1e5:
        return f"{value:.3g}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}"


def signed(value: float) -> str:
    return ("+" if value >= 0 else "") + fmt(value)


def interval(estimate: dict[str, Any] | None) -> str:
    if not estimate:
        return ""
    return f"[{fmt(estimate['low'])}, {fmt(estimate['high'])}]"


def _models(document: dict[str, Any]) -> list[dict[str, Any]]:
    return document["models"]


def _metric_names(document: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for model in _models(document):
        names += [n for n in model["metrics"] if n not in names]
    return names


def _value(model: dict[str, Any], metric: str) -> dict[str, Any] | None:
    return model["metrics"].get(metric)


def _n(document: dict[str, Any], metric: str) -> str:
    counts = {
        m["metrics"][metric]["estimate"]["n"]
        for m in _models(document)
        if metric in m["metrics"] and m["metrics"][metric].get("estimate")
    }
    return "/".join(str(c) for c in sorted(counts)) or "-"


def _verdict(comparison: dict[str, Any] | None) -> str:
    if comparison is None:
        return "not paired"
    if comparison["better"] is None:
        return "no significant difference"
    return "significantly better" if comparison["better"] else "significantly worse"


def _arrow(delta: float, lower_is_better: bool) -> str:
    if delta == 0:
        return "="
    return "↑" if delta > 0 else "↓"


def summary_lines(document: dict[str, Any]) -> list[str]:
    """The subject model against the baseline, one line per metric::

    Model: dpo vs baseline base
    exact_match   0.810 [0.750, 0.860]  ↑ from 0.050  Δ +0.760 [0.700, 0.820], significantly better
    """
    subject = document["subject"]
    baseline = document.get("baseline")
    by_name = {m["name"]: m for m in _models(document)}
    mine = by_name[subject]
    lines = [f"Model: {subject}" + (f" vs baseline {baseline}" if baseline else "")]
    width = max((len(n) for n in mine["metrics"]), default=0) + 1
    for metric, result in mine["metrics"].items():
        estimate = result.get("estimate")
        line = f"{metric + ':':<{width}} {fmt(result['value'])} {interval(estimate)}".rstrip()
        line += f" n={estimate['n']}" if estimate else ""
        if baseline and baseline != subject and result["value"] is not None:
            theirs = _value(by_name[baseline], metric)
            comparison = document["comparisons"].get(subject, {}).get(metric)
            if theirs and theirs["value"] is not None:
                arrow = _arrow(result["value"] - theirs["value"], result["lowerIsBetter"])
                line += f"  ({arrow} from {fmt(theirs['value'])}"
                if comparison:
                    delta = comparison["delta"]
                    line += (
                        f"; Δ {signed(delta['value'])} {interval(delta)}, {_verdict(comparison)}"
                    )
                line += ")"
        lines.append(line)
    return lines


def markdown(document: dict[str, Any]) -> str:
    """The summary lines, then models side by side: per metric each model's value with its
    interval and, for each model but the baseline, its difference to the baseline with the
    paired interval (* where significant)."""
    models = _models(document)
    baseline = document.get("baseline")
    confidence = round(100 * document.get("confidence", 0.95))
    header = ["metric", "n"]
    for model in models:
        header.append(model["name"] + (" (baseline)" if model["name"] == baseline else ""))
        if baseline and model["name"] != baseline:
            header.append(f"Δ {model['name']}")
    rows = [header, ["---"] * len(header)]
    for metric in _metric_names(document):
        first = next(m["metrics"][metric] for m in models if metric in m["metrics"])
        row = [f"{metric} {'↓' if first['lowerIsBetter'] else '↑'}", _n(document, metric)]
        for model in models:
            result = _value(model, metric)
            shown = result is not None and result["value"] is not None
            row.append(
                f"{fmt(result['value'])} {interval(result.get('estimate'))}".rstrip()
                if shown
                else "-"
            )
            if not baseline or model["name"] == baseline:
                continue
            comparison = document["comparisons"].get(model["name"], {}).get(metric)
            if comparison is None:
                row.append("-")
                continue
            delta = comparison["delta"]
            mark = " *" if comparison["significant"] else ""
            row.append(f"{signed(delta['value'])} {interval(delta)}{mark}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "| "
        + " | ".join(c.ljust(w) if c != "---" else "-" * w for c, w in zip(r, widths, strict=True))
        + " |"
        for r in rows
    ]
    with_intervals = any(
        result.get("estimate") for model in models for result in model["metrics"].values()
    )
    said = []
    if with_intervals:
        said.append(f"Values with their {confidence}% intervals.")
    if baseline:
        said.append(
            f"Δ: difference to the baseline on the same examples (paired bootstrap), * where "
            f"its {confidence}% interval excludes 0."
        )
    notes = ["", *([" ".join(said)] if said else [])]
    notes.append("↑ higher is better, ↓ lower is better.")
    return "\n".join(["\n".join(summary_lines(document)), "", *lines, *notes]) + "\n"


def read_history(path: Path | None) -> list[dict[str, Any]]:
    """The entries of a history.jsonl (nothing when it is missing)."""
    if path is None or not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return entries


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    # Without matplotlib's RDF metadata block (its creator URL, namespace links and the time of
    # writing): the report stays free of outside addresses and the same run gives the same file.
    no_metadata = {"Creator": None, "Date": None, "Format": None, "Type": None}
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata=no_metadata)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def metric_figures(document: dict[str, Any]) -> dict[str, str]:
    """Per metric, an SVG bar chart: one bar per model with its interval as error bars."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figures: dict[str, str] = {}
    for metric in _metric_names(document):
        names, values, below, above = [], [], [], []
        for model in _models(document):
            result = _value(model, metric)
            if result is None or result["value"] is None:
                continue
            estimate = result.get("estimate") or {}
            names.append(model["name"])
            values.append(result["value"])
            below.append(max(0.0, result["value"] - estimate.get("low", result["value"])))
            above.append(max(0.0, estimate.get("high", result["value"]) - result["value"]))
        if not names:
            continue
        figure, axes = plt.subplots(figsize=(1.4 + 1.1 * len(names), 3.0))
        colors = ["#9aa5b1" if n == document.get("baseline") else "#3b6ea8" for n in names]
        axes.bar(names, values, yerr=[below, above], capsize=6, color=colors)
        axes.set_title(metric)
        axes.grid(axis="y", alpha=0.3)
        figures[metric] = _svg(figure)
        plt.close(figure)
    return figures


def curve_figures(histories: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Training loss and held-out loss by step, one line per trained model."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figures: dict[str, str] = {}
    for key, title in (("loss", "training loss"), ("eval_loss", "held-out loss")):
        lines = {
            name: sorted((e["step"], e[key]) for e in entries if key in e and "step" in e)
            for name, entries in histories.items()
        }
        lines = {name: points for name, points in lines.items() if points}
        if not lines:
            continue
        figure, axes = plt.subplots(figsize=(6.0, 3.0))
        for name, points in lines.items():
            axes.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=name)
        axes.set_xlabel("step")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
        figures[title] = _svg(figure)
        plt.close(figure)
    return figures


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1f2933; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #cbd2d9; padding: 0.35rem 0.6rem; text-align: left; }
th { background: #f0f4f8; }
.delta { color: #52606d; font-size: 0.85em; }
.better { color: #1d7a43; } .worse { color: #b42318; }
figure { display: inline-block; margin: 0.5rem; }
pre { background: #f5f7fa; padding: 0.8rem; }
"""


def html_report(document: dict[str, Any], histories: dict[str, list[dict[str, Any]]]) -> str:
    """One self-contained HTML page: summary, table, metric plots, training curves."""
    esc = html.escape
    models = _models(document)
    baseline = document.get("baseline")
    head = "".join(
        f"<th>{esc(m['name'])}{' (baseline)' if m['name'] == baseline else ''}</th>" for m in models
    )
    body_rows = []
    for metric in _metric_names(document):
        first = next(m["metrics"][metric] for m in models if metric in m["metrics"])
        cells = [
            f"<td>{esc(metric)} {'↓' if first['lowerIsBetter'] else '↑'}</td>",
            f"<td>{_n(document, metric)}</td>",
        ]
        for model in models:
            result = _value(model, metric)
            if result is None or result["value"] is None:
                cells.append("<td>-</td>")
                continue
            text = f"{fmt(result['value'])} {interval(result.get('estimate'))}"
            comparison = document["comparisons"].get(model["name"], {}).get(metric)
            if comparison:
                delta = comparison["delta"]
                kind = {True: "better", False: "worse", None: ""}[comparison["better"]]
                text += (
                    f"<div class='delta {kind}'>Δ {signed(delta['value'])} {interval(delta)} "
                    f"({_verdict(comparison)}, p={comparison['pValue']:.3f})</div>"
                )
            cells.append(f"<td>{text}</td>")
        body_rows.append("<tr>" + "".join(cells) + "</tr>")
    plots = "".join(
        f"<figure class='metric-plot'>{svg}</figure>" for svg in metric_figures(document).values()
    )
    curves = "".join(
        f"<figure class='curve-plot'>{svg}</figure>" for svg in curve_figures(histories).values()
    )
    categories = _categories_html(document)
    summary = esc("\n".join(summary_lines(document)))
    confidence = round(100 * document.get("confidence", 0.95))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>kubetune evaluation</title>
<style>{_STYLE}</style></head>
<body>
<h1>Evaluation</h1>
<pre id="summary">{summary}</pre>
<table id="comparison"><thead><tr><th>metric</th><th>n</th>{head}</tr></thead>
<tbody>{"".join(body_rows)}</tbody></table>
<p>Values with their {confidence}% intervals; Δ: difference to the baseline on the same
examples (paired bootstrap).</p>
<h2>Metrics</h2>
<div id="metric-plots">{plots}</div>
{"<h2>Training</h2><div id='curves'>" + curves + "</div>" if curves else ""}
{categories}
</body></html>
"""


def _categories_html(document: dict[str, Any]) -> str:
    sections = []
    for metric in _metric_names(document):
        per_model = {
            m["name"]: m["metrics"][metric].get("categories") or {}
            for m in _models(document)
            if metric in m["metrics"]
        }
        names = sorted({c for cats in per_model.values() for c in cats})
        if not names:
            continue
        head = "".join(f"<th>{html.escape(m)}</th>" for m in per_model)
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td>"
            + "".join(
                f"<td>{fmt(cats[name]['value'])} {interval(cats[name])}</td>"
                if name in cats
                else "<td>-</td>"
                for cats in per_model.values()
            )
            + "</tr>"
            for name in names
        )
        sections.append(
            f"<h3>{html.escape(metric)} by category</h3>"
            f"<table><thead><tr><th>category</th>{head}</tr></thead><tbody>{rows}</tbody></table>"
        )
    return "".join(sections)
