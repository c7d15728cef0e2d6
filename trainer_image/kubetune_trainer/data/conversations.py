"""Conversations: validation, HH-RLHF text parsing, shared-prefix splitting of preference pairs.

A conversation is a list of ``{"role", "content"}`` turns: an optional system turn first, then
user and assistant turns alternating, starting with the user. Problems raise :class:`BadRow`
with the offending field, e.g. ``messages[2]: assistant turn is empty``.
"""

from __future__ import annotations

import re
from typing import Any

from kubetune_trainer.data.errors import BadRow

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def as_messages(value: Any, label: str) -> list[Message]:
    """``value`` as a list of {role, content} turns (other keys dropped), shape-checked only."""
    if not isinstance(value, list):
        raise BadRow(f"{label}: expected a list of messages, got {type(value).__name__}")
    out: list[Message] = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise BadRow(f"{label}[{i}]: expected a {{role, content}} object")
        role, content = turn.get("role"), turn.get("content")
        if not isinstance(role, str):
            raise BadRow(f"{label}[{i}]: missing 'role'")
        if not isinstance(content, str):
            raise BadRow(f"{label}[{i}]: missing 'content' (or not text)")
        out.append({"role": role, "content": content})
    return out


PLAN_ROLES = {"human": "user", "assistant": "assistant", "system": "system"}
"""Roles of the conversation format (human/assistant, a system turn allowed first) and the
roles they become."""


def from_plan_roles(turns: list[Message], label: str) -> list[Message]:
    """A conversation-format conversation (roles human/assistant) with kubetune's roles."""
    out: list[Message] = []
    for i, turn in enumerate(turns):
        role = PLAN_ROLES.get(turn["role"])
        if role is None:
            raise BadRow(f"{label}[{i}]: unknown role '{turn['role']}' (use human or assistant)")
        out.append({"role": role, "content": turn["content"]})
    return out


def check_turns(turns: list[Message], labels: list[str]) -> None:
    """Role order and non-empty content, with ``labels[i]`` naming turn i in messages."""
    expected = "user"
    for i, (turn, label) in enumerate(zip(turns, labels, strict=True)):
        role = turn["role"]
        if role not in ROLES:
            raise BadRow(f"{label}: unknown role '{role}' (use system, user or assistant)")
        if role == "system":
            if i != 0:
                raise BadRow(f"{label}: a system turn may only come first")
        elif role != expected:
            raise BadRow(f"{label}: expected a {expected} turn, got {role} (wrong role order)")
        else:
            expected = "assistant" if role == "user" else "user"
        if not turn["content"].strip():
            raise BadRow(f"{label}: {role} turn is empty")


def labels_for(label: str, count: int, start: int = 0) -> list[str]:
    return [f"{label}[{i}]" for i in range(start, start + count)]


def check_conversation(turns: list[Message], label: str, *, ends_with: str | None) -> None:
    """Validate one whole conversation; ``ends_with`` the role its last turn must have."""
    if not turns:
        raise BadRow(f"{label}: no turns")
    check_turns(turns, labels_for(label, len(turns)))
    if not any(t["role"] != "system" for t in turns):
        raise BadRow(f"{label}: only a system turn")
    if ends_with and turns[-1]["role"] != ends_with:
        raise BadRow(f"{label}: ends with a {turns[-1]['role']} turn; expected {ends_with}")


def parse_hh(text: Any, label: str) -> list[Message]:
    """HH-RLHF raw text (``\\n\\nHuman: … \\n\\nAssistant: …``, several turns) as messages."""
    if not isinstance(text, str):
        raise BadRow(f"{label}: expected HH text, got {type(text).__name__}")
    pieces = _HH_TURN.split(text)
    if len(pieces) < 3:
        raise BadRow(f"{label}: unparseable HH text: no 'Human:' / 'Assistant:' turns")
    if pieces[0].strip():
        raise BadRow(f"{label}: unparseable HH text: text before the first 'Human:' turn")
    turns: list[Message] = []
    for i in range(1, len(pieces), 2):
        speaker, content = pieces[i], pieces[i + 1].strip()
        role = "user" if speaker == "Human" else "assistant"
        turn_label = f"{label} turn {len(turns)}"
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise BadRow(
                f"{turn_label}: unparseable HH text: expected "
                f"{'Human' if expected == 'user' else 'Assistant'}:, got {speaker}:"
            )
        if not content:
            raise BadRow(f"{turn_label}: {role} turn is empty")
        turns.append({"role": role, "content": content})
    return turns


def split_shared_prefix(
    chosen: list[Message], rejected: list[Message], chosen_label: str, rejected_label: str
) -> tuple[list[Message], list[Message], list[Message]]:
    """(prompt, chosen tail, rejected tail) of two full conversations sharing a prompt.

    The prompt is the longest shared run of turns; both tails must start with the assistant turn
    that answers it.
    """
    shared = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        shared += 1
    if shared == len(chosen) and shared == len(rejected):
        raise BadRow(f"{chosen_label}: chosen and rejected are identical")
    if shared == 0 or all(t["role"] == "system" for t in chosen[:shared]):
        raise BadRow(f"{chosen_label}: chosen and rejected share no prompt")
    for tail, label in ((chosen[shared:], chosen_label), (rejected[shared:], rejected_label)):
        if not tail:
            raise BadRow(f"{label}: no response after the shared prompt")
        if tail[0]["role"] != "assistant":
            raise BadRow(
                f"{label}[{shared}]: chosen and rejected differ at a {tail[0]['role']} turn; "
                "they must share everything up to the assistant response"
            )
    return chosen[:shared], chosen[shared:], rejected[shared:]
