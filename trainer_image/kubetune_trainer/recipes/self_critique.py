"""Self-critique (spec.selfCritique, method sft): before training, the policy answers the
training data's prompts; a critic (an OpenAI-compatible endpoint, or the policy itself)
critiques each answer and writes a revision; the reward scores answers and revisions, and an
answer's best revision is kept when it scores strictly higher than the answer. The kept
revisions, as prompt → revision rows, are mixed into the training data by critiqueWeight.

The critic is asked, for each answer (and in later rounds for the previous revision)::

    system: CRITIC_SYSTEM
    user:   [Request]\\n<the prompt>\\n\\n[Answer]\\n<the answer>

and must reply ``Critique: …`` then, on a line of its own, ``Revision: …`` (everything after
``Revision:`` is the revision). A reply without exactly one ``Revision:`` line, or with an empty
revision, is a parse failure; a request that fails after its retries is a request failure; both
are counted, saved with their reason and never kept.

Every step is saved with provenance (:data:`PROVENANCE_COLUMNS`) in the run directory, where a
resumed attempt reads it instead of asking again, and with the model as
``self-critique/revisions.jsonl``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any, Protocol

from kubetune_trainer.data.errors import DataError
from kubetune_trainer.data.mixture import mix
from kubetune_trainer.evaluation.judge import (
    ChatClient,
    MalformedReply,
    RequestFailed,
    api_key_from_env,
    render_conversation,
)
from kubetune_trainer.evaluation.measures import generate_completions
from kubetune_trainer.evaluation.rewards import RewardFunction
from kubetune_trainer.plan import CriticSpec, SelfCritiqueSpec

if TYPE_CHECKING:
    from kubetune_trainer.data import LoadedData
    from kubetune_trainer.recipes.common import RunContext

log = logging.getLogger("kubetune.trainer")

Messages = list[dict[str, str]]
Row = dict[str, Any]

CRITIC_SYSTEM = (
    "You are a careful reviewer. The user shows you a request and an answer to it. First "
    "critique the answer: name every error, omission or unclear part, briefly. Then write a "
    "revised answer that fixes them; if the answer is already right, repeat it. Reply in "
    "exactly this form:\nCritique: <the critique>\nRevision: <the revised answer, complete, "
    "and nothing else>"
)
_REVISION = re.compile(r"^[ \t]*\**revision\**[ \t]*:\**[ \t]*", re.IGNORECASE | re.MULTILINE)
_CRITIQUE = re.compile(r"^\s*\**critique\**\s*:\**\s*", re.IGNORECASE)

PROVENANCE_FILE = "self-critique/revisions.jsonl"
"""The saved dataset, relative to the model's output directory."""
PROVENANCE_COLUMNS = (
    "prompt_index",
    "prompt",
    "answer",
    "sample",
    "round",
    "original",
    "original_score",
    "critiqued",
    "critique",
    "revision",
    "revision_score",
    "kept",
    "error",
)


# --------------------------------------------------------------------------- the protocol


def critic_messages(prompt: Messages, answer: str) -> Messages:
    """What the critic is asked about one answer."""
    user = f"[Request]\n{render_conversation(prompt)}\n\n[Answer]\n{answer}"
    return [{"role": "system", "content": CRITIC_SYSTEM}, {"role": "user", "content": user}]


def parse_critic_reply(reply: str) -> tuple[str, str] | None:
    """(critique, revision) of a critic's reply; None without exactly one ``Revision:`` line
    or with an empty revision."""
    markers = list(_REVISION.finditer(reply))
    if len(markers) != 1:
        return None
    revision = reply[markers[0].end() :].strip()
    if not revision:
        return None
    critique = _CRITIQUE.sub("", reply[: markers[0].start()], count=1).strip()
    return critique, revision


# --------------------------------------------------------------------------- decisions


@dataclass
class Step:
    """One critique-and-revise step of one answer: a row of the saved dataset."""

    prompt_index: int
    prompt: Messages
    answer: str | None
    """The row's reference answer, when the data has one."""
    sample: int
    round: int
    original: str
    """The policy's answer."""
    original_score: float
    critiqued: str
    """The text this round critiqued: the original in round 1, else the previous revision."""
    critique: str | None = None
    revision: str | None = None
    revision_score: float | None = None
    kept: bool = False
    error: str | None = None
    """Why there is no revision: the critic's reply did not parse, or the request failed."""

    def to_json(self) -> Row:
        return dataclasses.asdict(self)


def best_revision(original_score: float, revision_scores: Sequence[float | None]) -> int | None:
    """The index of the highest-scoring revision (the earliest on ties) when it scores strictly
    higher than the original; None when none does (a missing revision scores nothing)."""
    best: int | None = None
    for index, score in enumerate(revision_scores):
        if score is None:
            continue
        if best is None or score > revision_scores[best]:  # type: ignore[operator]
            best = index
    if best is None or not revision_scores[best] > original_score:  # type: ignore[operator]
        return None
    return best


def mark_kept(steps: Sequence[Step]) -> list[Step]:
    """The steps with ``kept`` set: per answer (prompt and sample), its best revision over the
    rounds, when it beats the answer."""
    chains: dict[tuple[int, int], list[Step]] = {}
    for step in steps:
        chains.setdefault((step.prompt_index, step.sample), []).append(step)
    out = []
    for step in steps:
        chain = chains[(step.prompt_index, step.sample)]
        best = best_revision(step.original_score, [s.revision_score for s in chain])
        out.append(dataclasses.replace(step, kept=best is not None and chain[best] is step))
    return out


def revision_rows(steps: Sequence[Step], shape: str) -> list[Row]:
    """Training rows of the kept revisions, in the data's row shape (messages or
    prompt-completion), with the reference answer when there is one."""
    rows = []
    for step in steps:
        if not step.kept:
            continue
        assert step.revision is not None
        reply = [{"role": "assistant", "content": step.revision}]
        row: Row = (
            {"prompt": step.prompt, "completion": reply}
            if shape == "prompt-completion"
            else {"messages": step.prompt + reply}
        )
        if step.answer is not None:
            row["answer"] = step.answer
        rows.append(row)
    return rows


def mix_revisions(
    data_rows: list[Row], revisions: list[Row], weight: float, seed: int
) -> tuple[list[Row], list[int]]:
    """The training rows and how many came from each side (data, revisions): below weight 1,
    the data and the revisions mixed as two sources weighted 1 - weight and weight, as many
    rows as both hold (the data mixture's rule: a side asked for more rows than it has repeats
    them whole, then samples the rest); at weight 1 the revisions alone, each once, shuffled."""
    if weight >= 1:
        return mix([revisions], [1.0], seed)
    return mix([data_rows, revisions], [1.0 - weight, weight], seed)


def prompts_of(rows: Sequence[Row], max_prompts: int | None) -> list[Row]:
    """The distinct prompts of training rows (messages rows: the turns before the last
    assistant turn), the first row of each, as {prompt, answer?, score?} in row order."""
    seen: set[str] = set()
    found: list[Row] = []
    for row in rows:
        if "messages" in row:
            turns = row["messages"]
            last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
            prompt = [{"role": t["role"], "content": t["content"]} for t in turns[:last]]
        elif "prompt" in row:
            prompt = row["prompt"]
        else:
            raise DataError("spec.selfCritique: text rows have no prompt to answer")
        key = json.dumps(prompt, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        extra = {k: row[k] for k in ("answer", "score") if row.get(k) is not None}
        found.append({"prompt": prompt, **extra})
        if max_prompts is not None and len(found) >= max_prompts:
            break
    return found


@dataclass
class Summary:
    answers: int
    revisions: int
    kept: int
    parse_failures: int
    request_failures: int
    original_mean: float
    revision_mean: float | None
    """Mean score of every revision (kept or not)."""
    kept_original_mean: float | None
    """Mean score of the answers whose revision was kept."""
    kept_revision_mean: float | None


def summarize(steps: Sequence[Step]) -> Summary:
    firsts = [s for s in steps if s.round == 1]
    revised = [s for s in steps if s.revision_score is not None]
    kept = [s for s in steps if s.kept]
    return Summary(
        answers=len(firsts),
        revisions=len(revised),
        kept=len(kept),
        parse_failures=sum(s.error is not None and s.error.startswith("parse") for s in steps),
        request_failures=sum(s.error is not None and s.error.startswith("request") for s in steps),
        original_mean=fmean(s.original_score for s in firsts) if firsts else 0.0,
        revision_mean=fmean(s.revision_score for s in revised) if revised else None,  # type: ignore[misc]
        kept_original_mean=fmean(s.original_score for s in kept) if kept else None,
        kept_revision_mean=fmean(s.revision_score for s in kept) if kept else None,  # type: ignore[misc]
    )


# --------------------------------------------------------------------------- critics


@dataclass
class CriticReply:
    text: str | None = None
    error: str | None = None


class Critic(Protocol):
    name: str

    def replies(self, conversations: Sequence[Messages]) -> list[CriticReply]: ...


class EndpointCritic:
    """A critic behind an OpenAI-compatible endpoint (through the judge's client: its timeout,
    retries and backoff), asked ``parallel`` requests at a time."""

    def __init__(self, spec: CriticSpec, field_path: str = "spec.selfCritique.critic") -> None:
        assert spec.endpoint is not None and spec.model is not None  # CriticSpec validation
        self.name = spec.model
        self.spec = spec
        self.client = ChatClient(
            spec.endpoint,
            spec.model,
            api_key=api_key_from_env(spec, f"{field_path}.apiKeySecret"),
            timeout_seconds=spec.timeout_seconds,
            retries=spec.retries,
        )

    def replies(self, conversations: Sequence[Messages]) -> list[CriticReply]:
        def ask(messages: Messages) -> CriticReply:
            try:
                text = self.client.complete(
                    messages, max_tokens=self.spec.max_tokens, temperature=self.spec.temperature
                )
                return CriticReply(text=text)
            except (RequestFailed, MalformedReply) as err:
                return CriticReply(error=str(err))

        with ThreadPoolExecutor(max_workers=self.spec.parallel) as pool:
            return list(pool.map(ask, conversations))


class PolicyCritic:
    """The policy as its own critic: the same protocol, rendered with its chat template."""

    name = "policy"

    def __init__(self, model: Any, tokenizer: Any, spec: CriticSpec, seed: int) -> None:
        self.model, self.tokenizer, self.spec, self.seed = model, tokenizer, spec, seed

    def replies(self, conversations: Sequence[Messages]) -> list[CriticReply]:
        found = generate_completions(
            self.model,
            self.tokenizer,
            conversations,
            max_new_tokens=self.spec.max_tokens,
            temperature=self.spec.temperature,
            seed=self.seed,
        )
        return [CriticReply(text=samples[0].text) for samples in found]


# --------------------------------------------------------------------------- the stage


def critique_and_revise(
    prompts: Sequence[Row],
    answers: Sequence[Sequence[str]],
    critic: Critic,
    reward: RewardFunction,
    rounds: int,
) -> list[Step]:
    """Every step of critiquing and revising ``answers`` (per prompt, its samples) for
    ``rounds`` rounds, scored by ``reward`` and marked kept or not."""
    chains: list[tuple[int, int, str]] = [
        (i, s, text) for i, texts in enumerate(answers) for s, text in enumerate(texts)
    ]

    def scores(indices: Sequence[int], texts: Sequence[str]) -> list[float]:
        rows = [prompts[i] for i in indices]
        return reward([r["prompt"] for r in rows], list(texts), rows)

    original_scores = scores([i for i, _, _ in chains], [t for _, _, t in chains])
    steps: list[Step] = []
    current = {c: chain[2] for c, chain in enumerate(chains)}
    for round_number in range(1, rounds + 1):
        active = sorted(current)
        replies = critic.replies(
            [critic_messages(prompts[chains[c][0]]["prompt"], current[c]) for c in active]
        )
        made: list[Step] = []
        for c, reply in zip(active, replies, strict=True):
            index, sample, original = chains[c]
            step = Step(
                prompt_index=index,
                prompt=prompts[index]["prompt"],
                answer=prompts[index].get("answer"),
                sample=sample,
                round=round_number,
                original=original,
                original_score=original_scores[c],
                critiqued=current[c],
            )
            parsed = parse_critic_reply(reply.text) if reply.text is not None else None
            if reply.text is None:
                step.error = f"request failed: {reply.error}"
            elif parsed is None:
                step.error = f"parse failure: no single 'Revision:' line in {reply.text[:200]!r}"
            else:
                step.critique, step.revision = parsed
            made.append(step)
        revised = [s for s in made if s.revision is not None]
        for step, score in zip(
            revised,
            scores([s.prompt_index for s in revised], [s.revision for s in revised]),  # type: ignore[misc]
            strict=True,
        ):
            step.revision_score = score
        steps.extend(made)
        current = {
            c: step.revision
            for c, step in zip(active, made, strict=True)
            if step.revision is not None
        }
        if not current:
            break
    return mark_kept(steps)


def run_stage(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Row],
    options: SelfCritiqueSpec,
    reward: RewardFunction,
    critic: Critic,
    seed: int,
) -> list[Step]:
    """The policy answers the rows' prompts; the critic critiques and revises (see the module
    docstring); the steps, with what is kept."""
    prompts = prompts_of(rows, options.max_prompts)
    found = generate_completions(
        model,
        tokenizer,
        [p["prompt"] for p in prompts],
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        num_samples=options.samples,
        batch_size=32 * options.samples,
        seed=seed,
    )
    steps = critique_and_revise(
        prompts, [[c.text for c in s] for s in found], critic, reward, options.rounds
    )
    summary = summarize(steps)
    log.info(
        "event=self_critique critic=%s prompts=%d answers=%d revisions=%d kept=%d "
        "parse_failures=%d request_failures=%d original_mean=%s revision_mean=%s "
        "kept_original_mean=%s kept_revision_mean=%s",
        critic.name,
        len(prompts),
        summary.answers,
        summary.revisions,
        summary.kept,
        summary.parse_failures,
        summary.request_failures,
        _figure(summary.original_mean),
        _figure(summary.revision_mean),
        _figure(summary.kept_original_mean),
        _figure(summary.kept_revision_mean),
    )
    if not summary.kept:
        first_error = next((s.error for s in steps if s.error), None)
        raise DataError(
            f"spec.selfCritique: no revision scored higher than its answer ({summary.answers} "
            f"answers, {summary.revisions} revisions, {summary.parse_failures} parse failures, "
            f"{summary.request_failures} request failures"
            + (f"; first: {first_error}" if first_error else "")
            + "); there is nothing to train on"
        )
    return steps


def _figure(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


# --------------------------------------------------------------------------- files


def cache_key(options: SelfCritiqueSpec, model_source: str, prompts: Sequence[Row]) -> str:
    """What the saved steps depend on: the stage's options, the policy and the prompts."""
    digest = hashlib.sha256()
    digest.update(options.model_dump_json(by_alias=True, exclude_none=True).encode())
    digest.update(model_source.encode())
    for row in prompts:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def write_steps(path: Path, steps: Sequence[Step]) -> None:
    """The steps as JSONL, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as out:
        for step in steps:
            out.write(json.dumps(step.to_json()) + "\n")
    os.replace(temporary, path)


def read_steps(path: Path) -> list[Step]:
    return [Step(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def save_with_model(cached: Path, output_dir: Path) -> Path:
    """Copy the saved steps beside the trained model (they travel with it to S3)."""
    target = output_dir / PROVENANCE_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, target)
    return target


def _share_from_main(steps: list[Step] | None, is_main: bool) -> list[Step]:
    """The main rank's steps on every rank (each rank must train on the same rows)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        assert steps is not None
        return steps
    box: list[Any] = [[s.to_json() for s in steps] if is_main and steps is not None else None]
    dist.broadcast_object_list(box, src=0)
    return [Step(**row) for row in box[0]]


def with_revisions(
    ctx: RunContext, model: Any, tokenizer: Any, data: LoadedData, device: str = "cpu"
) -> Path:
    """Run the stage on the main rank (or read a previous attempt's steps), share the steps
    with every rank, and mix the kept revisions into ``data.train``; the steps file."""
    from datasets import Dataset

    from kubetune_trainer.evaluation.rewards import build_reward

    recipe = ctx.plan.recipe
    options = recipe.self_critique
    assert options is not None
    rows = [dict(row) for row in data.train]
    prompts = prompts_of(rows, options.max_prompts)
    cache_dir = (ctx.run_dir or ctx.staging_dir.parent) / "self-critique"
    path = cache_dir / f"steps-{cache_key(options, recipe.model.source, prompts)}.jsonl"
    steps: list[Step] | None = None
    if ctx.is_main:
        if path.is_file():
            steps = read_steps(path)
            log.info("event=self_critique_cached path=%s steps=%d", path, len(steps))
        else:
            if device != "cpu" and getattr(model, "hf_device_map", None) is None:
                model.to(device)  # generate on the accelerator; the trainer keeps it there
            critic: Critic = (
                PolicyCritic(model, tokenizer, options.critic, recipe.training.seed)
                if options.critic.policy
                else EndpointCritic(options.critic)
            )
            reward = build_reward(
                options.rewards, options.blend_alpha, tokenizer=tokenizer, device=device
            )
            steps = run_stage(
                model, tokenizer, prompts, options, reward, critic, recipe.training.seed
            )
            write_steps(path, steps)
    steps = _share_from_main(steps, ctx.is_main)
    shape = "prompt-completion" if "completion" in rows[0] else "messages"
    revisions = revision_rows(steps, shape)
    mixed, counts = mix_revisions(rows, revisions, options.critique_weight, recipe.training.seed)
    columns: list[str] = []
    for row in mixed:
        columns += [key for key in row if key not in columns]
    data.train = Dataset.from_list([{c: row.get(c) for c in columns} for row in mixed])
    log.info(
        "event=self_critique_mix critique_weight=%s data_rows=%d revision_rows=%d "
        "kept_revisions=%d",
        options.critique_weight,
        counts[0] if len(counts) == 2 else 0,
        counts[-1],
        len(revisions),
    )
    return path
