"""Refusals the studio answers with: one line that names the field or the item, and an HTTP
status. The web layer turns each into ``{"error": message}`` (or the page's message box)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError


class StudioError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(StudioError):
    """Bad input: the message names the field (or the file and row)."""

    status = 422


class NotFound(StudioError):
    status = 404


class Forbidden(StudioError):
    status = 403


class Unauthenticated(StudioError):
    status = 401


class Conflict(StudioError):
    """The request contradicts the store's state (a second vote, a closed campaign)."""

    status = 409


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: Any) -> M:
    """``data`` as ``model``, or Invalid naming the first bad field in one line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        message = first["msg"].removeprefix("Value error, ")
        raise Invalid(f"{where}: {message}") from None
