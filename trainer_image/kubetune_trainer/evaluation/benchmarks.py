"""Metric type lmEval: a task, group or tag of lm-evaluation-harness run on a loaded model,
offline.

lm-eval does the work (its task YAMLs, prompts, metrics and standard errors; its HF backend
given our model object and tokenizer). kubetune decides only where each task's data comes
from, by writing override YAMLs (``include:`` the task's own YAML, replace the data keys) into
a folder placed last on lm-eval's task path, where a task of the same name wins:

- tasks whose YAML reads local files (``dataset_path: json`` + ``dataset_kwargs.data_files``,
  the builtin folder's and a user's taskDirs) get their relative ``data_files`` resolved
  against the YAML's folder;
- stock tasks that read a Hub dataset (MMLU, ARC, HellaSwag, ...) read
  ``dataDir/DATASET_PATH/DATASET_NAME/SPLIT.jsonl`` instead (``default`` for a task without
  ``dataset_name``): the same rows in the same schema, staged on a volume. A split that is not
  staged is dropped from the task (e.g. MMLU's few-shot ``dev`` split at zero shots);
- a Hub task without staged data is refused, naming the files it needs.

HumanEval is not run through lm-eval: its stock task loads its scorer from the Hub when it is
imported. HumanEval-format data runs through kubetune's sandboxed passAtK metric instead.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubetune_trainer.evaluation.builtin_tasks import BUILTIN_TASK_DIRS
from kubetune_trainer.plan import EvalMetric
from kubetune_trainer.uris import fetch_s3, local_path, pvc_path, scheme, uri_rest

log = logging.getLogger("kubetune.trainer")

LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
STAGED_SUFFIXES = (".jsonl", ".json", ".parquet")


class BenchmarkError(ValueError):
    """A task that cannot be run as specified; the message names the field."""


@dataclass
class TaskResult:
    """One lmEval metric on one model."""

    task: str
    metric: str
    """The lm-eval metric reported (e.g. acc, exact_match, word_perplexity)."""
    filter: str
    value: float
    stderr: float | None
    """lm-eval's standard error (None where lm-eval reports none, e.g. perplexities)."""
    aggregation: str
    """mean, or the statistic behind rows: perplexity (word/byte) or bits_per_byte."""
    ids: list[str] = field(default_factory=list)
    """Per document: TASK/DOC_ID, aligned with rows."""
    rows: list[Any] = field(default_factory=list)
    """Per document: the score (mean metrics) or [negative log-likelihood, words or bytes]."""
    categories: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per sub-task or sub-group (e.g. MMLU subjects): its task name, value, stderr, n."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    """Per document: the document, the prompt arguments, responses and score."""
    higher_is_better: bool = True
    n: int = 0


# --------------------------------------------------------------------------- task folders


def resolve_task_dirs(uris: list[str], where: str) -> list[Path]:
    """Local folders for the metric's taskDirs (builtin, path, pvc://, s3://)."""
    found: list[Path] = []
    for index, uri in enumerate(uris):
        kind = scheme(uri)
        if kind == "builtin":
            path = BUILTIN_TASK_DIRS[uri_rest(uri).strip("/")]
        elif kind == "pvc":
            path = pvc_path(uri)
        elif kind == "s3":
            path = fetch_s3(uri)
        else:
            path = local_path(uri)
        if not path.is_dir():
            raise BenchmarkError(f"{where}.taskDirs[{index}]: {uri} is not a folder ({path})")
        if path not in found:
            found.append(path)
    return found


def leaf_tasks(index: dict[str, Any], name: str, missing: list[str] | None = None) -> list[str]:
    """The tasks a task, group or tag name runs, in lm-eval's order; names not in the index
    are appended to ``missing``."""
    entry = index.get(name)
    if entry is None:
        if missing is not None:
            missing.append(name)
        return []
    kind = entry.kind.name
    if kind in ("TASK", "PY_TASK"):
        return [name]
    if kind == "TAG":
        return [leaf for tag in sorted(entry.tags) for leaf in leaf_tasks(index, tag, missing)]
    found: list[str] = []
    for item in _members((entry.cfg or {}).get("task", [])):
        for leaf in leaf_tasks(index, item, missing):
            if leaf not in found:
                found.append(leaf)
    return found


def _members(items: Any) -> list[str]:
    names: list[str] = []
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict) and "task" in item and isinstance(item["task"], str):
            names.append(item["task"])
        elif isinstance(item, dict) and "group" in item:
            names.extend([item["group"], *_members(item.get("task", []))])
    return names


def staged_files(data_dir: Path, config: dict[str, Any]) -> dict[str, Path]:
    """The staged file of each split a task config names, where one exists."""
    folder = data_dir / str(config["dataset_path"]) / str(config.get("dataset_name") or "default")
    files: dict[str, Path] = {}
    for key in SPLIT_KEYS:
        split = config.get(key)
        if not split:
            continue
        for suffix in STAGED_SUFFIXES:
            if (folder / f"{split}{suffix}").is_file():
                files[split] = folder / f"{split}{suffix}"
                break
    return files


def data_override(
    name: str, config: dict[str, Any], yaml_path: Path, data_dir: Path | None, where: str
) -> dict[str, Any] | None:
    """The keys that make one task read local files (None: nothing to change)."""
    dataset_path = config.get("dataset_path")
    if dataset_path is None:
        return None  # a Python task that loads its own data
    if dataset_path in LOCAL_BUILDERS:
        kwargs = dict(config.get("dataset_kwargs") or {})
        files = kwargs.get("data_files")
        if files is None:
            return None

        def absolute(value: Any) -> Any:
            if isinstance(value, list):
                return [absolute(v) for v in value]
            if isinstance(value, dict):
                return {k: absolute(v) for k, v in value.items()}
            path = Path(str(value))
            return str(path if path.is_absolute() else (yaml_path.parent / path).resolve())

        return {"dataset_kwargs": kwargs | {"data_files": absolute(files)}}
    expected = (
        f"{dataset_path}/{config.get('dataset_name') or 'default'}/"
        f"{config.get('test_split') or config.get('validation_split')}.jsonl"
    )
    if data_dir is None:
        raise BenchmarkError(
            f"{where}.dataDir: task {name} reads the Hub dataset {dataset_path}, which is "
            f"not reachable offline; stage its files on a volume (e.g. {expected}) and set "
            "dataDir to that folder"
        )
    files = staged_files(data_dir, config)
    evaluated = config.get("test_split") or config.get("validation_split")
    if evaluated not in files:
        raise BenchmarkError(
            f"{where}.dataDir: task {name} needs {data_dir / expected} (its "
            f"'{evaluated}' split, in {dataset_path}'s own schema)"
        )
    override: dict[str, Any] = {
        "dataset_path": "json" if files[evaluated].suffix != ".parquet" else "parquet",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {s: str(p) for s, p in files.items()}},
    }
    for key in SPLIT_KEYS:
        if config.get(key) and config[key] not in files:
            override[key] = None  # not staged: e.g. MMLU's few-shot split at zero shots
    return override


def task_manager(metric: EvalMetric, where: str, override_dir: Path) -> Any:
    """lm-eval's TaskManager for the metric: the builtin folders and taskDirs (and lm-eval's
    stock tasks when the task is not in those), then the data overrides."""
    from lm_eval.tasks import TaskManager

    dirs = [*BUILTIN_TASK_DIRS.values()]
    dirs += [d for d in resolve_task_dirs(metric.task_dirs, where) if d not in dirs]
    assert metric.task is not None
    manager = TaskManager(include_path=[str(d) for d in dirs], include_defaults=False)
    missing: list[str] = []
    leaf_tasks(manager.task_index, metric.task, missing)
    defaults = metric.task not in manager.all_tasks or bool(missing)
    if defaults:  # a stock task, or a group of stock tasks: index lm-eval's own (~10 s)
        manager = TaskManager(include_path=[str(d) for d in dirs])
    if metric.task not in manager.all_tasks:
        raise BenchmarkError(
            f"{where}.task: '{metric.task}' is neither an lm-eval task, group or tag nor "
            "defined in taskDirs"
        )
    data_dir = _data_dir(metric.data_dir) if metric.data_dir else None
    written = 0
    for leaf in leaf_tasks(manager.task_index, metric.task):
        entry = manager.task_index[leaf]
        if entry.yaml_path is None:
            continue
        override = data_override(leaf, entry.cfg or {}, Path(entry.yaml_path), data_dir, where)
        if override is None:
            continue
        document = {"include": str(Path(entry.yaml_path).resolve()), "task": leaf, **override}
        (override_dir / f"{leaf}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
        written += 1
    if not written:
        return manager
    return TaskManager(
        include_path=[*(str(d) for d in dirs), str(override_dir)], include_defaults=defaults
    )


def _data_dir(uri: str) -> Path:
    kind = scheme(uri)
    return pvc_path(uri) if kind == "pvc" else fetch_s3(uri) if kind == "s3" else local_path(uri)


# --------------------------------------------------------------------------- running


def run_task(
    model: Any,
    tokenizer: Any,
    metric: EvalMetric,
    where: str,
    *,
    batch_size: int,
    max_length: int,
    seed: int,
    resamples: int,
) -> TaskResult:
    """Run the metric's task on the model; its value, lm-eval's stderr, per-document rows and
    samples, and per-category results."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # our overrides are on purpose
    with tempfile.TemporaryDirectory(prefix="kubetune-lm-eval-") as overrides:
        manager = task_manager(metric, where, Path(overrides))
        lm = HFLM(
            pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length
        )
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[metric.task],
            task_manager=manager,
            num_fewshot=metric.num_fewshot,
            limit=metric.limit,
            log_samples=True,
            apply_chat_template=metric.chat_template,
            bootstrap_iters=resamples,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    return read_results(out, metric, where)


def _split_key(key: str) -> tuple[str, str]:
    metric, _, filter_name = key.partition(",")
    return metric, filter_name or "none"


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def read_results(out: dict[str, Any], metric: EvalMetric, where: str) -> TaskResult:
    """A TaskResult from what ``simple_evaluate`` returned (pure)."""
    assert metric.task is not None
    results: dict[str, dict[str, Any]] = out["results"]
    top = results.get(metric.task)
    leaves = [name for name in out["samples"] if name in results]
    if top is None and len(leaves) == 1:
        top = results[leaves[0]]
    reported = [
        _split_key(k)
        for k, v in (top or results[leaves[0]]).items()
        if "," in k and "_stderr" not in k and _number(v) is not None
    ]
    if not reported:
        raise BenchmarkError(f"{where}.task: '{metric.task}' reported no numeric metric")
    if metric.lm_eval_metric is not None:
        chosen = [r for r in reported if r[0] == metric.lm_eval_metric]
        if not chosen:
            names = ", ".join(sorted({r[0] for r in reported}))
            raise BenchmarkError(
                f"{where}.lmEvalMetric: task '{metric.task}' reports {names}, not "
                f"'{metric.lm_eval_metric}'"
            )
        name, filter_name = chosen[0]
    else:
        name, filter_name = reported[0]
    key = f"{name},{filter_name}"
    higher = out.get("higher_is_better", {})
    higher_is_better = bool(
        next((h[name] for h in higher.values() if name in h), "perplexity" not in name)
    )
    aggregation = (
        "bits_per_byte"
        if name == "bits_per_byte"
        else "perplexity"
        if "perplexity" in name
        else "mean"
    )
    ids: list[str] = []
    rows: list[Any] = []
    samples: list[dict[str, Any]] = []
    for leaf, leaf_samples in out["samples"].items():
        for sample in leaf_samples:
            if sample.get("filter", "none") != filter_name or name not in sample:
                continue
            score = sample[name]
            if aggregation == "mean":
                row: Any = float(score)
            else:
                loglikelihood, weight = score
                row = [-float(loglikelihood), float(weight)]
            ids.append(f"{leaf}/{sample['doc_id']}")
            rows.append(row)
            samples.append(
                {
                    "id": ids[-1],
                    "doc": sample.get("doc"),
                    "arguments": sample.get("arguments"),
                    "resps": sample.get("resps"),
                    "response": sample.get("filtered_resps"),
                    "target": sample.get("target"),
                    name: score,
                }
            )
    categories = {}
    for task_name, values in results.items():
        if task_name == metric.task or key not in values:
            continue
        categories[values.get("alias", task_name).strip(" -")] = {
            "task": task_name,
            "value": _number(values[key]),
            "stderr": _number(values.get(f"{name}_stderr,{filter_name}")),
            "n": int(out.get("n-samples", {}).get(task_name, {}).get("effective", 0)) or None,
        }
    scope = top if top is not None and key in top else results[leaves[0]]
    return TaskResult(
        task=metric.task,
        metric=name,
        filter=filter_name,
        value=float(scope[key]),
        stderr=_number(scope.get(f"{name}_stderr,{filter_name}")),
        aggregation=aggregation,
        ids=ids,
        rows=rows,
        categories=categories if len(categories) > 1 else {},
        samples=samples,
        higher_is_better=higher_is_better,
        n=len(rows),
    )
