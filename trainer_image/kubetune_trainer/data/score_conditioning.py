"""Score-conditioned SFT (Decision-Transformer style): a row's score becomes a control prefix
of its first user message, and the trained model's chat template keeps the prefix.

The prefix lives in the chat template, not in the rows: the SFT recipe wraps the template with
:func:`conditioned_template` and gives each row ``chat_template_kwargs = {"score": s}`` (TRL
passes them to the template). The wrapped template reads the variable ``score`` and, when it is
not given, uses the highest score seen in training; so every consumer of the saved tokenizer —
``kubetune generate``, ``kubetune serve``, the eval recipe, any ``apply_chat_template`` call —
asks for the highest score by default, and passes ``score=X`` to ask for another.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from kubetune_trainer.data.errors import DataError
from kubetune_trainer.plan import ScoreConditioningSpec

MARK = "{#- kubetune score conditioning -#}"
"""First line of a conditioned template (how it is recognised)."""


def control_prefix(spec: ScoreConditioningSpec, score: float) -> str:
    """The prefix for ``score``, as the conditioned template renders it."""
    return spec.prefix.replace("{score}", f"{score:.{spec.decimals}f}")


def _literal(text: str) -> str:
    """``text`` as a Jinja string literal (Python escapes, which Jinja's lexer decodes)."""
    return json.dumps(text)


def conditioned_template(template: str, spec: ScoreConditioningSpec, default_score: float) -> str:
    """``template`` with the control prefix added to the first user message; ``score`` (a
    template variable) defaults to ``default_score``."""
    before, after = spec.prefix.split("{score}")
    number_format = _literal(f"%.{spec.decimals}f")
    preamble = (
        MARK
        + "{%- if score is not defined or score is none -%}"
        + f"{{%- set score = {default_score!r} -%}}"
        + "{%- endif -%}"
        + f"{{%- set kubetune_control = {_literal(before)}"
        + f" + ({number_format} | format(score | float)) + {_literal(after)} -%}}"
        + "{%- set kubetune = namespace(done=false, messages=[]) -%}"
        + "{%- for message in messages -%}"
        + "{%- if not kubetune.done and message['role'] == 'user' -%}"
        + "{%- set kubetune.messages = kubetune.messages + [{'role': 'user', "
        + "'content': kubetune_control + message['content']}] -%}"
        + "{%- set kubetune.done = true -%}"
        + "{%- else -%}"
        + "{%- set kubetune.messages = kubetune.messages + [message] -%}"
        + "{%- endif -%}"
        + "{%- endfor -%}"
        + "{%- set messages = kubetune.messages -%}"
    )
    return preamble + template


def is_conditioned(template: str | None) -> bool:
    """Whether a chat template asks for a score (made by :func:`conditioned_template`)."""
    return bool(template) and str(template).startswith(MARK)


def default_score(scores: Sequence[float]) -> float:
    """The score asked for when none is given: the highest in the training data."""
    if not scores:
        raise DataError("score conditioning: no training row has a score")
    return max(scores)


def with_score_kwargs(row: dict[str, Any]) -> dict[str, Any]:
    """A training row that renders its own score (``datasets.Dataset.map`` function)."""
    if "text" in row and row.get("text") is not None:
        raise DataError(
            "spec.training.scoreConditioning: text rows have no chat template to carry the "
            "score; use conversational data"
        )
    return {"chat_template_kwargs": {"score": float(row["score"])}}
