"""Responses from models: OpenAI-compatible endpoints through the ``openai`` client.

A campaign model with an ``endpoint`` (``http://host:port/v1``; ``kubetune serve``, vLLM, any
server with ``/v1/chat/completions``) answers every prompt it has no response for yet
(non-streaming chat completions). :func:`served_locally` starts ``kubetune serve`` for a model
source on a free loopback port, for a local campaign over trained models.

An endpoint's API key, when it needs one, comes from ``KUBETUNE_STUDIO_ENDPOINT_API_KEY``.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import openai
from sqlalchemy import select
from sqlalchemy.orm import Session

from kubetune_studio.campaigns import build_items
from kubetune_studio.store.schema import Campaign, CampaignModel, Prompt, Response

log = logging.getLogger(__name__)
PARALLEL = 4
API_KEY_ENV = "KUBETUNE_STUDIO_ENDPOINT_API_KEY"


class EndpointError(RuntimeError):
    pass


@dataclass
class GenerationOutcome:
    generated: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    """The first few failures, one line each (model, prompt id, reason)."""
    items_made: int = 0


def client_for(endpoint: str, timeout: float = 120.0) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=endpoint.rstrip("/"),
        api_key=os.environ.get(API_KEY_ENV) or "unused",
        timeout=timeout,
        max_retries=2,
    )


def complete(client: openai.OpenAI, model: str, messages: list[dict[str, str]], **options) -> str:
    try:
        reply = client.chat.completions.create(model=model, messages=messages, **options)
    except openai.OpenAIError as exc:
        raise EndpointError(str(exc).splitlines()[0]) from exc
    if not reply.choices or reply.choices[0].message.content is None:
        raise EndpointError("the reply has no message content")
    return reply.choices[0].message.content


def missing(session: Session, campaign: Campaign) -> list[tuple[CampaignModel, list[Prompt]]]:
    """Each model with an endpoint and the prompts it has not answered yet."""
    prompts = list(session.scalars(select(Prompt).where(Prompt.campaign_id == campaign.id)))
    work = []
    for model in campaign.models:
        if not model.endpoint:
            continue
        answered = set(
            session.scalars(select(Response.prompt_id).where(Response.model_id == model.id))
        )
        todo = [p for p in prompts if p.id not in answered]
        if todo:
            work.append((model, todo))
    return work


def fill_missing(
    session: Session,
    campaign: Campaign,
    *,
    max_tokens: int = 256,
    temperature: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> GenerationOutcome:
    """Asks each model with an endpoint for the prompts it has not answered; stores the
    answers (failures are counted and reported, the rest kept) and, while the campaign
    collects votes, makes the new items."""
    outcome = GenerationOutcome()
    for model, todo in missing(session, campaign):
        _generate(session, model, todo, outcome, max_tokens, temperature, progress)
    session.flush()
    if campaign.state == "collecting":
        outcome.items_made = build_items(session, campaign)
    return outcome


def _generate(
    session: Session,
    model: CampaignModel,
    prompts: list[Prompt],
    outcome: GenerationOutcome,
    max_tokens: int,
    temperature: float,
    progress: Callable[[int], None] | None,
) -> None:
    assert model.endpoint is not None
    client = client_for(model.endpoint)
    name = model.served_name or model.name

    def ask(prompt: Prompt) -> tuple[Prompt, str | None, str | None]:
        try:
            text = complete(
                client, name, prompt.messages, max_tokens=max_tokens, temperature=temperature
            )
            return prompt, text, None
        except EndpointError as exc:
            return prompt, None, str(exc)

    with ThreadPoolExecutor(PARALLEL) as pool:
        for prompt, text, error in pool.map(ask, prompts):
            if text is None:
                outcome.failed += 1
                if len(outcome.errors) < 5:
                    outcome.errors.append(f"model '{model.name}', prompt {prompt.id}: {error}")
            else:
                session.add(
                    Response(
                        prompt_id=prompt.id, model_id=model.id, text=text, origin=model.endpoint
                    )
                )
                outcome.generated += 1
            if progress is not None:
                progress(1)
    log.info(
        "event=generated model=%s endpoint=%s ok=%d failed=%d",
        model.name,
        model.endpoint,
        outcome.generated,
        outcome.failed,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served_locally(source: str, name: str, *, startup_timeout: float = 300.0) -> Iterator[str]:
    """``kubetune serve SOURCE`` on a free loopback port for the duration; its base URL."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "kubetune.cli",
        "serve",
        source,
        "--port",
        str(port),
        "--served-name",
        name,
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(server, base, name, startup_timeout)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_ready(server: subprocess.Popen, base: str, name: str, timeout: float) -> None:
    client = client_for(base, timeout=5.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            error = server.stderr.read().decode(errors="replace") if server.stderr else ""
            tail = error.strip().splitlines()[-1] if error.strip() else "no output"
            raise EndpointError(f"kubetune serve exited with {server.returncode}: {tail}")
        try:
            if any(m.id == name for m in client.models.list()):
                return
        except openai.OpenAIError:
            pass
        time.sleep(0.5)
    raise EndpointError(f"kubetune serve for '{name}' not ready after {timeout:.0f}s")
