"""Reading the files a campaign is fed with (JSON lines, one object per line):

- responses: ``{"prompt": ..., "model": "name", "response": "text", "category": "opt"}`` — what an
  eval job saved, or any model's generations. The prompt is a string (one user turn) or a list of
  ``{"role", "content"}`` messages ending with a user turn.
- prompts (for generating through endpoints): ``{"prompt": ..., "category": "opt"}``.
- gold items: ``{"prompt": ..., "response_a": "...", "response_b": "...", "answer": "a"}`` with
  answer ``a``, ``b``, ``tie`` or ``both_bad``.

Parsing is all-or-nothing: the first bad rows are reported as ``FILE: row N (line L): field
'x': problem`` and nothing is stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from kubetune_studio.errors import Invalid
from kubetune_studio.store.schema import CHOICES

ROLES = ("system", "user", "assistant")
MAX_REPORTED = 5
MAX_TEXT = 100_000


Messages = list[dict[str, str]]
T = TypeVar("T")


@dataclass(frozen=True)
class ResponseRow:
    prompt: Messages
    model: str
    response: str
    category: str | None


@dataclass(frozen=True)
class PromptRow:
    prompt: Messages
    category: str | None


@dataclass(frozen=True)
class GoldRow:
    prompt: Messages
    response_a: str
    response_b: str
    answer: str
    category: str | None


class BadRow(ValueError):
    pass


def prompt_key(messages: Messages) -> str:
    """The identity of a prompt: SHA-256 of its canonical JSON."""
    canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def as_prompt(value: Any) -> Messages:
    if isinstance(value, str):
        if not value.strip():
            raise BadRow("field 'prompt': empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise BadRow("field 'prompt': expected a string or a non-empty list of messages")
    messages: Messages = []
    for number, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise BadRow(f"field 'prompt': message {number} is not an object")
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            raise BadRow(f"field 'prompt': message {number} has role {role!r}; use {ROLES}")
        if not isinstance(content, str):
            raise BadRow(f"field 'prompt': message {number} has no text content")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise BadRow("field 'prompt': the last message must be the user's")
    return messages


def _text(row: dict[str, Any], name: str, *, allow_empty: bool = False) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        raise BadRow(f"field '{name}': missing or not a string")
    if not allow_empty and not value.strip():
        raise BadRow(f"field '{name}': empty")
    if len(value) > MAX_TEXT:
        raise BadRow(f"field '{name}': longer than {MAX_TEXT} characters")
    return value


def _category(row: dict[str, Any]) -> str | None:
    value = row.get("category")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 200:
        raise BadRow("field 'category': not a string of at most 200 characters")
    return value or None


def response_row(row: dict[str, Any]) -> ResponseRow:
    return ResponseRow(
        prompt=as_prompt(row.get("prompt")),
        model=_text(row, "model"),
        response=_text(row, "response", allow_empty=True),
        category=_category(row),
    )


def prompt_row(row: dict[str, Any]) -> PromptRow:
    return PromptRow(prompt=as_prompt(row.get("prompt")), category=_category(row))


def gold_row(row: dict[str, Any]) -> GoldRow:
    answer = row.get("answer")
    if answer not in CHOICES:
        raise BadRow(f"field 'answer': {answer!r} is not one of {', '.join(CHOICES)}")
    return GoldRow(
        prompt=as_prompt(row.get("prompt")),
        response_a=_text(row, "response_a"),
        response_b=_text(row, "response_b"),
        answer=answer,
        category=_category(row),
    )


def parse_lines(
    lines: Iterable[str], origin: str, parse_row: Callable[[dict[str, Any]], T]
) -> list[T]:
    """Every row of a JSON-lines text parsed by ``parse_row``; :class:`Invalid` naming the first
    bad rows (file, row, line) when any row is bad."""
    rows: list[T] = []
    problems: list[str] = []
    index = 0
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            if not isinstance(value, dict):
                raise BadRow("not a JSON object")
            rows.append(parse_row(value))
        except (ValueError, BadRow) as exc:
            problem = exc if isinstance(exc, BadRow) else f"malformed JSON: {exc}"
            problems.append(f"{origin}: row {index} (line {line_number}): {problem}")
        index += 1
    if problems:
        more = len(problems) - MAX_REPORTED
        suffix = f" (and {more} more bad rows)" if more > 0 else ""
        raise Invalid("; ".join(problems[:MAX_REPORTED]) + suffix)
    if not rows:
        raise Invalid(f"{origin}: no rows")
    return rows
