"""Which item a labeler gets next: a pure decision over the campaign's state.

- Regular items are filled breadth-first: the labeler gets one of the items with the fewest
  votes plus open assignments (those handed out and not yet voted on, within their lease), and
  only items below the campaign's overlap (labels per item). So every item reaches its overlap
  before any item gets more, and an item is never handed to more labelers than it needs.
- Gold items come at a steady rate: after every ``gold_every`` regular votes, a gold item the
  labeler has not seen yet. Every labeler may see every gold item; they are not part of the
  overlap.
- An arena campaign that samples pairs adaptively names the items of the pair it drew
  (``prefer``); the labeler gets one of those when any is open, else the usual choice.
- Ties are broken by a per-labeler pseudo-random key, so labelers see items in different orders
  and the choice is reproducible (no global random state).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """An item this labeler has neither voted on nor skipped."""

    item_id: int
    is_gold: bool
    filled: int
    """Votes plus open assignments of other labelers."""


@dataclass(frozen=True)
class LabelerProgress:
    regular_votes: int
    gold_votes: int


def order_key(seed: int, labeler_id: int, item_id: int) -> int:
    digest = hashlib.sha256(f"{seed}:{labeler_id}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def wants_gold(progress: LabelerProgress, gold_every: int) -> bool:
    return gold_every > 0 and progress.regular_votes >= (progress.gold_votes + 1) * gold_every


def next_item(
    candidates: Sequence[Candidate],
    progress: LabelerProgress,
    *,
    overlap: int,
    gold_every: int,
    seed: int,
    labeler_id: int,
    prefer: Collection[int] = (),
) -> int | None:
    """The item to hand out, or None when this labeler has nothing left to do."""

    def key(c: Candidate) -> int:
        return order_key(seed, labeler_id, c.item_id)

    gold = [c for c in candidates if c.is_gold]
    regular = [c for c in candidates if not c.is_gold and c.filled < overlap]
    if gold and wants_gold(progress, gold_every):
        return min(gold, key=key).item_id
    preferred = [c for c in regular if c.item_id in prefer]
    if preferred:
        return min(preferred, key=lambda c: (c.filled, key(c))).item_id
    if regular:
        return min(regular, key=lambda c: (c.filled, key(c))).item_id
    return None


def draw_number(seed: int, labeler_id: int, votes_cast: int) -> float:
    """A uniform number in [0, 1) for a labeler's next draw, reproducible from the seed."""
    return order_key(seed, labeler_id, -1 - votes_cast) / 2**64
