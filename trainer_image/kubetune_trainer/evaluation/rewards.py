"""Reward sources of a spec (ppo.rewards, grpo.rewards) as one callable reward.

    reward = build_reward(spec.grpo.rewards, spec.grpo.blend_alpha, tokenizer=tokenizer)
    values = reward(prompts, completions, rows)        # one float per completion
    parts = reward.terms(prompts, completions, rows)   # raw value of each term, for logging

Terms:

- ``model``: a sequence-classification reward model (e.g. the output of a ``method: reward``
  job) scores the prompt and the completion rendered as a conversation with its chat template.
- ``length``: ``-|tokens - targetLength| / targetLength``: 0 at the target, -1 at twice the
  target or at an empty completion; tokens counted with the policy's tokenizer.
- ``regex``: 1 when the completion contains a match of ``pattern`` (``re.search``; anchor it
  with ^…$ to require the whole completion), else 0.
- ``answerMatch``: 1 when the completion's answer equals the row's answer column: ``exact``
  compares the stripped text, ``numeric`` the value of the last number (extractors of
  :mod:`kubetune_trainer.evaluation.measures`).
- ``externalColumn``: the row's score column.
- ``judge``: an LLM judge (OpenAI-compatible endpoint, :mod:`kubetune_trainer.evaluation.judge`)
  scores each response 1–5; the score s becomes ``(s-1)/4``. A response whose score cannot be
  read gets the mean of the batch's readable ones (no advantage either way); a batch without
  a single readable score is an error.

Objectives: a source with a ``name`` is an objective; its raw batch mean is logged as
``objectives/<name>`` (unnamed terms as ``reward_terms/<type>``). A source with
``normalize: running`` is standardised before weighting by the running mean and standard
deviation of every value it has produced (:class:`RunningMoments`), so objectives on different
scales weigh as their weights say.

Blending (ADLF): reward = (1-α)·external + α·internal, where external is the weighted sum of the
(normalised) externalColumn terms and internal the weighted sum of the others.

Rows are the dataset rows the prompts came from; :func:`kubetune_trainer.data.load_data` puts
the data section's answer and score columns under the keys ``answer`` and ``score``, which are
the default columns here.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import TYPE_CHECKING, Any

from kubetune_trainer.evaluation.measures import answers_match, extract_answer
from kubetune_trainer.plan import ModelSpec, RewardSource, RewardSourceType
from kubetune_trainer.reporting.train_metrics import OBJECTIVE_PREFIX

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from kubetune_trainer.evaluation.judge import ChatClient

Message = dict[str, str]
Prompt = str | list[Message]
"""A prompt: plain text (one user turn) or a conversation ending with a user turn."""
Row = dict[str, Any]
TermFn = Callable[[Sequence[Prompt], Sequence[str], Sequence[Row]], list[float]]

log = logging.getLogger("kubetune.trainer")

DEFAULT_ANSWER_COLUMN = "answer"
DEFAULT_SCORE_COLUMN = "score"
_MATCH_EXTRACTOR = {"exact": "exact", "numeric": "lastNumber"}
TERM_PREFIX = "reward_terms/"
_MIN_STD = 1e-8


class RewardError(ValueError):
    """A reward that cannot be computed: a bad source or a row without the needed value."""


def _conversation(prompt: Prompt, completion: str) -> list[Message]:
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return [*turns, {"role": "assistant", "content": completion}]


def _prompt_excerpt(prompt: Prompt) -> str:
    text = prompt if isinstance(prompt, str) else (prompt[-1]["content"] if prompt else "")
    return text if len(text) <= 60 else text[:57] + "..."


class RewardModelScorer:
    """Scores (prompt, completion) pairs with a sequence-classification reward model."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        max_length: int | None = None,
    ) -> None:
        from kubetune_trainer.models import load_model, load_tokenizer, resolve_model_dir

        path = resolve_model_dir(spec)
        self.spec = spec
        self.device = device
        self.max_length = max_length
        self.tokenizer = load_tokenizer(spec, path=path)
        model = load_model(
            spec,
            dtype=dtype,
            task="sequence-classification",
            num_labels=1,
            tokenizer=self.tokenizer,
            path=path,
        )
        if model.config.num_labels != 1:
            raise RewardError(
                f"reward model '{spec.source}' has {model.config.num_labels} outputs; a reward "
                "model has exactly one (train it with method reward)"
            )
        self.model = model.to(device).eval()

    def texts(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[str]:
        """The conversations the model scores, rendered as RewardTrainer renders its pairs."""
        return [
            self.tokenizer.apply_chat_template(_conversation(p, c), tokenize=False)
            for p, c in zip(prompts, completions, strict=True)
        ]

    def score(
        self, prompts: Sequence[Prompt], completions: Sequence[str], batch_size: int = 8
    ) -> list[float]:
        import torch

        texts = self.texts(prompts, completions)
        scores: list[float] = []
        previous_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "right"
        try:
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    texts[start : start + batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=self.max_length is not None,
                    max_length=self.max_length,
                    # the chat template already wrote any bos token
                    add_special_tokens=False,
                ).to(self.device)
                with torch.no_grad():
                    logits = self.model(**batch).logits
                scores += logits[:, 0].float().cpu().tolist()
        finally:
            self.tokenizer.padding_side = previous_side
        return scores


@dataclass
class RunningMoments:
    """Count, mean and sum of squared deviations of every value seen so far, merged batch by
    batch (Chan, Golub and LeVeque's update of Welford's moments): numerically stable and
    independent of how the values were split into batches."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: Sequence[float]) -> RunningMoments:
        if not values:
            return cls()
        mean = fmean(values)
        return cls(len(values), mean, math.fsum((v - mean) ** 2 for v in values))

    def merge(self, other: RunningMoments) -> None:
        """Add the values ``other`` summarises."""
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / total
        self.m2 += other.m2 + delta * delta * self.count * other.count / total
        self.count = total

    def update(self, values: Sequence[float]) -> None:
        self.merge(RunningMoments.of(values))

    @property
    def std(self) -> float:
        """Population standard deviation of the values seen (0 before any)."""
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    def standardize(self, values: Sequence[float]) -> list[float]:
        """``(v - mean) / std``; only centred while every value seen was the same."""
        scale = self.std if self.std > _MIN_STD else 1.0
        return [(v - self.mean) / scale for v in values]

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_state(cls, state: dict[str, float]) -> RunningMoments:
        return cls(count=int(state["count"]), mean=float(state["mean"]), m2=float(state["m2"]))


GatherMoments = Callable[[RunningMoments], list[RunningMoments]]
"""Every process's moments of its batch, in rank order (the same list on every process)."""


def gather_across_processes(batch: RunningMoments) -> list[RunningMoments]:
    """The batch moments of every process of the torch.distributed group; just ``batch``
    outside one. Called by every process at the same point (each scores its own batch)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [batch]
    found: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(found, batch.state_dict())
    return [RunningMoments.from_state(state) for state in found]


@dataclass
class RewardTerm:
    name: str
    weight: float
    external: bool
    compute: TermFn
    objective: bool = False
    """Named by the spec: reported as objectives/<name>."""
    normalize: bool = False
    """Standardised by its running moments before weighting."""


class RewardFunction:
    """The spec's reward terms combined: reward = (1-α)·external + α·internal, where external is
    the sum of weighted externalColumn terms and internal the sum of the other weighted terms."""

    def __init__(
        self,
        terms: list[RewardTerm],
        blend_alpha: float,
        gather: GatherMoments = gather_across_processes,
    ) -> None:
        if not terms:
            raise RewardError("no reward terms: give at least one reward source")
        if not 0.0 <= blend_alpha <= 1.0:
            raise RewardError(f"blendAlpha must be between 0 and 1, got {blend_alpha}")
        has_external = any(t.external for t in terms)
        has_internal = any(not t.external for t in terms)
        if has_external and blend_alpha == 1.0:
            raise RewardError(
                "blendAlpha is 1, so the externalColumn rewards get weight 1-α = 0; "
                "set blendAlpha below 1 or remove them"
            )
        if has_internal and blend_alpha == 0.0:
            raise RewardError(
                "blendAlpha is 0, so every reward except externalColumn gets weight α = 0; "
                "set blendAlpha above 0 or remove them"
            )
        self._terms = terms
        self.blend_alpha = blend_alpha
        self.names: list[str] = [t.name for t in terms]
        self.objectives: list[str] = [t.name for t in terms if t.objective]
        self.moments: dict[str, RunningMoments] = {
            t.name: RunningMoments() for t in terms if t.normalize
        }
        self._gather = gather

    def terms(
        self, prompts: Sequence[Prompt], completions: Sequence[str], rows: Sequence[Row]
    ) -> dict[str, list[float]]:
        """The raw (unweighted) value of every term for every completion."""
        if not len(prompts) == len(completions) == len(rows):
            raise RewardError(
                f"{len(prompts)} prompts, {len(completions)} completions and {len(rows)} rows; "
                "they must pair up"
            )
        return {t.name: t.compute(prompts, completions, rows) for t in self._terms}

    def normalize(self, terms: dict[str, list[float]]) -> dict[str, list[float]]:
        """The term values with every ``normalize: running`` term standardised by the moments
        of all its values so far, these included (which it adds to the moments). With several
        processes, every process adds every process's batch, so all standardise alike."""
        out = dict(terms)
        for name, moments in self.moments.items():
            for batch in self._gather(RunningMoments.of(terms[name])):
                moments.merge(batch)
            out[name] = moments.standardize(terms[name])
        return out

    def score(self, terms: dict[str, list[float]]) -> list[float]:
        """The reward of raw term values: normalised where asked, then blended."""
        return self.combine(self.normalize(terms))

    def log_means(
        self, terms: dict[str, list[float]], term_prefix: str = TERM_PREFIX
    ) -> dict[str, float]:
        """The batch mean of each raw term under its logged name: objectives/<name> for an
        objective, ``term_prefix`` + name for an unnamed term."""
        objectives = set(self.objectives)
        return {
            (OBJECTIVE_PREFIX if name in objectives else term_prefix) + name: fmean(values)
            for name, values in terms.items()
        }

    def state_dict(self) -> dict[str, dict[str, float]]:
        """The running moments of the normalised terms, to save with a checkpoint."""
        return {name: moments.state_dict() for name, moments in self.moments.items()}

    def load_state_dict(self, state: dict[str, dict[str, float]]) -> None:
        for name, saved in state.items():
            if name in self.moments:
                self.moments[name] = RunningMoments.from_state(saved)

    def combine(self, terms: dict[str, list[float]]) -> list[float]:
        """The blended reward from term values (no normalisation: see :meth:`score`)."""
        count = len(next(iter(terms.values())))
        external = [0.0] * count
        internal = [0.0] * count
        for term in self._terms:
            target = external if term.external else internal
            for i, value in enumerate(terms[term.name]):
                target[i] += term.weight * value
        alpha = self.blend_alpha
        return [(1 - alpha) * e + alpha * n for e, n in zip(external, internal, strict=True)]

    def __call__(
        self, prompts: Sequence[Prompt], completions: Sequence[str], rows: Sequence[Row]
    ) -> list[float]:
        return self.score(self.terms(prompts, completions, rows))


# TRL passes these to reward functions besides the dataset's columns.
_TRL_KWARGS = ("completion_ids", "trainer_state", "log_extra", "log_metric", "environments")


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The generated text of a TRL completion: a string, or (for conversational prompts) the
    assistant turns it produced."""
    if isinstance(completion, str):
        return completion
    return "".join(turn["content"] for turn in completion if turn["role"] == "assistant")


class TrlReward:
    """A :class:`RewardFunction` in the form TRL's reward_funcs take:
    ``f(prompts, completions, **columns) -> list[float]``; each term's batch mean is logged as
    ``objectives/<name>`` (named sources) or ``reward_terms/<name>``."""

    __name__ = "reward"  # TRL names the logged reward after the function

    def __init__(self, reward: RewardFunction) -> None:
        self.reward = reward

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        log_metric: Callable[[str, float], None] | None = None,
        **columns: Any,
    ) -> list[float]:
        data = {k: v for k, v in columns.items() if k not in _TRL_KWARGS}
        rows = [{k: v[i] for k, v in data.items()} for i in range(len(prompts))]
        texts = [completion_text(c) for c in completions]
        terms = self.reward.terms(prompts, texts, rows)
        if log_metric is not None:
            for key, mean in self.reward.log_means(terms).items():
                log_metric(key, mean)
        return self.reward.score(terms)


# --------------------------------------------------------------------------- rule terms


def length_term(target_length: int, tokenizer: PreTrainedTokenizerBase) -> TermFn:
    def compute(_: Sequence[Prompt], completions: Sequence[str], __: Sequence[Row]) -> list[float]:
        ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
        return [-abs(len(tokens) - target_length) / target_length for tokens in ids]

    return compute


def regex_term(pattern: str) -> TermFn:
    compiled = re.compile(pattern)

    def compute(_: Sequence[Prompt], completions: Sequence[str], __: Sequence[Row]) -> list[float]:
        return [1.0 if compiled.search(c) else 0.0 for c in completions]

    return compute


def _row_value(row: Row, column: str, index: int, prompt: Prompt, term: str) -> Any:
    value = row.get(column)
    if value is None:
        raise RewardError(
            f"{term} reward: row {index} (prompt {_prompt_excerpt(prompt)!r}) has no value in "
            f"column '{column}'"
        )
    return value


def answer_match_term(match: str, column: str) -> TermFn:
    extractor = _MATCH_EXTRACTOR[match]

    def compute(
        prompts: Sequence[Prompt], completions: Sequence[str], rows: Sequence[Row]
    ) -> list[float]:
        values = []
        for i, (prompt, completion, row) in enumerate(zip(prompts, completions, rows, strict=True)):
            reference = str(_row_value(row, column, i, prompt, "answerMatch"))
            predicted = extract_answer(completion, extractor)
            values.append(1.0 if answers_match(predicted, reference, extractor) else 0.0)
        return values

    return compute


def external_column_term(column: str) -> TermFn:
    def compute(prompts: Sequence[Prompt], _: Sequence[str], rows: Sequence[Row]) -> list[float]:
        values = []
        for i, (prompt, row) in enumerate(zip(prompts, rows, strict=True)):
            raw = _row_value(row, column, i, prompt, "externalColumn")
            try:
                value = float(raw)
            except (TypeError, ValueError):
                value = float("nan")
            if math.isnan(value):
                raise RewardError(
                    f"externalColumn reward: row {i} (prompt {_prompt_excerpt(prompt)!r}) has "
                    f"{raw!r} in column '{column}', not a number"
                )
            values.append(value)
        return values

    return compute


def _as_messages(prompt: Prompt) -> list[Message]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def judge_term(client: ChatClient, name: str, parallel: int = 4) -> TermFn:
    from kubetune_trainer.evaluation.judge import judge_single

    def compute(
        prompts: Sequence[Prompt], completions: Sequence[str], _: Sequence[Row]
    ) -> list[float]:
        result = judge_single(
            client, [_as_messages(p) for p in prompts], list(completions), parallel=parallel
        )
        readable = [s for s in result.scores if s is not None]
        if not readable:
            example = (result.details.get("failure_examples") or [{}])[0]
            raise RewardError(
                f"judge reward '{name}': none of {len(completions)} responses got a readable "
                f"score from {client.url}; e.g. {example}"
            )
        unscored = len(result.scores) - len(readable)
        if unscored:
            log.warning("event=judge_unscored reward=%s count=%d", name, unscored)
        fallback = fmean(readable)
        return [((fallback if s is None else s) - 1.0) / 4.0 for s in result.scores]

    return compute


def model_term(scorer: RewardModelScorer) -> TermFn:
    def compute(
        prompts: Sequence[Prompt], completions: Sequence[str], _: Sequence[Row]
    ) -> list[float]:
        return scorer.score(prompts, completions)

    return compute


# --------------------------------------------------------------------------- building


def _client_of_spec(source: RewardSource, where: str) -> ChatClient:
    from kubetune_trainer.evaluation.judge import ChatClient

    assert source.judge is not None  # RewardSource validation
    return ChatClient.from_spec(source.judge, field_path=f"{where}.judge")


def _term_name(kind: str, taken: list[str]) -> str:
    name, n = kind, 1
    while name in taken:
        n += 1
        name = f"{kind}_{n}"
    return name


def build_reward(
    sources: list[RewardSource],
    blend_alpha: float,
    *,
    tokenizer: PreTrainedTokenizerBase | None,
    device: str = "cpu",
    answer_column: str | None = None,
    score_column: str | None = None,
    judge_client: Callable[[RewardSource, str], ChatClient] | None = None,
    gather: GatherMoments = gather_across_processes,
    field_path: str = "rewards",
) -> RewardFunction:
    """The reward of ``sources``. ``tokenizer`` is the policy's (length terms count its tokens);
    reward models load on ``device``. A source's ``column`` wins over ``answer_column`` /
    ``score_column``, which default to the keys the data layer writes (answer, score).
    ``judge_client`` makes the client of a judge source and its field path (default: from its
    spec); ``gather`` collects the processes' batch moments for running normalisation.
    ``field_path`` is where the sources are in the spec (errors name it)."""
    terms: list[RewardTerm] = []
    names: list[str] = [s.name for s in sources if s.name is not None]
    for index, source in enumerate(sources):
        kind = source.type
        where = f"{field_path}[{index}]"
        if kind == RewardSourceType.model:
            assert source.model is not None  # RewardSource validation
            compute = model_term(RewardModelScorer(source.model, device=device))
        elif kind == RewardSourceType.length:
            assert source.target_length is not None
            if tokenizer is None:
                raise RewardError(f"{where}: a length reward needs the policy tokenizer")
            compute = length_term(source.target_length, tokenizer)
        elif kind == RewardSourceType.regex:
            assert source.pattern is not None
            compute = regex_term(source.pattern)
        elif kind == RewardSourceType.answer_match:
            column = source.column or answer_column or DEFAULT_ANSWER_COLUMN
            compute = answer_match_term(source.match, column)
        elif kind == RewardSourceType.external_column:
            column = source.column or score_column or DEFAULT_SCORE_COLUMN
            compute = external_column_term(column)
        elif kind == RewardSourceType.judge:
            client = (judge_client or _client_of_spec)(source, where)
            compute = judge_term(client, source.name or where)
        else:
            raise RewardError(f"{where}: unknown reward type '{kind}'")
        if source.name is None:
            name = _term_name(kind.value, names)
            names.append(name)
        else:
            name = source.name
        terms.append(
            RewardTerm(
                name=name,
                weight=source.weight,
                external=kind == RewardSourceType.external_column,
                compute=compute,
                objective=source.name is not None,
                normalize=source.normalize == "running",
            )
        )
    return RewardFunction(terms, blend_alpha, gather)
