"""Curriculum order: the pacing's closed forms, every step drawn from the open share, the same
order on every rank and after a resume (through accelerate's own sharding and skipping)."""

from __future__ import annotations

import math

import pytest

from kubetune_trainer.plan import CurriculumSpec
from kubetune_trainer.training.curriculum import (
    CurriculumSampler,
    curriculum_order,
    open_share,
    rank_rows,
    stage_labels,
    total_steps,
)

pytestmark = pytest.mark.unit


def linear(start: float = 0.2, full_at: float = 0.5) -> CurriculumSpec:
    return CurriculumSpec(difficulty="length", pacing="linear", start_share=start, full_at=full_at)


def staged(stages: int = 4, full_at: float = 0.8) -> CurriculumSpec:
    return CurriculumSpec(difficulty="length", pacing="stages", stages=stages, full_at=full_at)


def test_linear_share_grows_from_start_to_one_at_full_at() -> None:
    spec = linear(start=0.2, full_at=0.5)
    assert open_share(0, 100, spec) == pytest.approx(0.2)
    assert open_share(25, 100, spec) == pytest.approx(0.2 + 0.8 * 0.5)
    assert open_share(49, 100, spec) == pytest.approx(0.2 + 0.8 * 49 / 50)
    assert open_share(50, 100, spec) == 1.0
    assert open_share(99, 100, spec) == 1.0


def test_stages_open_one_part_per_interval() -> None:
    spec = staged(stages=4, full_at=0.8)  # intervals of 20 steps out of 100
    shares = [open_share(step, 100, spec) for step in range(100)]
    assert shares[0] == shares[19] == 0.25
    assert shares[20] == shares[39] == 0.5
    assert shares[40] == 0.75 and shares[60] == 1.0 and shares[99] == 1.0


def test_every_step_draws_from_the_open_easiest_rows() -> None:
    difficulties = [float(i % 50) for i in range(200)]  # four rows of each difficulty
    spec = linear(start=0.25, full_at=0.5)
    steps, per_step = 40, 16
    order = curriculum_order(difficulties, spec, total_steps=steps, rows_per_step=per_step, seed=3)
    assert len(order) == steps * per_step
    ranked = rank_rows(difficulties, seed=3)
    position = {row: p for p, row in enumerate(ranked)}
    for step in range(steps):
        rows = order[step * per_step : (step + 1) * per_step]
        open_rows = math.ceil(open_share(step, steps, spec) * len(difficulties))
        assert max(position[r] for r in rows) < open_rows, step
        assert len(set(rows)) == per_step  # no row twice within a step
    first = order[:per_step]
    assert max(difficulties[r] for r in first) <= 12  # the easiest quarter: difficulties 0..12
    assert {difficulties[r] for r in order[-10 * per_step :]} > {45.0, 49.0}


def test_staged_pool_follows_stage_labels_of_packed_rows() -> None:
    # Packed rows carry their stage as difficulty; stage sizes need not be equal.
    labels = [0] * 3 + [1] * 10 + [2] * 5
    spec = staged(stages=3, full_at=0.6)
    order = curriculum_order(
        [float(s) for s in labels],
        spec,
        total_steps=10,
        rows_per_step=4,
        seed=1,
        stages=labels,
    )
    by_step = [order[i * 4 : (i + 1) * 4] for i in range(10)]
    assert all(labels[r] == 0 for step in by_step[:2] for r in step)
    assert all(labels[r] <= 1 for step in by_step[:4] for r in step)
    assert any(labels[r] == 2 for step in by_step[4:] for r in step)
    # Three rows open but four needed: all three, once each, plus one drawn again.
    assert sorted(set(by_step[0])) == [0, 1, 2]


def test_order_is_a_pure_function_of_its_inputs() -> None:
    difficulties = [float(i % 7) for i in range(70)]
    one = curriculum_order(difficulties, linear(), total_steps=12, rows_per_step=8, seed=5)
    two = curriculum_order(difficulties, linear(), total_steps=12, rows_per_step=8, seed=5)
    other = curriculum_order(difficulties, linear(), total_steps=12, rows_per_step=8, seed=6)
    assert one == two and one != other


def test_stage_labels_cut_the_ranking_into_equal_parts() -> None:
    difficulties = [5.0, 1.0, 3.0, 2.0, 4.0, 0.0]
    assert stage_labels(difficulties, 3, seed=0) == [2, 0, 1, 1, 2, 0]


def test_total_steps() -> None:
    assert total_steps(30, 4.0, 1000, 32) == 30
    assert total_steps(-1, 2.0, 1000, 32) == math.ceil(2000 / 32)
    assert total_steps(-1, 0.01, 10, 32) == 1


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_ranks_share_each_step_and_a_resume_skips_exactly_the_trained_batches(
    workers: int,
) -> None:
    """Through accelerate's BatchSamplerShard (what the HF Trainer's prepare wraps a DataLoader
    in) and skip_first_batches (what it resumes with)."""
    from accelerate.data_loader import BatchSamplerShard, skip_first_batches
    from torch.utils.data import BatchSampler, DataLoader

    per_device, accumulation, steps = 4, 2, 9
    per_step = per_device * accumulation * workers
    difficulties = [float(i % 13) for i in range(300)]
    order = curriculum_order(
        difficulties, linear(), total_steps=steps, rows_per_step=per_step, seed=2
    )

    def rank_batches(rank: int) -> list[list[int]]:
        batches = BatchSampler(CurriculumSampler(order), per_device, drop_last=False)
        shard = BatchSamplerShard(batches, num_processes=workers, process_index=rank)
        return [list(b) for b in shard]

    per_rank = [rank_batches(rank) for rank in range(workers)]
    for step in range(steps):
        micro = slice(step * accumulation, (step + 1) * accumulation)
        fed = [row for rank in range(workers) for batch in per_rank[rank][micro] for row in batch]
        assert sorted(fed) == sorted(order[step * per_step : (step + 1) * per_step])

    # A run stopped after 4 steps resumes by skipping 4 × accumulation batches on each rank.
    done = 4 * accumulation
    for rank in range(workers):
        loader = DataLoader(
            list(range(len(difficulties))),
            batch_sampler=BatchSamplerShard(
                BatchSampler(CurriculumSampler(order), per_device, drop_last=False),
                num_processes=workers,
                process_index=rank,
            ),
        )
        resumed = [b.tolist() for b in skip_first_batches(loader, done)]
        assert resumed == per_rank[rank][done:]
