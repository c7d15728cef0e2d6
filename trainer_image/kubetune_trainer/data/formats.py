"""Turn one raw row of a given format into the row TRL expects for a kind of training.

Output rows (TRL's conversational formats):

========== ================================================================================
kind       row
========== ================================================================================
sft        ``{"messages": [...]}``; ``{"prompt": [...], "completion": [...]}`` for the
           prompt-completion format; ``{"text": "..."}`` for the text format
preference ``{"prompt": [...], "chosen": [assistant turns], "rejected": [assistant turns]}``
prompt     ``{"prompt": [...]}`` (ends with a user turn)
========== ================================================================================

plus ``answer`` (text) and ``score`` (number) when the row has them, for rewards and evals.

What each format can feed:

- messages: sft; prompt (the turns before the last assistant turn).
- prompt-completion: sft; prompt. A text prompt is one user turn, a text completion one
  assistant turn.
- text: sft only.
- preference: preference; sft (prompt + chosen); prompt. With a prompt column it is explicit;
  without one, chosen and rejected are whole conversations and their shared prefix is the prompt.
- prompt-only: prompt only.
- hh-rlhf: preference, sft (the chosen conversation), prompt. chosen/rejected hold HH text;
  for sft a row with only a text column is read as one HH conversation.
- conversation: sft; prompt. ``{"conversation": [{"role": "human"|"assistant", "content"}],
  "meta_eval_score": 4.5, "score_reason": "..."}``: roles human/assistant become user/assistant,
  meta_eval_score is the row's score and score_reason (text, optional) is kept as
  ``score_reason``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from kubetune_trainer.data.conversations import (
    Message,
    as_messages,
    check_conversation,
    check_turns,
    from_plan_roles,
    labels_for,
    parse_hh,
    split_shared_prefix,
)
from kubetune_trainer.data.errors import BadRow, DataError
from kubetune_trainer.plan import FORMAT_FEEDS, ColumnMapping

Kind = Literal["sft", "preference", "prompt"]

SUPPORTED = FORMAT_FEEDS
"""What each format can feed (the plan contract's table: the schema refuses a mismatch)."""
DEFAULT_SCORE_COLUMN = {"conversation": "meta_eval_score"}
"""The score column of a format when ColumnMapping.score is not set (else ``score``)."""


def check_supported(fmt: str, kind: Kind, uri: str) -> None:
    if kind not in SUPPORTED[fmt]:
        usable = ", ".join(f for f, kinds in SUPPORTED.items() if kind in kinds)
        raise DataError(
            f"{uri}: format {fmt} cannot feed {kind} training; formats for {kind}: {usable}"
        )


def _get(row: dict[str, Any], column: str) -> Any:
    if column not in row or row[column] is None:
        raise BadRow(f"missing field '{column}'")
    return row[column]


def _prompt_turns(value: Any, label: str) -> list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise BadRow(f"{label}: empty")
        return [{"role": "user", "content": value}]
    return as_messages(value, label)


def _response_turns(value: Any, label: str) -> list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise BadRow(f"{label}: assistant turn is empty")
        return [{"role": "assistant", "content": value}]
    turns = as_messages(value, label)
    if not turns:
        raise BadRow(f"{label}: no turns")
    return turns


def _check_pair(prompt: list[Message], response: list[Message], p_label: str, r_label: str) -> None:
    """Validate prompt + response as one conversation; the response starts with the assistant."""
    check_turns(
        prompt + response, labels_for(p_label, len(prompt)) + labels_for(r_label, len(response))
    )
    if not prompt or prompt[-1]["role"] != "user":
        raise BadRow(f"{p_label}: must end with a user turn")
    if response[-1]["role"] != "assistant":
        raise BadRow(f"{r_label}: must end with an assistant turn")


def _prompt_before_answer(turns: list[Message], label: str) -> list[Message]:
    last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
    prompt = turns[:last]
    if not prompt or prompt[-1]["role"] != "user":
        raise BadRow(f"{label}: no user turn before the last assistant turn")
    return prompt


def _preference(
    row: dict[str, Any], fmt: str, cols: ColumnMapping
) -> tuple[list[Message], list[Message], list[Message]]:
    """(prompt, chosen, rejected) of a preference or hh-rlhf row."""
    chosen_raw, rejected_raw = _get(row, cols.chosen), _get(row, cols.rejected)
    explicit = row.get(cols.prompt) is not None
    if fmt == "hh-rlhf":  # whole conversations as HH text; the shared prefix is the prompt
        chosen_full = parse_hh(chosen_raw, cols.chosen)
        rejected_full = parse_hh(rejected_raw, cols.rejected)
    elif explicit:
        prompt = _prompt_turns(row[cols.prompt], cols.prompt)
        chosen = _response_turns(chosen_raw, cols.chosen)
        rejected = _response_turns(rejected_raw, cols.rejected)
        _check_pair(prompt, chosen, cols.prompt, cols.chosen)
        _check_pair(prompt, rejected, cols.prompt, cols.rejected)
        if chosen == rejected:
            raise BadRow(f"{cols.chosen}: chosen and rejected are identical")
        return prompt, chosen, rejected
    else:
        if isinstance(chosen_raw, str):
            raise BadRow(
                f"{cols.chosen}: no '{cols.prompt}' column, so chosen and rejected must be whole "
                "conversations (lists of messages)"
            )
        chosen_full = as_messages(chosen_raw, cols.chosen)
        rejected_full = as_messages(rejected_raw, cols.rejected)
    check_conversation(chosen_full, cols.chosen, ends_with="assistant")
    check_conversation(rejected_full, cols.rejected, ends_with="assistant")
    return split_shared_prefix(chosen_full, rejected_full, cols.chosen, cols.rejected)


def score_column(fmt: str, cols: ColumnMapping) -> str:
    """The column a row's score is read from."""
    return cols.score or DEFAULT_SCORE_COLUMN.get(fmt, "score")


def number(value: Any, column: str) -> float:
    """A finite number from a row's column; BadRow naming the column otherwise."""
    try:
        parsed = float(value)
    except (TypeError, ValueError):
        raise BadRow(f"{column}: not a number: {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(parsed):
        raise BadRow(f"{column}: not a number: {value!r}")
    return parsed


def _extras(row: dict[str, Any], fmt: str, cols: ColumnMapping) -> dict[str, Any]:
    out: dict[str, Any] = {}
    answer = row.get(cols.answer)
    if answer is not None:
        out["answer"] = answer if isinstance(answer, str) else json.dumps(answer)
    column = score_column(fmt, cols)
    score = row.get(column)
    if score is not None:
        out["score"] = number(score, column)
    if fmt == "conversation":
        reason = row.get(cols.score_reason)
        if reason is not None and not isinstance(reason, str):
            raise BadRow(f"{cols.score_reason}: not text: {reason!r}")
        if reason is not None:
            out["score_reason"] = reason
    return out


def normalize(row: dict[str, Any], fmt: str, kind: Kind, cols: ColumnMapping) -> dict[str, Any]:
    """The TRL row for ``kind`` from one raw row of format ``fmt``; raises BadRow."""
    out: dict[str, Any]
    if fmt == "messages":
        turns = as_messages(_get(row, cols.messages), cols.messages)
        check_conversation(turns, cols.messages, ends_with="assistant")
        out = (
            {"messages": turns}
            if kind == "sft"
            else {"prompt": _prompt_before_answer(turns, cols.messages)}
        )
    elif fmt == "conversation":
        raw = as_messages(_get(row, cols.conversation), cols.conversation)
        turns = from_plan_roles(raw, cols.conversation)
        check_conversation(turns, cols.conversation, ends_with="assistant")
        out = (
            {"messages": turns}
            if kind == "sft"
            else {"prompt": _prompt_before_answer(turns, cols.conversation)}
        )
    elif fmt == "prompt-completion":
        prompt = _prompt_turns(_get(row, cols.prompt), cols.prompt)
        completion = _response_turns(_get(row, cols.completion), cols.completion)
        _check_pair(prompt, completion, cols.prompt, cols.completion)
        out = {"prompt": prompt, "completion": completion} if kind == "sft" else {"prompt": prompt}
    elif fmt == "text":
        text = _get(row, cols.text)
        if not isinstance(text, str) or not text.strip():
            raise BadRow(f"{cols.text}: empty or not text")
        out = {"text": text}
    elif fmt == "prompt-only":
        prompt = _prompt_turns(_get(row, cols.prompt), cols.prompt)
        check_conversation(prompt, cols.prompt, ends_with="user")
        out = {"prompt": prompt}
    elif fmt in ("preference", "hh-rlhf"):
        if fmt == "hh-rlhf" and kind == "sft" and row.get(cols.chosen) is None:
            turns = parse_hh(_get(row, cols.text), cols.text)
            check_conversation(turns, cols.text, ends_with="assistant")
            out = {"messages": turns}
        else:
            prompt, chosen, rejected = _preference(row, fmt, cols)
            if kind == "preference":
                out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            elif kind == "sft":
                out = {"messages": prompt + chosen}
            else:
                out = {"prompt": prompt}
    else:
        raise DataError(f"unknown format '{fmt}'")
    out.update(_extras(row, fmt, cols))
    return out


def shape(row: dict[str, Any]) -> str:
    """Which TRL row shape a normalized row has."""
    if "messages" in row:
        return "messages"
    if "completion" in row:
        return "prompt-completion"
    if "text" in row:
        return "text"
    if "chosen" in row:
        return "preference"
    return "prompt"
