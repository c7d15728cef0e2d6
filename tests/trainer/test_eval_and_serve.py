"""Method eval and inference on tiny builtin models.

A "briefly trained" arithmetic model (a few AdamW steps on the loss tokens SFT uses) must have a
lower perplexity than the base model. Two "parrots", the base model rewired to answer every
prompt with "4" or with "A", are served by ``kubetune serve``'s server and play the judge: their
fixed answers make the expected values exact (single judge: mean 4; pairwise: an always-A judge
is pure position bias, which the position swap must cancel to 0.5) and make accuracy and pass@k
values known in advance.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from kubetune.api import FineTuneJob
from kubetune.cli import main as kubetune_main
from kubetune.planner import make_plan
from kubetune_trainer.data import load_data
from kubetune_trainer.evaluation.measures import IGNORE_INDEX, loss_tokens
from kubetune_trainer.evaluation.suite import RESULTS_FILE, evaluate_metrics
from kubetune_trainer.models import load_model_and_tokenizer, load_tokenizer, resolve_model_dir
from kubetune_trainer.plan import DataSpec, EvalSpec, ModelSpec, Scaling, secret_env_name
from kubetune_trainer.serving.engine import EngineSettings
from kubetune_trainer.serving.inference import ChatModel
from kubetune_trainer.serving.openai_server import ChatServer, ServerSettings

pytestmark = pytest.mark.trainer

BASE = "builtin://tiny-llama"
QUESTIONS = ["What is 41 + 1?", "Add 700 and 1.", "Compute 99 plus 1."]


def rows_of(source: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return list(load_data(DataSpec.model_validate({"sources": [source]}), kind=kind).train)  # type: ignore[arg-type]


def train_steps(
    rows: list[dict[str, Any]], out: Path, *, steps: int, lr: float = 3e-3, batch: int = 16
) -> Path:
    """Train the base model for a few AdamW steps on the SFT loss tokens of rows; save it."""
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(BASE)
    encoded = [loss_tokens(tokenizer, row, 256) for row in rows]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        chunk = [encoded[(step * batch + i) % len(encoded)] for i in range(batch)]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((batch, width), tokenizer.pad_token_id)
        labels = torch.full((batch, width), IGNORE_INDEX)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, (row_ids, row_labels) in enumerate(chunk):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            labels[i, : len(row_ids)] = torch.tensor(row_labels)
            mask[i, : len(row_ids)] = 1
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def briefly_trained(tmp_path_factory: pytest.TempPathFactory) -> str:
    rows = rows_of({"uri": "builtin://arithmetic-sft", "maxSamples": 480}, "sft")
    return str(train_steps(rows, tmp_path_factory.mktemp("brief"), steps=20))


def build_parrot(reply: str, out: Path) -> str:
    """The base model rewired into a bigram machine that answers every chat prompt with
    ``reply`` (one token) and then ends its turn: attention and MLP outputs are zeroed, so each
    position sees only its own token's embedding, and the head maps the generation prompt's last
    token to ``reply`` and ``reply`` to the end-of-turn token."""
    model, tokenizer = load_model_and_tokenizer(BASE)
    prompt_end = tokenizer.apply_chat_template(
        user("x"), add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"][-1]
    (reply_id,) = tokenizer(reply, add_special_tokens=False)["input_ids"]
    hidden = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed[prompt_end] = torch.nn.functional.one_hot(torch.tensor(0), hidden).float()
        embed[reply_id] = torch.nn.functional.one_hot(torch.tensor(1), hidden).float()
        head.zero_()
        head[reply_id, 0] = 10.0
        head[tokenizer.eos_token_id, 1] = 10.0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def parrot(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Answers every prompt (questions, code requests, single-judge prompts) with "4"."""
    return build_parrot("4", tmp_path_factory.mktemp("parrot-4"))


@pytest.fixture(scope="module")
def a_parrot(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Answers every prompt with "A": a pairwise judge with nothing but position bias."""
    return build_parrot("A", tmp_path_factory.mktemp("parrot-a"))


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def transformers_greedy(
    source: str, prompts: list[list[dict[str, str]]], max_new_tokens: int
) -> list[str]:
    """Reference completions: each prompt alone, rendered by the tokenizer's chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_dir(source)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    out = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            generated = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        new = generated[0, ids["input_ids"].shape[1] :]
        out.append(tokenizer.decode(new, skip_special_tokens=True))
    return out


# --------------------------------------------------------------------------- perplexity


@pytest.mark.parametrize("shape", ["messages", "prompt-completion", "text"])
def test_perplexity_scores_exactly_the_tokens_sft_trains_on(shape: str, tmp_path: Path) -> None:
    """loss_tokens gives the input ids and labels TRL's SFTTrainer prepares for the same rows
    with the SFT recipe's settings (assistant-only loss for conversations)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    sft_rows = rows_of({"uri": "builtin://arithmetic-sft", "maxSamples": 8}, "sft")
    if shape == "messages":
        rows = [{"messages": r["messages"]} for r in sft_rows]
    elif shape == "prompt-completion":
        rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in sft_rows]
    else:
        rows = [{"text": " ".join(m["content"] for m in r["messages"])} for r in sft_rows]
    assert any(len(r.get("messages", [])) > 3 for r in rows) or shape != "messages"
    model, tokenizer = load_model_and_tokenizer(BASE)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(tmp_path),
            assistant_only_loss=shape == "messages",
            max_length=64,
            use_cpu=True,
            bf16=False,
            report_to=[],
            dataset_num_proc=None,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    prepared = list(trainer.train_dataset)
    assert len(prepared) == len(rows)
    for row, expected in zip(rows, prepared, strict=True):
        ids, labels = loss_tokens(tokenizer, row, 64)
        assert ids == expected["input_ids"]
        assert labels == expected["labels"]
        assert IGNORE_INDEX in labels or shape == "text"


def test_perplexity_is_exp_of_the_token_weighted_loss_and_falls_with_training(
    briefly_trained: str,
) -> None:
    dataset = {"uri": "builtin://arithmetic-sft", "split": "test", "maxSamples": 48}
    spec = EvalSpec.model_validate(
        {"metrics": [{"name": "ppl", "type": "perplexity", "dataset": dataset}]}
    )
    found = {}
    for source in (BASE, briefly_trained):
        results = evaluate_metrics(spec, ModelSpec(source=source), batch_size=5)
        found[source] = results["metrics"]["ppl"]
        # Independently: each row's mean loss from transformers, weighted by its token count.
        model, tokenizer = load_model_and_tokenizer(source)
        total_nll, total_tokens = 0.0, 0
        for row in rows_of(dataset, "sft"):
            ids, labels = loss_tokens(tokenizer, row, 2048)
            scored = sum(1 for x in labels[1:] if x != IGNORE_INDEX)
            with torch.no_grad():
                loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
            total_nll += float(loss) * scored
            total_tokens += scored
        assert results["details"]["ppl"]["tokens"] == total_tokens
        assert found[source] == pytest.approx(
            float(torch.tensor(total_nll / total_tokens).exp()), rel=1e-4
        )
    assert found[briefly_trained] < 0.2 * found[BASE], found


# --------------------------------------------------------------------------- the eval job


def test_eval_job_writes_results_and_a_table(
    parrot: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from kubetune_trainer.runtime.single import run_single

    accuracy_rows = [{"prompt": q, "answer": a} for q, a in zip(
        ["What is 3 + 1?", "Add 3 and 1.", "2 + 2 = ?", "What is 8 + 1?", "Say four."],
        ["4", "4", "4", "9", "The answer is 4"], strict=True,
    )]  # fmt: skip
    code_rows = [
        # The parrot's program is "4": valid Python, so trivially true tests pass...
        {"prompt": "Write any valid Python.", "tests": "assert True"},
        # ...tests that need a function fail...
        {"prompt": "Write add(a, b).", "tests": "assert add(2, 3) == 5"},
        # ...and tests that never end are killed.
        {"prompt": "Write a server.", "tests": "while True:\n    pass"},
    ]
    for name, rows in (("qa.jsonl", accuracy_rows), ("code.jsonl", code_rows)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = [
        {"name": "ppl", "type": "perplexity",
         "dataset": {"uri": "builtin://arithmetic-sft", "split": "test", "maxSamples": 16}},
        {"name": "exact_acc", "type": "accuracy", "extractor": "exact", "maxNewTokens": 4,
         "dataset": {"uri": str(tmp_path / "qa.jsonl"), "format": "prompt-only"}},
        {"name": "number_acc", "type": "accuracy", "extractor": "lastNumber", "maxNewTokens": 4,
         "dataset": {"uri": str(tmp_path / "qa.jsonl"), "format": "prompt-only"}},
        {"name": "code", "type": "passAtK", "k": [1], "samples": 1, "maxNewTokens": 4,
         "timeoutSeconds": 1, "memoryMb": 256,
         "dataset": {"uri": str(tmp_path / "code.jsonl"), "format": "prompt-only",
                     "columns": {"answer": "tests"}}},
    ]  # fmt: skip
    ftj = FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "evaluate", "namespace": "t"},
            "spec": {"method": "eval", "model": {"source": parrot}, "eval": {"metrics": metrics}},
        }
    )
    plan = make_plan(
        ftj,
        default_storage=str(tmp_path / "runs"),
        scaling=Scaling(workers=1, devices_per_worker=0, use_gpu=False),
    )
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", "0")
    assert run_single(plan, local_run=False) == 0

    results = json.loads((Path(plan.storage.output_dir) / RESULTS_FILE).read_text())
    assert results["model"] == parrot
    values = results["metrics"]
    assert values["exact_acc"] == pytest.approx(3 / 5)  # "9" and "The answer is 4" miss
    assert values["number_acc"] == pytest.approx(4 / 5)  # the last number of the sentence is 4
    assert values["code"] == pytest.approx(1 / 3)
    code = results["details"]["code"]
    # The endless loop is stopped by whichever limit comes first: the wall clock (a loaded
    # machine) or the CPU-time limit of the same length (an idle one).
    stopped = {k: v for k, v in code["sandbox_status"].items() if k not in ("passed", "failed")}
    assert (code["sandbox_status"]["passed"], code["sandbox_status"]["failed"]) == (1, 1)
    assert stopped in ({"timeout": 1}, {"cpu_limit": 1}), code["sandbox_status"]
    assert code["pass_at_k"] == {"1": pytest.approx(1 / 3)}
    assert values["ppl"] > 1  # a parrot is a poor language model; the value is tested above
    assert results["details"]["ppl"]["rows"] == 16
    assert results["details"]["exact_acc"]["correct"] == 3

    table = capsys.readouterr().out
    assert f"model: {parrot}" in table
    assert any(
        line.split()[:3] == ["exact_acc", "accuracy", "0.6000"] for line in table.splitlines()
    )
    summary = json.loads(
        (tmp_path / "runs" / "t" / "evaluate" / "result-attempt-1.json").read_text()
    )
    assert summary["metrics"]["eval_code"] == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- inference


def test_generate_cli_gives_the_greedy_completion_of_a_local_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deepspeed.accelerator import get_accelerator

    output = tmp_path / "runs" / "default" / "base-job" / "output"
    shutil.copytree(resolve_model_dir(BASE), output)
    # This process imported DeepSpeed (the command line alone does not), whose one-time
    # accelerator notice goes to stdout at first use: let it be said before the CLI's output.
    get_accelerator()
    capsys.readouterr()
    args = ["generate", "finetunejob://base-job", "--storage", str(tmp_path / "runs")]
    for question in QUESTIONS:
        args += ["--prompt", question]
    assert kubetune_main([*args, "--max-new-tokens", "12", "--json"]) == 0
    printed = capsys.readouterr()
    assert "Loading weights" not in printed.err  # transformers' loading bar stays off
    produced = json.loads(printed.out)
    expected = transformers_greedy(BASE, [user(q) for q in QUESTIONS], 12)
    assert [p["completion"] for p in produced] == expected
    assert [p["prompt"] for p in produced] == QUESTIONS
    assert all(p["finishReason"] in ("stop", "length") for p in produced)

    assert (
        kubetune_main(["generate", "missing-job", "--storage", str(tmp_path), "--prompt", "x"]) == 2
    )
    assert "job default/missing-job has no finished output" in capsys.readouterr().err


def post(url: str, body: Any, *, key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def serve(source: str, name: str, **settings: Any) -> ChatServer:
    engine = settings.pop("engine", EngineSettings())
    server = ChatServer(
        ChatModel.load(source, device="cpu", name=name),
        ServerSettings(model_name=name, engine=engine, **settings),
    )
    server.start_background()
    return server


@pytest.fixture(scope="module")
def base_server() -> Iterator[ChatServer]:
    server = serve(BASE, "tiny", max_body_bytes=64 * 1024)
    yield server
    server.stop()


def client(server: ChatServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=key, max_retries=0, timeout=120)


def metric(server: ChatServer, series: str) -> float:
    """The value of one series of the server's /metrics (0 when absent)."""
    url = server.url.removesuffix("/v1") + "/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


COMPLETION_TOKENS = 'kubetune_serve_tokens_total{kind="completion",model="tiny"}'
IN_FLIGHT = 'kubetune_serve_requests_in_flight{model="tiny"}'


def test_served_chat_completions_are_the_greedy_completion(base_server: ChatServer) -> None:
    api = client(base_server)
    expected = transformers_greedy(BASE, [user(q) for q in QUESTIONS[:2]], 10)
    for question, want in zip(QUESTIONS[:2], expected, strict=True):
        reply = api.chat.completions.create(
            model="tiny", messages=user(question), max_tokens=10, temperature=0
        )
        assert reply.object == "chat.completion"
        assert reply.choices[0].message.content == want
        assert reply.usage.completion_tokens <= 10
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    sampled = api.chat.completions.create(
        model="tiny", messages=user("hi"), n=3, temperature=1.0, max_tokens=6, seed=1
    )
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert [m.id for m in api.models.list()] == ["tiny"]


def test_the_openai_client_streams_tokens_as_they_are_generated(base_server: ChatServer) -> None:
    """Each token comes as its own event while the rest is still being generated: when the
    first text arrives, the server has not yet counted this request's completion tokens (it
    does at the end of a generation)."""
    want = transformers_greedy(BASE, [user(QUESTIONS[0])], 60)[0]
    before = metric(base_server, COMPLETION_TOKENS)
    stream = client(base_server).chat.completions.create(
        model="tiny",
        messages=user(QUESTIONS[0]),
        max_tokens=60,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    counted_at_first_piece = None
    finish, usage = None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if choice.delta.content:
            if counted_at_first_piece is None:
                counted_at_first_piece = metric(base_server, COMPLETION_TOKENS)
            pieces.append(choice.delta.content)
        finish = choice.finish_reason or finish
    assert "".join(pieces) == want
    assert len(pieces) > 10, pieces  # one event per token or so, not one blob
    assert counted_at_first_piece == before
    assert finish == "length" and usage is not None and usage.completion_tokens == 60
    assert metric(base_server, COMPLETION_TOKENS) == before + 60


def test_a_long_request_does_not_hold_up_short_ones(base_server: ChatServer) -> None:
    """A prompt near the context limit with a long completion, then short requests: the short
    ones are answered while the long one is still being generated (served one at a time, they
    would wait for it)."""
    api = client(base_server)
    long_prompt = user("1 + 1 = 2. " * 200)  # ~1,800 of the 2,048 tokens of context
    finished: list[str] = []
    first_token = threading.Event()

    def long_request() -> None:
        try:
            stream = api.chat.completions.create(
                model="tiny", messages=long_prompt, max_tokens=200, temperature=0, stream=True
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first_token.set()
            finished.append("long")
        except openai.APIError as err:
            finished.append(f"long failed: {err}")
            first_token.set()

    worker = threading.Thread(target=long_request)
    worker.start()
    assert first_token.wait(timeout=120), "the long request never started generating"
    assert not finished, finished
    for question in QUESTIONS:
        api.chat.completions.create(
            model="tiny", messages=user(question), max_tokens=8, temperature=0
        )
        finished.append("short")
    worker.join(timeout=300)
    assert finished == ["short", "short", "short", "long"]


def test_limits_answer_as_openai_does(base_server: ChatServer) -> None:
    api = client(base_server)
    with pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(model="tiny", messages=user("word " * 2100), max_tokens=10)
    assert refused.value.code == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in refused.value.message

    status, body = post(f"{base_server.url}/chat/completions", {"messages": user("x" * 70 * 1024)})
    assert (status, body["error"]["code"]) == (413, "request_too_large")


def chat_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The chat completions' request log lines (the test also calls GET /metrics)."""
    return [
        m
        for m in (r.getMessage() for r in caplog.records)
        if "event=request" in m and "path=/v1/chat/completions" in m
    ]


def test_health_metrics_and_one_log_line_per_request(
    base_server: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    health = base_server.url.removesuffix("/v1") + "/health"
    with urllib.request.urlopen(health, timeout=10) as response:
        assert json.loads(response.read()) == {"status": "ok", "model": "tiny"}
    served = 'kubetune_serve_requests_total{code="200",model="tiny",path="/v1/chat/completions"}'
    before = metric(base_server, served)
    with caplog.at_level(logging.INFO, logger="kubetune.serve"):
        client(base_server).chat.completions.create(
            model="tiny", messages=user("hi"), max_tokens=3, temperature=0
        )
        post(f"{base_server.url}/chat/completions", {"messages": []})
        # A request's line is written once its response has been sent entirely, so the client
        # can read the answer a moment before the line exists: wait for it, briefly.
        deadline = time.monotonic() + 10
        while len(chat_lines(caplog)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = chat_lines(caplog)
    assert len(lines) == 2, lines
    assert "path=/v1/chat/completions status=200" in lines[0] and "completion_tokens=3" in lines[0]
    assert "status=400" in lines[1]
    assert metric(base_server, served) == before + 1
    assert metric(base_server, 'kubetune_serve_request_duration_seconds_count{model="tiny"}') > 0


def test_a_slow_generation_is_stopped_and_a_full_server_says_so() -> None:
    server = serve(BASE, "tiny", timeout_seconds=2, engine=EngineSettings(max_requests=1))
    try:
        api = client(server)
        outcome: list[Any] = []

        def long_request() -> None:
            try:
                # Greedy: a sampled generation of the untrained model may draw its end-of-turn
                # token early and finish in time.
                api.chat.completions.create(
                    model="tiny", messages=user("hi"), max_tokens=1900, temperature=0
                )
            except openai.APIStatusError as err:
                outcome.append(err)

        worker = threading.Thread(target=long_request)
        worker.start()
        deadline = time.monotonic() + 60
        while metric(server, IN_FLIGHT) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(openai.APIStatusError) as full:
            api.chat.completions.create(model="tiny", messages=user("hi"), max_tokens=2)
        assert (full.value.status_code, full.value.code) == (503, "server_overloaded")
        worker.join(timeout=120)
        assert [(e.status_code, e.code) for e in outcome] == [(504, "timeout")]
    finally:
        server.stop()


def test_kubetune_serve_names_the_model_by_its_job(tmp_path: Path) -> None:
    output = tmp_path / "runs" / "default" / "base-job" / "output"
    shutil.copytree(resolve_model_dir(BASE), output)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "kubetune.cli", "serve", "base-job", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--storage", str(tmp_path / "runs")], stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, "kubetune serve exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
                    assert json.loads(r.read())["data"][0]["id"] == "base-job"
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "kubetune serve never answered"
                time.sleep(0.5)
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        reply = api.chat.completions.create(
            model="base-job", messages=user(QUESTIONS[0]), max_tokens=10, temperature=0
        )
        assert reply.model == "base-job"
        assert (
            reply.choices[0].message.content
            == transformers_greedy(BASE, [user(QUESTIONS[0])], 10)[0]
        )
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0
    assert f"serving base-job at http://127.0.0.1:{port}/v1" in server.stdout.read()


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0]"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 5}, 400, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": True, "n": 2}, 400, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "model": "gpt-9"}, 404, "model"),
    ],
)
def test_bad_requests_get_openai_errors(
    base_server: ChatServer, body: dict[str, Any], status: int, param: str
) -> None:
    got, reply = post(f"{base_server.url}/chat/completions", body)
    assert got == status
    assert reply["error"]["param"] == param
    assert reply["error"]["message"]


# --------------------------------------------------------------------------- judge


def judge_on(source: str) -> Iterator[ChatServer]:
    server = serve(source, "parrot", api_key="judge-key", record_requests=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def judge_server(parrot: str) -> Iterator[ChatServer]:
    yield from judge_on(parrot)


@pytest.fixture(scope="module")
def pairwise_judge_server(a_parrot: str) -> Iterator[ChatServer]:
    yield from judge_on(a_parrot)


PROMPTS_DATASET = {"uri": "builtin://arithmetic-prompts", "split": "test", "maxSamples": 4}
SECRET = {"name": "judge", "key": "api-key"}


def judge_metric(server_url: str, mode: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "quality",
        "type": "judge",
        "maxNewTokens": 8,
        "dataset": PROMPTS_DATASET,
        "judge": {"endpoint": server_url, "model": "parrot", "mode": mode,
                  "apiKeySecret": SECRET, "retries": 0},
        **extra,
    }  # fmt: skip


@pytest.fixture
def judge_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune_trainer.plan import SecretKeyRef

    monkeypatch.setenv(secret_env_name(SecretKeyRef(**SECRET)), "judge-key")


def test_single_judge_scores_with_the_served_judge(
    judge_server: ChatServer, judge_key: None
) -> None:
    spec = EvalSpec.model_validate({"metrics": [judge_metric(judge_server.url, "single")]})
    before = len(judge_server.requests)
    results = evaluate_metrics(spec, ModelSpec(source=BASE))
    details = results["details"]["quality"]
    assert results["metrics"]["quality"] == 4.0
    assert (details["scored"], details["parse_failures"], details["request_failures"]) == (4, 0, 0)
    assert len(judge_server.requests) - before == 4


def test_unreadable_judge_replies_are_counted_not_scored(
    base_server: ChatServer, judge_key: None
) -> None:
    """The untrained model as judge babbles: every reply is a parse failure."""
    metric = judge_metric(base_server.url, "single")
    metric["judge"] |= {"model": "tiny", "apiKeySecret": None}
    del metric["judge"]["apiKeySecret"]
    spec = EvalSpec.model_validate({"metrics": [metric]})
    results = evaluate_metrics(spec, ModelSpec(source=BASE))
    details = results["details"]["quality"]
    assert results["metrics"]["quality"] is None
    assert (details["scored"], details["parse_failures"]) == (0, 4)
    assert all(example["reply"] is not None for example in details["failure_examples"])


def test_pairwise_judge_asks_both_orders(
    pairwise_judge_server: ChatServer, judge_key: None
) -> None:
    judge_server = pairwise_judge_server
    metric = judge_metric(
        judge_server.url, "pairwise", baselineModel={"source": "builtin://tiny-qwen2"}
    )
    spec = EvalSpec.model_validate({"metrics": [metric]})
    before = len(judge_server.requests)
    results = evaluate_metrics(spec, ModelSpec(source=BASE))
    requests = judge_server.requests[before:]
    assert len(requests) == 8

    def responses(body: dict[str, Any]) -> tuple[str, str, str]:
        text = body["messages"][-1]["content"]
        question, rest = text.split("\n\n[Response A]\n", 1)
        a, b = rest.split("\n\n[Response B]\n", 1)
        return question, a, b

    by_question: dict[str, list[tuple[str, str]]] = {}
    for body in requests:
        question, a, b = responses(body)
        by_question.setdefault(question, []).append((a, b))
    assert len(by_question) == 4
    for pair in by_question.values():
        (a1, b1), (a2, b2) = pair
        assert (a1, b1) == (b2, a2) and a1 != b1  # the same two responses, positions swapped

    # The parrot always answers "A": pure position bias, which the swap cancels.
    details = results["details"]["quality"]
    assert results["metrics"]["quality"] == 0.5
    assert (details["ties"], details["position_consistent"], details["parse_failures"]) == (4, 0, 0)


def test_the_judge_endpoint_needs_the_key(judge_server: ChatServer) -> None:
    status, body = post(
        f"{judge_server.url}/chat/completions", {"messages": [{"role": "user", "content": "x"}]}
    )
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


# --------------------------------------------------------------------------- win rate


def test_win_rate_scores_both_sides_with_the_reward_model(parrot: str, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from kubetune_trainer.evaluation.rewards import RewardModelScorer

    torch.manual_seed(0)
    reward_dir = tmp_path / "reward"
    reward = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_dir(BASE), num_labels=1
    )
    reward.save_pretrained(reward_dir)
    load_tokenizer(BASE).save_pretrained(reward_dir)

    dataset = {"uri": "builtin://arithmetic-prompts", "split": "test", "maxSamples": 6}
    metric = {
        "name": "win",
        "type": "winRate",
        "maxNewTokens": 6,
        "dataset": dataset,
        "baselineModel": {"source": BASE},
        "rewardModel": {"source": str(reward_dir)},
    }
    results = evaluate_metrics(
        EvalSpec.model_validate({"metrics": [metric]}), ModelSpec(source=parrot)
    )

    prompts = [r["prompt"] for r in rows_of(dataset, "prompt")]
    scorer = RewardModelScorer(ModelSpec(source=str(reward_dir)))
    mine = scorer.score(prompts, transformers_greedy(parrot, prompts, 6))
    theirs = scorer.score(prompts, transformers_greedy(BASE, prompts, 6))
    wins = sum(m > t for m, t in zip(mine, theirs, strict=True))
    ties = sum(m == t for m, t in zip(mine, theirs, strict=True))
    details = results["details"]["win"]
    assert (details["wins"], details["ties"]) == (wins, ties)
    assert results["metrics"]["win"] == pytest.approx((wins + ties / 2) / len(prompts))

    # The same model on both sides ties everywhere.
    metric["baselineModel"] = {"source": parrot}
    same = evaluate_metrics(
        EvalSpec.model_validate({"metrics": [metric]}), ModelSpec(source=parrot)
    )
    assert same["metrics"]["win"] == 0.5
    assert same["details"]["win"]["ties"] == len(prompts)
