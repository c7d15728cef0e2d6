"""Race tests for checkpoint fencing (docs/checkpoints.md, Fencing).

A stale writer is paused at one point of its work (an injected hook that blocks), a newer
attempt registers, saves and prunes meanwhile, then the stale writer goes on (and saves once
more, at a higher step). Run for every point the stale writer passes, one race per point. The
stale writer's early stale-attempt checks are switched off: fencing must hold without them.

A breach is any of: the reader's latest is not the newer attempt's newest save; a checkpoint
the newer attempt still keeps is missing or its bytes changed; the next attempt would not
resume from the newer attempt's newest save.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_trainer.training.checkpoints import CheckpointError, Hook, no_hook
from tests.storage.fake_checkpoints import differences, write_fake_checkpoint

KEEP_LAST = 2
PAUSE_LIMIT_SECONDS = 60

StoreFactory = Callable[[str, Hook], Any]
"""(location, hook) -> a store of the backend under test."""


class Pauser:
    """Blocks the calling thread at its ``pause_at``-th point until released; counts points.
    A run of the same point (the chunks of one file, the files of one deletion) counts once:
    pausing inside it finds the same state as pausing at its start."""

    def __init__(self, pause_at: int | None = None) -> None:
        self.pause_at = pause_at
        self.points: list[str] = []
        self.paused = threading.Event()
        self.release = threading.Event()

    def __call__(self, point: str) -> None:
        if self.points and self.points[-1] == point:
            return
        self.points.append(point)
        if len(self.points) == self.pause_at:
            self.paused.set()
            self.release.wait(PAUSE_LIMIT_SECONDS)


def without_stale_checks(store: Any) -> Any:
    """The store with its early stale-attempt checks switched off (safety must not need them)."""
    store.check_attempt = lambda attempt: None
    return store


class Saver:
    def __init__(self, scratch: Path, seed: int) -> None:
        self.scratch = scratch
        self.seed = seed
        self.count = 0

    def save(self, store: Any, step: int, attempt: int) -> Any:
        self.count += 1
        staging = self.scratch / f"staging-{self.count}"
        write_fake_checkpoint(staging, self.seed, attempt, step, small=True)
        return store.publish(staging, step, attempt)


@dataclass
class Race:
    """One scenario: what the stale writer does (from a given state) while it may be paused."""

    name: str
    setup: Callable[[Any, Saver], None]
    stale_attempt: int
    stale_work: Callable[[Any, Saver], None]
    newer_attempt: int


def _setup_one_save(store: Any, saver: Saver) -> None:
    store.register_attempt(1)
    saver.save(store, 10, 1)


def _stale_saves(store: Any, saver: Saver) -> None:
    saver.save(store, 20, 1)
    saver.save(store, 30, 1)


def _stale_registers_and_saves(store: Any, saver: Saver) -> None:
    store.register_attempt(2)
    saver.save(store, 40, 2)


RACES = (
    Race("stale attempt saving and pruning", _setup_one_save, 1, _stale_saves, 2),
    Race("stale attempt registering", _setup_one_save, 2, _stale_registers_and_saves, 3),
)


@dataclass
class RaceResult:
    race: str
    points: int = 0
    runs: int = 0
    breaches: list[str] = field(default_factory=list)


def count_points(race: Race, make_store: StoreFactory, location: str, scratch: Path) -> int:
    saver = Saver(scratch, seed=7)
    race.setup(make_store(location, no_hook), saver)
    pauser = Pauser()
    race.stale_work(without_stale_checks(make_store(location, pauser)), saver)
    return len(pauser.points)


def run_race(
    race: Race, make_store: StoreFactory, location: str, scratch: Path, pause_at: int
) -> list[str]:
    """One race, the stale writer paused at its ``pause_at``-th point; the breaches."""
    saver = Saver(scratch, seed=pause_at)
    race.setup(make_store(location, no_hook), saver)
    pauser = Pauser(pause_at)
    stale = without_stale_checks(make_store(location, pauser))
    failure: list[BaseException] = []

    def stale_writer() -> None:
        try:
            race.stale_work(stale, saver)
        except Exception as err:  # a stale writer may crash on what the newer one removed
            failure.append(err)

    thread = threading.Thread(target=stale_writer, daemon=True)
    thread.start()
    while not pauser.paused.wait(0.05):
        if not thread.is_alive():
            return [f"stale writer finished before point {pause_at}"]
    newer = make_store(location, no_hook)
    base = newer.register_attempt(race.newer_attempt)
    start = base.step if base is not None else 0
    # Lower steps than the stale writer reaches: a higher step must not outrank a newer attempt.
    kept = [saver.save(newer, start + k, race.newer_attempt) for k in (1, 2)]
    pauser.release.set()
    thread.join(PAUSE_LIMIT_SECONDS)
    with contextlib.suppress(Exception):  # allowed to fail, never to harm
        saver.save(stale, 1000, race.stale_attempt)  # later still, and far ahead
    return _breaches(make_store, location, kept, race.newer_attempt)


def _breaches(make_store: StoreFactory, location: str, kept: list[Any], newer: int) -> list[str]:
    found = []
    reader = make_store(location, no_hook)
    latest = reader.latest()
    newest = kept[-1]
    if latest is None or latest.name != newest.name:
        found.append(f"latest is {latest.name if latest else None}, not {newest.name}")
    for checkpoint in kept[-KEEP_LAST:]:
        try:
            problems = reader.verify(reader.checkpoint(checkpoint.name))
            problems += differences(
                reader.local_copy(reader.checkpoint(checkpoint.name)), checkpoint.step
            )
        except CheckpointError as err:
            problems = [str(err)]
        if problems:
            found.append(f"{checkpoint.name} hidden or changed: {problems}")
    nxt = make_store(location, no_hook).register_attempt(newer + 1)
    if nxt is None or nxt.adopted_from != newest.name:
        found.append(f"attempt {newer + 1} resumes from {nxt.adopted_from if nxt else None}")
    return found


def run_all(make_store: StoreFactory, root: str, scratch: Path) -> list[RaceResult]:
    """Every race at every point of its stale writer, each on a fresh location."""
    results = []
    for index, race in enumerate(RACES):
        result = RaceResult(race.name)
        result.points = count_points(race, make_store, f"{root}/count-{index}", scratch / "count")
        for point in range(1, result.points + 1):
            location = f"{root}/race-{index}-{point}"
            breaches = run_race(
                race, make_store, location, scratch / location.split("/")[-1], point
            )
            result.runs += 1
            result.breaches += [f"pause at point {point}: {b}" for b in breaches]
        results.append(result)
    return results
