"""Errors the export stage reports to the user (and the exit code it leaves with)."""


class ExportError(Exception):
    """The model cannot be exported as asked; the message names the model and the reason."""


class UnsupportedArchitecture(ExportError):
    """The model's architecture has no converter for the requested format."""


class VerificationFailed(ExportError):
    """An artifact was written but its independent loader did not reproduce the source."""
