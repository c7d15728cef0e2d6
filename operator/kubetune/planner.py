"""FineTuneJob → Plan: fill every default, resolve finetunejob:// references, derive scaling
and storage. Pure: the caller supplies whatever it learned from the cluster."""

from __future__ import annotations

from collections.abc import Callable

from kubetune.api import FineTuneJob, FineTuneJobSpec
from kubetune_trainer.plan import (
    ModelSpec,
    Plan,
    PlanStorage,
    RecipeSpec,
    Scaling,
    job_output_uri,
    join_uri,
    run_name,
)

# Storage root when neither the job nor the operator names one (local runs).
LOCAL_STORAGE = "./runs"


class UnresolvedDependency(LookupError):
    """A finetunejob:// model whose job has no output yet."""

    def __init__(self, path: str, job: str) -> None:
        super().__init__(f"{path}: job '{job}' has no output yet")
        self.path = path
        self.job = job


def storage_root(spec: FineTuneJobSpec, default_storage: str) -> str:
    return spec.checkpoint.storage or default_storage


def scaling_for(spec: FineTuneJobSpec) -> Scaling:
    """One Ray Train worker per GPU (or per pod on CPU-only pods)."""
    gpus = spec.resources.gpus_per_node
    nodes = spec.resources.nodes
    return Scaling(
        workers=nodes * max(gpus, 1),
        devices_per_worker=1 if gpus else 0,
        nodes=nodes,
        use_gpu=gpus > 0,
    )


def make_plan(
    job: FineTuneJob,
    *,
    attempt: int = 1,
    default_storage: str = LOCAL_STORAGE,
    resolve_job_output: Callable[[str], str | None] | None = None,
    scaling: Scaling | None = None,
) -> Plan:
    """The resolved plan for an attempt of a job.

    resolve_job_output maps a job name in the same namespace to its output URI (None when it
    has none yet, which raises UnresolvedDependency). Without a resolver, finetunejob://
    references are left for the trainer's caller to resolve.
    """
    spec = job.spec
    ref = job.job_ref()
    root = storage_root(spec, default_storage)
    recipe = spec.recipe()
    if resolve_job_output is not None:
        recipe = resolve_models(recipe, resolve_job_output)
    export_root = spec.export.destination if spec.export and spec.export.destination else None
    return Plan(
        job=ref,
        attempt=attempt,
        recipe=recipe,
        scaling=scaling or scaling_for(spec),
        storage=PlanStorage(
            root=root,
            run_name=run_name(ref),
            output_dir=job_output_uri(root, ref),
            export_dir=join_uri(export_root, run_name(ref))
            if export_root
            else join_uri(root, run_name(ref), "export"),
        ),
    )


def resolve_models(
    recipe: RecipeSpec, resolve_job_output: Callable[[str], str | None]
) -> RecipeSpec:
    """The recipe with every finetunejob://NAME model replaced by that job's output URI."""
    data = recipe.model_dump(by_alias=True, exclude_none=True)
    for path, model in recipe.model_sources():
        if not model.source.startswith("finetunejob://"):
            continue
        name = model.source.removeprefix("finetunejob://").strip("/")
        output = resolve_job_output(name)
        if output is None:
            raise UnresolvedDependency("spec." + ".".join(path), name)
        target = data
        for part in path:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target["source"] = output
    return RecipeSpec.model_validate(data)


def dependency_output(default_storage: str, other: FineTuneJob) -> str:
    """Where another job's final model will be, derived from its spec."""
    return job_output_uri(storage_root(other.spec, default_storage), other.job_ref())


__all__ = ["ModelSpec", "UnresolvedDependency", "dependency_output", "make_plan"]
