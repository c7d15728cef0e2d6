"""Errors the export stage reports to the user (and the exit code it leaves with)."""

from kubetune_trainer.errors import UserError
from kubetune_trainer.exit_codes import EXIT_INVALID_PLAN


class ExportError(UserError):
    """The model cannot be exported as asked; the message names the model and the reason."""


class UnsupportedArchitecture(ExportError):
    """The model's architecture has no converter for the requested format (exit 78: no retry
    can help)."""

    exit_code = EXIT_INVALID_PLAN


class VerificationFailed(ExportError):
    """An artifact was written but its independent loader did not reproduce the source."""
