"""Batched generation for the server: transformers' continuous batching
(``ContinuousBatchingManager``) over one loaded model.

Every request in flight advances by one token per step of one shared loop, and a long prompt is
prefilled in chunks between those steps, so a long request slows short ones a little but never
makes them wait for it. The engine adds what a server needs around it: a bound on the requests
admitted (the rest are refused at once), per-request greedy or sampled decoding (top-k 1 is
greedy; the manager samples for everyone), token streaming as an async iterator, cancellation.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from kubetune_trainer.data.score_conditioning import is_conditioned
from kubetune_trainer.evaluation.measures import Messages, eos_ids

log = logging.getLogger("kubetune.serve")


class Overloaded(RuntimeError):
    """Too many requests in flight: this one was not admitted."""


class GenerationFailed(RuntimeError):
    """The generation loop reported an error for this request."""


@dataclass(frozen=True)
class EngineSettings:
    max_requests: int = 32
    """Requests admitted at once (queued or generating); more are refused (Overloaded)."""
    max_batch_requests: int = 16
    """Requests one step of the loop advances together."""
    max_batch_tokens: int = 512
    """Tokens one step processes: long prompts are prefilled this many tokens at a time."""
    page_size: int = 64
    """KV-cache block size (tokens)."""


@dataclass
class Step:
    """The state of one generation after a step: all its tokens so far."""

    tokens: list[int]
    finished: bool


class Engine:
    """Owns the model's continuous-batching manager (its own thread) while started."""

    def __init__(self, model: Any, tokenizer: Any, settings: EngineSettings | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or EngineSettings()
        self.context_length = int(
            getattr(model.config, "max_position_embeddings", 0) or tokenizer.model_max_length
        )
        self.eos = sorted(eos_ids(model, tokenizer))
        self.vocab_size = int(model.config.vocab_size)
        self._manager: Any = None
        self._ids = itertools.count()
        self._in_flight = 0

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        s = self.settings
        # Sampling everywhere with per-request temperature and top-k: a request with top-k 1 is
        # greedy. The defaults below only make the manager create the two processors.
        generation = GenerationConfig(
            do_sample=True,
            temperature=0.5,
            top_k=self.vocab_size,
            eos_token_id=self.eos,
            pad_token_id=self.tokenizer.pad_token_id,
            max_new_tokens=self.context_length,
        )
        blocks_per_request = math.ceil(self.context_length / s.page_size)
        config = ContinuousBatchingConfig(
            page_size=s.page_size,
            num_blocks=blocks_per_request * s.max_batch_requests,
            max_batch_tokens=s.max_batch_tokens,
            max_requests_per_batch=s.max_batch_requests,
            per_request_processors=True,
            auto_switch_to_flash=False,
        )
        self._manager = self.model.init_continuous_batching(
            generation_config=generation, continuous_batching_config=config
        )
        self._manager.start()

    def stop(self) -> None:
        if self._manager is not None:
            self._manager.stop(block=True, timeout=30)
            self._manager = None

    @property
    def running(self) -> bool:
        return self._manager is not None and self._manager.is_running()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # ---------------------------------------------------------------- requests

    @property
    def score_conditioned(self) -> bool:
        """Whether the model was trained with score conditioning (and so takes a score)."""
        return is_conditioned(self.tokenizer.chat_template)

    def prompt_ids(self, messages: Messages, *, score: float | None = None) -> list[int]:
        """The prompt as the model sees it: its chat template with the generation prompt (as
        training and evaluation render it); ``score``: the score a score-conditioned model's
        template is given."""
        extra = {} if score is None else {"score": score}
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **extra
        )
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return list(ids)

    async def generate(
        self, prompt: list[int], *, max_new_tokens: int, temperature: float
    ) -> AsyncIterator[Step]:
        """The generation's tokens after each step, until it ends (EOS or max_new_tokens) or
        the caller stops iterating (the request is then cancelled)."""
        if self._manager is None:
            raise RuntimeError("the engine is not started")
        if self._in_flight >= self.settings.max_requests:
            raise Overloaded(f"{self._in_flight} requests in flight")
        self._in_flight += 1
        request_id = f"r{next(self._ids)}"
        updates: asyncio.Queue[Any] = asyncio.Queue()
        self._manager.register_result_handler(request_id, updates.put_nowait)
        sampling = (
            {"temperature": 1.0, "top_k": 1}
            if temperature == 0
            else {
                "temperature": float(temperature),
                "top_k": self.vocab_size,
            }
        )
        finished = False
        try:
            self._manager.add_request(
                prompt,
                request_id=request_id,
                max_new_tokens=max_new_tokens,
                streaming=True,
                eos_token_id=self.eos,
                **sampling,
            )
            while not finished:
                output = await updates.get()
                if output.error:
                    raise GenerationFailed(output.error)
                finished = output.is_finished()
                yield Step(list(output.generated_tokens), finished)
        finally:
            self._in_flight -= 1
            if not finished and self._manager is not None:
                self._manager.cancel_request(request_id)
