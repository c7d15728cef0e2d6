"""Reward objectives at the command line: ``--objective-weight NAME=WEIGHT`` sets the weight of
a named reward source, and ``kubetune status`` shows each objective's latest value.

A reward source with a ``name`` (spec.ppo.rewards[] or spec.grpo.rewards[]) is an objective;
``--objective-weight fluency=0.3`` sets the ``weight`` of every source named ``fluency`` in the
jobs given, as if the file said so. A name that no job's rewards carry is refused, so a typo
cannot leave a weight silently unchanged.
"""

from __future__ import annotations

import argparse
import math
import re

from kubetune.api import FineTuneJob
from kubetune.manifest_yaml import Document
from kubetune_trainer.errors import UserError
from kubetune_trainer.exit_codes import EXIT_USAGE
from kubetune_trainer.plan import OBJECTIVE_NAME_PATTERN

_OBJECTIVE_NAME = re.compile(OBJECTIVE_NAME_PATTERN)
REWARD_SECTIONS = ("ppo", "grpo")


def objective_pairs(objectives: dict[str, str]) -> str:
    """``fluency 0.31  quality 0.44``: a status record's objectives on one line."""
    return "  ".join(f"{name} {value}" for name, value in objectives.items())


def parse_objective_weight(text: str) -> tuple[str, float]:
    """``NAME=WEIGHT`` as (name, weight); an argparse type."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not _OBJECTIVE_NAME.match(name):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not NAME=WEIGHT with NAME an objective name, e.g. fluency=0.3"
        )
    try:
        weight = float(value)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight):
        raise argparse.ArgumentTypeError(f"'{text}': the weight '{value}' is not a finite number")
    return name, weight


def objective_names(job: FineTuneJob) -> list[str]:
    """The objective names of a job's ppo/grpo rewards, in spec order."""
    names = []
    for section in REWARD_SECTIONS:
        options = getattr(job.spec, section)
        if options is not None:
            names += [r.name for r in options.rewards if r.name is not None]
    return names


def with_objective_weights(job: FineTuneJob, weights: dict[str, float]) -> FineTuneJob:
    """The job with the weight of each reward source named in ``weights`` replaced."""
    spec = job.spec
    for section in REWARD_SECTIONS:
        options = getattr(spec, section)
        if options is None:
            continue
        rewards = [
            r.model_copy(update={"weight": weights[r.name]}) if r.name in weights else r
            for r in options.rewards
        ]
        spec = spec.model_copy(update={section: options.model_copy(update={"rewards": rewards})})
    return job.model_copy(update={"spec": spec})


def apply_objective_weights(
    jobs: list[tuple[Document, FineTuneJob]], weights: list[tuple[str, float]]
) -> list[tuple[Document, FineTuneJob]]:
    """The jobs with ``--objective-weight`` applied; UserError for a name no job has."""
    if not weights:
        return jobs
    wanted = dict(weights)
    known = sorted({name for _, job in jobs for name in objective_names(job)})
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise UserError(
            f"--objective-weight: no reward source is named {', '.join(unknown)} "
            f"(objectives in these jobs: {', '.join(known) or 'none'})",
            hint="an objective is a reward source with a name, in spec.ppo.rewards[] or "
            "spec.grpo.rewards[]",
            exit_code=EXIT_USAGE,
        )
    return [(doc, with_objective_weights(job, wanted)) for doc, job in jobs]
