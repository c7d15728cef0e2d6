"""The measurements behind method eval (and the export gate), one function per kind:

- :func:`generate_completions` / :func:`generate`: completions of chat prompts rendered with the
  model's chat template (greedy at temperature 0, else sampled), also what ``kubetune
  generate`` and ``kubetune serve`` answer with;
- :func:`answer_accuracy`: generated answers read by an extractor (exact, regex, lastNumber)
  and compared with the row's answer;
- :func:`token_perplexity`: exp of the token-weighted mean loss over a dataset, on exactly the
  tokens SFT trains on (see :func:`loss_tokens`);
- :func:`pass_at_k` and :func:`extract_code`: the unbiased pass@k estimator and the program a
  generation holds (run by :mod:`kubetune_trainer.evaluation.sandbox`);
- :func:`win_rate`: model against baseline, per prompt, ties counting half.

:mod:`kubetune_trainer.evaluation.suite` puts them together per spec.eval metric.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)

Messages = list[dict[str, str]]
IGNORE_INDEX = -100


def extract_answer(text: str, extractor: str, pattern: str | None = None) -> str | None:
    """The answer in a generation: exact (the stripped text), regex (first group, or the whole
    match) or lastNumber (the last number in the text)."""
    if extractor == "exact":
        return text.strip()
    if extractor == "regex":
        match = re.search(pattern or "", text)
        if match is None:
            return None
        return (match.group(1) if match.groups() else match.group(0)).strip()
    if extractor == "lastNumber":
        numbers = _NUMBER.findall(text)
        return numbers[-1] if numbers else None
    raise ValueError(f"unknown extractor '{extractor}'")


def answers_match(predicted: str | None, reference: str, extractor: str) -> bool:
    if predicted is None:
        return False
    if extractor == "lastNumber":
        reference_numbers = _NUMBER.findall(reference)
        if not reference_numbers:
            return False
        return float(predicted) == float(reference_numbers[-1])
    return predicted == reference.strip()


# --------------------------------------------------------------------------- generation


@dataclass
class Completion:
    """One generated reply."""

    text: str
    finish_reason: str
    """stop (the model ended its turn) or length (max_new_tokens reached first)."""
    prompt_tokens: int
    completion_tokens: int


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Sample from a seeded RNG without disturbing the caller's."""
    import torch

    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Messages],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    num_samples: int = 1,
    batch_size: int = 32,
    seed: int | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> list[list[Completion]]:
    """``num_samples`` completions of each chat prompt (rendered with the tokenizer's chat
    template and its generation prompt, given ``chat_template_kwargs`` such as a
    score-conditioned model's ``score``), in left-padded batches. Temperature 0 is greedy
    decoding; above 0, sampling at that temperature (the model's own top-k/top-p defaults, if
    its generation config has any, still apply)."""
    import torch

    if temperature < 0:
        raise ValueError(f"temperature must be at least 0, got {temperature}")
    if temperature == 0 and num_samples > 1:
        raise ValueError("several samples per prompt need a temperature above 0")
    eos = eos_ids(model, tokenizer)
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    )
    prompts_per_batch = max(1, batch_size // num_samples)
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    results: list[list[Completion]] = []
    model.eval()
    try:
        with _seeded(seed):
            for start in range(0, len(prompts), prompts_per_batch):
                texts = [
                    tokenizer.apply_chat_template(
                        p,
                        tokenize=False,
                        add_generation_prompt=True,
                        **(chat_template_kwargs or {}),
                    )
                    for p in prompts[start : start + prompts_per_batch]
                ]
                batch = tokenizer(
                    texts, return_tensors="pt", padding=True, add_special_tokens=False
                ).to(model.device)
                with torch.no_grad():
                    out = model.generate(
                        **batch,
                        max_new_tokens=max_new_tokens,
                        num_return_sequences=num_samples,
                        pad_token_id=tokenizer.pad_token_id,
                        **sampling,
                    )
                prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
                new_tokens = out[:, batch["input_ids"].shape[1] :].tolist()
                for index, tokens in enumerate(new_tokens):
                    if index % num_samples == 0:
                        results.append([])
                    stop = next((i for i, t in enumerate(tokens) if t in eos), None)
                    kept = tokens if stop is None else tokens[: stop + 1]
                    results[-1].append(
                        Completion(
                            text=tokenizer.decode(kept, skip_special_tokens=True),
                            finish_reason="length" if stop is None else "stop",
                            prompt_tokens=int(prompt_lengths[index // num_samples]),
                            completion_tokens=len(kept),
                        )
                    )
    finally:
        tokenizer.padding_side = previous_side
    return results


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Messages],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> list[str]:
    """Greedy completions of chat prompts (left-padded batches)."""
    return [
        samples[0].text
        for samples in generate_completions(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            chat_template_kwargs=chat_template_kwargs,
        )
    ]


# --------------------------------------------------------------------------- accuracy


@dataclass
class AccuracyResult:
    accuracy: float
    correct: int
    total: int
    examples: list[dict[str, Any]]
    no_answer: int = 0
    """Generations in which the extractor found no answer (counted as wrong)."""
    outcomes: list[bool] = field(default_factory=list)
    """Per row: whether its answer matched."""


def score_answers(
    completions: Sequence[str],
    references: Sequence[str],
    *,
    extractor: str = "lastNumber",
    pattern: str | None = None,
) -> AccuracyResult:
    """Accuracy of generations against reference answers."""
    correct = no_answer = 0
    examples = []
    outcomes = []
    for completion, reference in zip(completions, references, strict=True):
        predicted = extract_answer(completion, extractor, pattern)
        no_answer += predicted is None
        ok = answers_match(predicted, str(reference), extractor)
        correct += ok
        outcomes.append(ok)
        if len(examples) < 5:
            examples.append({"answer": reference, "generated": completion, "correct": ok})
    total = len(completions)
    return AccuracyResult(
        correct / total if total else 0.0, correct, total, examples, no_answer, outcomes
    )


def answer_accuracy(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    *,
    extractor: str = "lastNumber",
    pattern: str | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> AccuracyResult:
    """Share of rows whose generated answer matches row["answer"]; rows carry "prompt" as a
    list of chat messages."""
    completions = generate(
        model,
        tokenizer,
        [row["prompt"] for row in rows],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        chat_template_kwargs=chat_template_kwargs,
    )
    return score_answers(
        completions, [str(row["answer"]) for row in rows], extractor=extractor, pattern=pattern
    )


# --------------------------------------------------------------------------- perplexity


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def loss_tokens(
    tokenizer: Any, row: dict[str, Any], max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one SFT row, with -100 on the tokens the loss ignores.

    This is the masking kubetune's SFT recipe trains with (TRL SFTTrainer's preparation, which
    a trainer-tier test checks this against): messages rows score assistant turns only (the
    chat template's generation markers); prompt-completion rows score the completion, from where
    the tokenized prompt and prompt+completion diverge; text rows score every token, with EOS
    appended. Sequences are cut to ``max_length`` tokens (keeping the start).
    """
    if "messages" in row:
        out = tokenizer.apply_chat_template(
            row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(out["input_ids"])
        labels = [
            t if m else IGNORE_INDEX for t, m in zip(ids, out["assistant_masks"], strict=True)
        ]
    elif "completion" in row:
        prompt_ids = tokenizer.apply_chat_template(
            row["prompt"], tokenize=True, return_dict=True, add_generation_prompt=True
        )["input_ids"]
        ids = list(
            tokenizer.apply_chat_template(
                row["prompt"] + row["completion"], tokenize=True, return_dict=True
            )["input_ids"]
        )
        start = _common_prefix_length(prompt_ids, ids)
        labels = [IGNORE_INDEX] * start + ids[start:]
    elif "text" in row:
        text = row["text"]
        if not text.endswith(tokenizer.eos_token):
            text += tokenizer.eos_token
        ids = list(tokenizer(text)["input_ids"])
        labels = list(ids)
    else:
        raise ValueError(f"row has no messages, prompt/completion or text: {sorted(row)}")
    return ids[:max_length], labels[:max_length]


@dataclass
class PerplexityResult:
    perplexity: float
    mean_loss: float
    """Mean negative log-likelihood per scored token (nats)."""
    tokens: int
    """Tokens scored (the model predicts each from the tokens before it)."""
    rows: int
    skipped_rows: int = 0
    """Rows left with no scored token after truncation."""
    row_index: list[int] = field(default_factory=list)
    """Per scored row: its index in the input rows."""
    row_losses: list[float] = field(default_factory=list)
    """Per scored row: summed negative log-likelihood (nats)."""
    row_tokens: list[int] = field(default_factory=list)
    """Per scored row: tokens scored."""


def _row_nll(
    model: Any, encoded: Sequence[tuple[list[int], list[int]]], pad: int, batch_size: int
) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, scored tokens) of each (input_ids, labels) row."""
    import torch
    import torch.nn.functional as F

    model.eval()
    found: list[tuple[float, int]] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (ids, row_labels) in enumerate(chunk):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(ids)] = torch.tensor(row_labels)
            attention[i, : len(ids)] = 1
        with torch.no_grad():
            logits = model(
                input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device)
            ).logits.float()
        targets = labels[:, 1:].to(logits.device)
        nll = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(len(chunk), -1)
        scored = targets != IGNORE_INDEX
        for i in range(len(chunk)):
            found.append((float(nll[i][scored[i]].sum()), int(scored[i].sum())))
    return found


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def token_perplexity(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    *,
    max_length: int = 2048,
    batch_size: int = 8,
) -> PerplexityResult:
    """exp(total NLL / scored tokens) over all rows: long rows weigh more than short ones."""
    encoded = [loss_tokens(tokenizer, row, max_length) for row in rows]
    index = [
        i for i, (_, labels) in enumerate(encoded) if any(x != IGNORE_INDEX for x in labels[1:])
    ]
    kept = [encoded[i] for i in index]
    per_row = _row_nll(model, kept, _pad_id(tokenizer), batch_size)
    row_losses = [nll for nll, _ in per_row]
    row_tokens = [tokens for _, tokens in per_row]
    total_tokens = sum(row_tokens)
    if total_tokens == 0:
        raise ValueError("no row has a token to score (all masked or truncated away)")
    mean = math.fsum(row_losses) / total_tokens
    return PerplexityResult(
        perplexity=math.exp(mean),
        mean_loss=mean,
        tokens=total_tokens,
        rows=len(kept),
        skipped_rows=len(encoded) - len(kept),
        row_index=index,
        row_losses=row_losses,
        row_tokens=row_tokens,
    )


def example_losses(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    *,
    max_length: int = 2048,
    batch_size: int = 8,
) -> list[float | None]:
    """Each row's mean loss per scored token (the tokens SFT trains on); None for a row left
    with no scored token after truncation."""
    encoded = [loss_tokens(tokenizer, row, max_length) for row in rows]
    return [
        nll / tokens if tokens else None
        for nll, tokens in _row_nll(model, encoded, _pad_id(tokenizer), batch_size)
    ]


# --------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of the chance that at least one of k samples passes, from n samples of
    which c passed: 1 - C(n-c, k) / C(n, k), computed as a running product (Chen et al. 2021)
    so that large n neither overflows nor loses precision."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    failing_all = 1.0
    for i in range(n - c + 1, n + 1):
        failing_all *= 1.0 - k / i
    return 1.0 - failing_all


def mean_pass_at_k(
    passed_per_problem: Sequence[Sequence[bool]], ks: Sequence[int]
) -> dict[int, float]:
    """pass@k for each k, averaged over problems (each with its own samples)."""
    out: dict[int, float] = {}
    for k in ks:
        values = [pass_at_k(len(p), sum(p), k) for p in passed_per_problem]
        out[k] = sum(values) / len(values) if values else 0.0
    return out


def extract_code(text: str) -> str:
    """The program in a generation: the first fenced code block (```python or bare ```;
    an unclosed fence runs to the end), else the whole text."""
    match = _CODE_BLOCK.search(text)
    return match.group(1) if match else text


# --------------------------------------------------------------------------- win rate


@dataclass
class WinRateResult:
    win_rate: float
    wins: int
    ties: int
    losses: int
    mean_margin: float
    """Mean of model score minus baseline score."""
    examples: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[float] = field(default_factory=list)
    """Per prompt: 1 win, 0.5 tie, 0 loss."""


def win_rate(
    model_scores: Sequence[float], baseline_scores: Sequence[float], *, tie_tolerance: float = 0.0
) -> WinRateResult:
    """Share of prompts where the model's completion scores above the baseline's; a tie (within
    ``tie_tolerance``) counts half."""
    if len(model_scores) != len(baseline_scores):
        raise ValueError("model and baseline need one score per prompt each")
    wins = ties = losses = 0
    outcomes = []
    for mine, theirs in zip(model_scores, baseline_scores, strict=True):
        if abs(mine - theirs) <= tie_tolerance:
            ties += 1
            outcomes.append(0.5)
        elif mine > theirs:
            wins += 1
            outcomes.append(1.0)
        else:
            losses += 1
            outcomes.append(0.0)
    total = len(model_scores)
    margin = sum(m - b for m, b in zip(model_scores, baseline_scores, strict=True))
    return WinRateResult(
        win_rate=(wins + 0.5 * ties) / total if total else 0.0,
        wins=wins,
        ties=ties,
        losses=losses,
        mean_margin=margin / total if total else 0.0,
        outcomes=outcomes,
    )
