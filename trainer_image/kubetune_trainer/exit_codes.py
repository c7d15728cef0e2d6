"""Exit codes of ``kubetune-train``: the contract between the trainer and the operator.

The operator's launchers turn these into Kubernetes outcomes (a Job's podFailurePolicy, see
``kubetune.builders``): a disruption is restarted without counting against
``spec.resume.maxRestarts``; an application failure counts. Values follow BSD ``sysexits.h`` so
they do not collide with signal-derived codes (128 + N) or Python's own (1 for an uncaught
exception, 2 for a usage error).
"""

from __future__ import annotations

EXIT_OK = 0
"""Training (or evaluation) finished."""

EXIT_FAILED = 1
"""An application failure: the recipe raised. Counts against resume.maxRestarts."""

EXIT_INVALID_PLAN = 78
"""The plan could not be read or is not valid for this trainer (sysexits EX_CONFIG). Retrying
the same plan cannot help; the operator may fail the job without restarting it."""

EXIT_PREEMPTED = 75
"""SIGTERM arrived (eviction, preemption, node drain; a first Ctrl-C in a local run), a
complete checkpoint was saved within the grace period, and the trainer stopped (sysexits
EX_TEMPFAIL). A disruption: the next attempt resumes from that checkpoint and it does not count
against resume.maxRestarts."""

EXIT_USAGE = 2
"""The command line itself is wrong (argparse's own code): an unknown option, a missing
argument."""

EXIT_BAD_DATA = 65
"""The training data cannot be used (sysexits EX_DATAERR): a malformed row while
spec.data.badRows is fail, a file that is missing, empty or has no usable rows, a format that
cannot feed the method. Final: retrying cannot help; the message names the file and row."""

EXIT_STALE_ATTEMPT = 76
"""A newer attempt of the same job has started; this one stopped without writing anything."""

EXIT_GATE_NOT_MET = 79
"""Export stage only: the spec's export gate metric did not reach its bound, so nothing was
exported. Not a failure of the job: the operator finishes it as Succeeded without artifacts and
says why in the condition."""

EXIT_INTERRUPTED = 130
"""Interactive runs only: a second Ctrl-C (SIGINT) stopped the trainer at once, without a
checkpoint (128 + SIGINT, as shells report it). The first Ctrl-C is handled as SIGTERM: a
checkpoint, then EXIT_PREEMPTED."""

DISRUPTION_EXIT_CODES = frozenset({EXIT_PREEMPTED})
"""Exit codes the operator treats as disruptions rather than application failures."""

FINAL_EXIT_CODES = frozenset({EXIT_BAD_DATA, EXIT_INVALID_PLAN})
"""Exit codes after which no new attempt can help: the operator fails the job at once."""

MEANINGS = {
    EXIT_OK: "ok",
    EXIT_FAILED: "failed",
    EXIT_USAGE: "usage",
    EXIT_BAD_DATA: "bad data",
    EXIT_PREEMPTED: "preempted",
    EXIT_STALE_ATTEMPT: "stale attempt",
    EXIT_INVALID_PLAN: "invalid plan",
    EXIT_GATE_NOT_MET: "export gate not met",
}
"""A few words for each exit code, as error lines print them: ``(exit 65: bad data)``."""


def exit_meaning(code: int) -> str:
    return MEANINGS.get(code, "failed")


__all__ = [
    "DISRUPTION_EXIT_CODES",
    "EXIT_BAD_DATA",
    "EXIT_FAILED",
    "EXIT_GATE_NOT_MET",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID_PLAN",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "EXIT_STALE_ATTEMPT",
    "EXIT_USAGE",
    "FINAL_EXIT_CODES",
    "MEANINGS",
    "exit_meaning",
]
