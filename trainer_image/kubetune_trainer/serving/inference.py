"""A loaded chat model answering chat prompts: what ``kubetune generate`` and ``kubetune serve``
run. Prompts are rendered with the model's chat template exactly as training and evaluation
render them (:func:`kubetune_trainer.models.load_tokenizer` picks the template)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from kubetune_trainer.data.score_conditioning import is_conditioned
from kubetune_trainer.errors import UserError
from kubetune_trainer.evaluation.measures import Completion, Messages, generate_completions
from kubetune_trainer.exit_codes import EXIT_USAGE
from kubetune_trainer.plan import ModelSpec


class ScoreNotSupported(ValueError):
    """A score was asked of a model not trained with score conditioning."""


def choose_device(device: str = "auto") -> str:
    """auto: cuda when a GPU is visible, else cpu; a device this machine lacks is a UserError."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UserError(
            f"unknown device '{device}'", hint="use auto, cpu, cuda or cuda:N", exit_code=EXIT_USAGE
        ) from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device '{device}': no CUDA device is visible on this machine",
            hint="use --device cpu (or auto)",
            exit_code=EXIT_USAGE,
        )
    return device


class ChatModel:
    """A causal LM and its tokenizer; one generation at a time (calls are serialised)."""

    def __init__(self, model: Any, tokenizer: Any, name: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self._lock = threading.Lock()

    @property
    def score_conditioned(self) -> bool:
        """Whether the model was trained with score conditioning (and so takes a score)."""
        return is_conditioned(self.tokenizer.chat_template)

    @classmethod
    def load(
        cls, source: str | ModelSpec, *, device: str = "auto", name: str | None = None
    ) -> ChatModel:
        from kubetune_trainer.models import load_model_and_tokenizer
        from kubetune_trainer.models.sources import model_spec

        spec = model_spec(source)
        model, tokenizer = load_model_and_tokenizer(spec)
        model.to(choose_device(device))
        model.eval()
        return cls(model, tokenizer, name or spec.source)

    def complete(
        self,
        prompts: Sequence[Messages],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        n: int = 1,
        seed: int | None = None,
        score: float | None = None,
    ) -> list[list[Completion]]:
        """``n`` completions per prompt; at temperature 0 the n greedy completions are one
        completion repeated (it is computed once). ``score``: the score a score-conditioned
        model is asked for (default: the highest it was trained on)."""
        if score is not None and not self.score_conditioned:
            raise ScoreNotSupported(
                f"model {self.name} was not trained with score conditioning; it takes no score"
            )
        samples = n if temperature > 0 else 1
        with self._lock:
            found = generate_completions(
                self.model,
                self.tokenizer,
                prompts,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                num_samples=samples,
                seed=seed,
                chat_template_kwargs=None if score is None else {"score": score},
            )
        return found if samples == n else [[c[0]] * n for c in found]
