"""Curriculum learning: which rows each optimizer step trains on, easy first.

The whole run's row order is decided before the first step, from the rows' difficulties, the
pacing (``spec.training.curriculum``), the number of steps, the rows per step and the seed:

1. Rows are ranked from easiest to hardest (lower difficulty first; ties in a seeded random
   order) and cut into ``stages`` equal parts by rank; with packing, the rows of one part are
   packed together and a packed row keeps its part as its difficulty.
2. At step s of T the open share is, for pacing linear,
   ``startShare + (1 - startShare) · s / (fullAt · T)`` (1 from ``fullAt · T`` on); for pacing
   stages, parts ``0 … k-1`` are open with ``k = min(stages, ⌊s / (fullAt · T) · stages⌋ + 1)``.
   Linear opens the easiest ``⌈share · n⌉`` rows (at least one).
3. Step s draws its rows, without replacement within the step, from the open rows with a
   generator seeded by (seed, s); when fewer rows are open than the step needs, every open row
   is taken as many whole times as fit and a sample fills the rest.

The order is a pure function of those inputs, so every rank computes the same one (accelerate
gives rank r the per-device batches r, r + W, …, which keeps one step's rows within that step's
slice) and a resumed run, which skips the batches already trained, sees exactly the rows an
uninterrupted run would. :class:`CurriculumSampler` feeds the order to the HF Trainer and
:class:`CurriculumMixin` puts it in place of the Trainer's shuffling sampler.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

from kubetune_trainer.plan import CurriculumSpec

log = logging.getLogger("kubetune.trainer")

DIFFICULTY = "curriculum_difficulty"
"""Dataset column with a row's difficulty (lower is easier)."""
STAGE = "curriculum_stage"
"""Dataset column with a row's stage (its part of the ranking, 0 easiest)."""


def rank_rows(difficulties: Sequence[float], seed: int) -> list[int]:
    """Row indices from easiest to hardest; equal difficulties in a seeded random order."""
    tie_break = list(range(len(difficulties)))
    random.Random(seed).shuffle(tie_break)
    return sorted(range(len(difficulties)), key=lambda i: (difficulties[i], tie_break[i]))


def stage_labels(difficulties: Sequence[float], stages: int, seed: int) -> list[int]:
    """Each row's stage: its part (0 easiest) when the ranking is cut into equal parts."""
    ranked = rank_rows(difficulties, seed)
    labels = [0] * len(ranked)
    for position, index in enumerate(ranked):
        labels[index] = position * stages // len(ranked)
    return labels


def open_share(step: int, total_steps: int, spec: CurriculumSpec) -> float:
    """The share of the rows open at ``step`` (0-based) of ``total_steps`` (rule 2); for pacing
    stages, the share of stages."""
    progress = step / (spec.full_at * total_steps)
    if spec.pacing == "stages":
        return min(spec.stages, math.floor(progress * spec.stages) + 1) / spec.stages
    if progress >= 1:
        return 1.0
    return spec.start_share + (1 - spec.start_share) * progress


def _draw(pool: list[int], count: int, rng: random.Random) -> list[int]:
    repeats, rest = divmod(count, len(pool))
    return pool * repeats + rng.sample(pool, rest)


def curriculum_order(
    difficulties: Sequence[float],
    spec: CurriculumSpec,
    *,
    total_steps: int,
    rows_per_step: int,
    seed: int,
    stages: Sequence[int] | None = None,
) -> list[int]:
    """Row indices for the whole run, ``rows_per_step`` per step, step after step (rules 1–3).
    ``stages`` gives each row's stage (packed rows); default: cut by rank (rule 1)."""
    if not difficulties:
        raise ValueError("no rows to order")
    ranked = rank_rows(difficulties, seed)
    labels = list(stages) if stages is not None else stage_labels(difficulties, spec.stages, seed)
    # For pacing stages: how many of the ranked rows belong to stages below k, for each k.
    open_through = [sum(1 for i in ranked if labels[i] < k) for k in range(spec.stages + 1)]
    order: list[int] = []
    for step in range(total_steps):
        share = open_share(step, total_steps, spec)
        if spec.pacing == "stages":
            available = open_through[round(share * spec.stages)]
        else:
            available = math.ceil(share * len(ranked))
        pool = ranked[: max(1, available)]
        order.extend(_draw(pool, rows_per_step, random.Random(seed * 1_000_003 + step)))
    return order


def total_steps(max_steps: int, epochs: float, rows: int, rows_per_step: int) -> int:
    """Optimizer steps of a curriculum run: maxSteps, else as many steps as the epochs' rows
    fill (at least one)."""
    if max_steps > 0:
        return max_steps
    return max(1, math.ceil(epochs * rows / rows_per_step))


class CurriculumSampler:
    """A torch sampler yielding a fixed order (see :func:`curriculum_order`)."""

    def __init__(self, order: list[int]) -> None:
        self.order = order

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class CurriculumMixin:
    """For an HF Trainer subclass (``class T(CurriculumMixin, SFTTrainer)``): trains in
    curriculum order. The train dataset carries :data:`DIFFICULTY` and :data:`STAGE` columns;
    with packing, each stage is packed on its own (TRL's packing over the rows of one stage),
    so a packed row never mixes stages. Set ``curriculum`` before training."""

    curriculum: CurriculumSpec | None = None

    def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        packing = kwargs.get("packing", args[2] if len(args) > 2 else False)
        columns = getattr(dataset, "column_names", None) or []
        if not packing or STAGE not in columns:
            return super()._prepare_dataset(dataset, *args, **kwargs)  # type: ignore[misc]
        from datasets import concatenate_datasets

        parts = []
        for stage in sorted(set(dataset[STAGE])):
            rows = dataset.filter(lambda row, s=stage: row[STAGE] == s)
            packed = super()._prepare_dataset(rows, *args, **kwargs)  # type: ignore[misc]
            parts.append(packed.add_column(STAGE, [stage] * len(packed)))
        packed = concatenate_datasets(parts)
        log.info("event=curriculum_packed stages=%d rows=%d", len(parts), len(packed))
        return packed.add_column(DIFFICULTY, [float(s) for s in packed[STAGE]])

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        spec = self.curriculum
        if spec is None:
            return super()._get_train_sampler(train_dataset)  # type: ignore[misc]
        args = self.args  # type: ignore[attr-defined]
        dataset = self.train_dataset  # type: ignore[attr-defined]
        rows_per_step = (
            args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        )
        steps = total_steps(args.max_steps, args.num_train_epochs, len(dataset), rows_per_step)
        # The sampler is the whole run: one pass over it is every step there is.
        args.max_steps = steps
        order = curriculum_order(
            dataset[DIFFICULTY],
            spec,
            total_steps=steps,
            rows_per_step=rows_per_step,
            seed=args.seed,
            stages=dataset[STAGE],
        )
        log.info(
            "event=curriculum_order rows=%d steps=%d rows_per_step=%d pacing=%s",
            len(dataset),
            steps,
            rows_per_step,
            spec.pacing,
        )
        return CurriculumSampler(order)
