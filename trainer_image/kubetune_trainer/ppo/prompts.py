"""Which prompts each PPO step and rank get."""

from __future__ import annotations

import random
from typing import Any


class PromptFeed:
    """Which prompts each step and rank get: a seeded permutation per epoch, cut into global
    rollout batches, each split evenly over the ranks. The position is a pure function of the
    step, so a resumed run takes exactly the prompts the uninterrupted one would have."""

    def __init__(self, rows: Any, rollout_batch: int, seed: int, world: int, rank: int) -> None:
        self.rows = rows
        self.rollout_batch = rollout_batch
        self.seed = seed
        self.local = rollout_batch // world
        self.rank = rank
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.rows)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._orders = {epoch: order}
        return self._orders[epoch]

    def epoch_of(self, step: int) -> float:
        return step * self.rollout_batch / len(self.rows)

    def rows_for(self, step: int) -> list[dict[str, Any]]:
        start = step * self.rollout_batch + self.rank * self.local
        picked = []
        for position in range(start, start + self.local):
            epoch, offset = divmod(position, len(self.rows))
            picked.append(self.rows[self._order(epoch)[offset]])
        return picked
