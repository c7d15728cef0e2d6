"""Live A/B decisions as pure functions: which arm answers a user, the arms' feedback rates and
their differences with intervals, and the guard that stops a significantly worse arm.

- **Assignment** is weighted rendezvous hashing: each arm scores ``-ln(u) / weight`` with ``u``
  a hash of (experiment, user, arm) in (0, 1), and the lowest score answers. A user always gets
  the same arm; arm *i* gets a share ``weight_i / sum(weights)`` of users; and when an arm is
  stopped only its own users move (to the arm that would have been their second choice).
- **Rates** are the share of thumbs up among an arm's thumbs, with a Wilson interval; the
  **difference** of two arms' rates has Newcombe's hybrid score interval (his method 10), which
  keeps its coverage at small counts and near 0 or 1 where the Wald interval does not.
- **The guard** stops an arm when the whole interval of its rate minus the best other running
  arm's rate is below zero, once both have ``min_feedback`` thumbs; the last running arm is never
  stopped. The guard looks after every feedback, so its confidence is set higher than the
  reported 95% (0.99 by default) to keep the chance of stopping a good arm by repeated looking
  small.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from kubetune_trainer.evaluation.statistics import wilson_interval


class AbError(ValueError):
    """Bad input to the A/B functions; the message names the field."""


@dataclass(frozen=True)
class ArmShare:
    name: str
    weight: float


def _unit_hash(*parts: str) -> float:
    """A number in (0, 1) from the parts' SHA-256 (never exactly 0, so its log is finite)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2**64


def assign_arm(experiment: str, user: str, arms: Sequence[ArmShare]) -> str:
    """The arm that answers ``user`` among the running ``arms`` (deterministic, sticky)."""
    if not arms:
        raise AbError("arms: no running arm to route to")
    for n, arm in enumerate(arms):
        if not arm.weight > 0:
            raise AbError(f"arms[{n}].weight: must be positive (got {arm.weight})")
    return min(arms, key=lambda a: -math.log(_unit_hash(experiment, user, a.name)) / a.weight).name


def assign_pair(experiment: str, user: str, arms: Sequence[ArmShare]) -> tuple[str, str]:
    """Two different arms for a side-by-side answer: the user's arm, then their second choice.
    Which is shown first is a fair coin per user."""
    if len(arms) < 2:
        raise AbError("arms: a side-by-side answer needs two running arms")
    first = assign_arm(experiment, user, arms)
    second = assign_arm(experiment, user, [a for a in arms if a.name != first])
    if _unit_hash(experiment, user, "order") < 0.5:
        return first, second
    return second, first


@dataclass(frozen=True)
class Rate:
    up: int
    down: int
    value: float | None
    low: float | None
    high: float | None

    @property
    def n(self) -> int:
        return self.up + self.down


def rate(up: int, down: int, confidence: float = 0.95) -> Rate:
    n = up + down
    if n == 0:
        return Rate(up, down, None, None, None)
    low, high = wilson_interval(up, n, confidence)
    return Rate(up, down, up / n, low, high)


@dataclass(frozen=True)
class Difference:
    value: float
    low: float
    high: float
    confidence: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def difference(first: Rate, second: Rate, confidence: float = 0.95) -> Difference | None:
    """``first`` minus ``second`` with Newcombe's hybrid score interval; None when either arm
    has no feedback."""
    if first.n == 0 or second.n == 0:
        return None
    p1, p2 = first.up / first.n, second.up / second.n
    l1, u1 = wilson_interval(first.up, first.n, confidence)
    l2, u2 = wilson_interval(second.up, second.n, confidence)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Difference(d, low, high, confidence)


@dataclass(frozen=True)
class ArmFeedback:
    name: str
    up: int
    down: int
    running: bool


def guard(arms: Sequence[ArmFeedback], *, confidence: float, min_feedback: int) -> dict[str, str]:
    """The running arms to stop, each with the reason shown to the admin."""
    if not 0 < confidence < 1:
        raise AbError(f"guard_confidence: between 0 and 1 (got {confidence})")
    running = [a for a in arms if a.running]
    ready = [a for a in running if a.up + a.down >= min_feedback]
    stops: dict[str, str] = {}
    for arm in ready:
        others = [o for o in ready if o.name != arm.name]
        if not others:
            continue
        best = max(others, key=lambda o: (o.up / (o.up + o.down), o.name))
        found = difference(rate(arm.up, arm.down), rate(best.up, best.down), confidence)
        if found is not None and found.high < 0:
            stops[arm.name] = (
                f"thumbs-up rate {arm.up / (arm.up + arm.down):.3f} "
                f"({arm.up}/{arm.up + arm.down}) is below {best.name}'s "
                f"{best.up / (best.up + best.down):.3f} ({best.up}/{best.up + best.down}): "
                f"difference {found.value:+.3f} [{found.low:+.3f}, {found.high:+.3f}] at "
                f"{confidence:.0%}"
            )
    if len(stops) == len(running):  # never stop every arm: keep the best of them
        keep = max(running, key=lambda a: (a.up / max(1, a.up + a.down), a.name))
        stops.pop(keep.name, None)
    return stops
