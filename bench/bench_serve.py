"""Serving benchmark: does a long request hold up short ones? One JSON line on stdout (progress
on stderr).

Starts ``kubetune serve builtin://tiny-llama`` (a subprocess, as a user runs it) and talks to it
with the ``openai`` client. The workload: ``--long`` requests whose prompts nearly fill the
model's context (2,048 tokens), all arriving at once, and ``--short`` short requests arriving
every ``--gap`` seconds from then on. It is served twice, in the same run:

- **sequential**: one request at a time, in arrival order (what a server generating one request
  at a time gives; the baseline);
- **concurrent**: every request sent when it arrives (the server batches them).

A short request's latency counts from its arrival to its last byte, so in sequential service it
includes the wait behind the long ones. Before both, each short prompt alone on the idle server
gives the **unloaded** latency. Ratios compare figures of the same run only.

Run: ``python bench/bench_serve.py [--long 2] [--short 12]`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parents[1]


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Request:
    kind: str  # "long" or "short"
    arrival: float  # seconds after the start of the workload
    messages: list[dict[str, str]]
    max_tokens: int


@dataclass
class Done:
    request: Request
    latency: float
    completion_tokens: int
    finished_at: float


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def workload(longs: int, shorts: int, gap: float) -> list[Request]:
    long_text = "Add one to each number: " + " ".join(str(n) for n in range(440))
    requests = [
        Request("long", 0.0, [{"role": "user", "content": f"{long_text} ({i})"}], 128)
        for i in range(longs)
    ]
    requests += [
        Request("short", 0.1 + i * gap, [{"role": "user", "content": f"What is {i} + 1?"}], 12)
        for i in range(shorts)
    ]
    return requests


def ask(api: openai.OpenAI, request: Request) -> int:
    reply = api.chat.completions.create(
        model="tiny",
        messages=request.messages,  # type: ignore[arg-type]
        max_tokens=request.max_tokens,
        temperature=0,
    )
    return reply.usage.completion_tokens if reply.usage else 0


def serve_sequentially(api: openai.OpenAI, requests: list[Request]) -> tuple[list[Done], float]:
    """One at a time in arrival order; each request's clock starts at its arrival."""
    start = time.monotonic()
    done = []
    for request in sorted(requests, key=lambda r: r.arrival):
        now = time.monotonic() - start
        if now < request.arrival:
            time.sleep(request.arrival - now)
        tokens = ask(api, request)
        finished = time.monotonic() - start
        done.append(Done(request, finished - request.arrival, tokens, finished))
    return done, time.monotonic() - start


def serve_concurrently(api: openai.OpenAI, requests: list[Request]) -> tuple[list[Done], float]:
    """Every request sent at its arrival, each from its own thread."""
    start = time.monotonic()
    done: list[Done] = []
    lock = threading.Lock()

    def client(request: Request) -> None:
        delay = request.arrival - (time.monotonic() - start)
        if delay > 0:
            time.sleep(delay)
        tokens = ask(api, request)
        finished = time.monotonic() - start
        with lock:
            done.append(Done(request, finished - request.arrival, tokens, finished))

    threads = [threading.Thread(target=client, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done, time.monotonic() - start


def summary(done: list[Done], seconds: float) -> dict[str, float]:
    short = [d.latency for d in done if d.request.kind == "short"]
    long = [d.latency for d in done if d.request.kind == "long"]
    tokens = sum(d.completion_tokens for d in done)
    return {
        "shortP50Seconds": round(statistics.median(short), 3),
        "shortP99Seconds": round(percentile(short, 99), 3),
        "longMeanSeconds": round(statistics.mean(long), 3) if long else 0.0,
        "seconds": round(seconds, 2),
        "completionTokens": tokens,
        "tokensPerSecond": round(tokens / seconds, 1),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "kubetune.cli", "serve", "builtin://tiny-llama"]
    command += ["--port", str(port), "--served-model-name", "tiny", "--device", "cpu"]
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"kubetune serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("kubetune serve did not answer /health")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", type=int, default=2, help="long requests, arriving at once")
    parser.add_argument("--short", type=int, default=12, help="short requests")
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between short arrivals")
    args = parser.parse_args()
    began = time.monotonic()
    port = free_port()
    say(f"starting kubetune serve on port {port}")
    server = start_server(port)
    try:
        api = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=600, max_retries=0
        )
        requests = workload(args.long, args.short, args.gap)
        prompt_tokens = api.chat.completions.create(
            model="tiny", messages=requests[0].messages, max_tokens=1, temperature=0
        ).usage.prompt_tokens  # also warms the server up
        say(f"long prompts: {prompt_tokens} tokens of the 2048 of context")
        shorts = [r for r in requests if r.kind == "short"]
        unloaded = []
        for request in shorts:
            started = time.monotonic()
            ask(api, request)
            unloaded.append(time.monotonic() - started)
        say(f"unloaded short p50 {statistics.median(unloaded):.3f}s")
        sequential = summary(*serve_sequentially(api, requests))
        say(f"sequential: {sequential}")
        concurrent = summary(*serve_concurrently(api, requests))
        say(f"concurrent: {concurrent}")
    finally:
        server.terminate()
        server.wait(timeout=60)
    unloaded_p50 = statistics.median(unloaded)
    result = {
        "bench": "serve",
        "model": "builtin://tiny-llama",
        "longRequests": args.long,
        "longPromptTokens": prompt_tokens,
        "shortRequests": args.short,
        "unloaded": {
            "shortP50Seconds": round(unloaded_p50, 3),
            "shortP99Seconds": round(percentile(unloaded, 99), 3),
        },
        "sequential": sequential,
        "concurrent": concurrent,
        "ratios": {
            "shortP99LoadedOverUnloadedP50": round(concurrent["shortP99Seconds"] / unloaded_p50, 2),
            "shortP99ConcurrentOverSequential": round(
                concurrent["shortP99Seconds"] / sequential["shortP99Seconds"], 3
            ),
            "tokensPerSecondConcurrentOverSequential": round(
                concurrent["tokensPerSecond"] / sequential["tokensPerSecond"], 2
            ),
        },
        "cpus": os.cpu_count(),
        "loadAverage1m": round(os.getloadavg()[0], 1),
        "benchSeconds": round(time.monotonic() - began, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
