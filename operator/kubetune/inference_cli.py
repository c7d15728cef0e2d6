"""`kubetune generate` and `kubetune serve`: talk to a model on this machine.

MODEL is a model directory, a model URI the trainer understands (builtin://, hf://, s3://,
pvc://), or a finished local job: finetunejob://NAME, a bare job NAME, or the job's run
directory, looked up under --storage the way `kubetune run --local` lays runs out
(STORAGE/NAMESPACE/NAME/output). Prompts are rendered with the model's chat template.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path

from kubetune.planner import LOCAL_STORAGE
from kubetune_trainer.errors import UserError
from kubetune_trainer.exit_codes import EXIT_USAGE
from kubetune_trainer.plan import MODEL_SCHEMES, check_uri

TRAINER_SCHEMES = ("builtin", "hf", "s3", "pvc", "file")


class ModelNotFound(UserError):
    """MODEL names nothing this command can load (exit 2, like a usage error)."""

    exit_code = EXIT_USAGE


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def resolve_model(model: str, *, storage: str = LOCAL_STORAGE, namespace: str = "default") -> str:
    """The model source for MODEL (see the module docstring); raises ModelNotFound."""
    if "://" in model:
        scheme, rest = model.split("://", 1)
        if scheme in TRAINER_SCHEMES:
            try:
                return check_uri(model, MODEL_SCHEMES, "model source")
            except ValueError as err:
                raise ModelNotFound(f"'{model}': {err}") from None
        if scheme != "finetunejob":
            raise ModelNotFound(f"'{model}': unknown scheme '{scheme}://'")
        job = rest.strip("/")
    else:
        path = Path(model)
        if _is_model_dir(path):
            return str(path.resolve())
        if _is_model_dir(path / "output"):
            return str((path / "output").resolve())
        if path.exists() or "/" in model:
            raise ModelNotFound(f"'{model}': no model here (no config.json in it or in output/)")
        job = model
    output = Path(storage) / namespace / job / "output"
    if not _is_model_dir(output):
        raise ModelNotFound(
            f"job {namespace}/{job} has no finished output at {output}; run it with "
            "`kubetune run --local` (or pass --storage/--namespace where it ran)"
        )
    return str(output.resolve())


def served_model_name(model: str, source: str) -> str:
    """The id a served model goes by: its job's name, or the model's own name, never a path
    of this machine (finetunejob://NAME and a bare NAME: NAME; builtin://NAME: NAME; hf://ORG/NAME:
    ORG/NAME; a job's run directory or its output: the job; another directory: its name)."""
    if "://" in model:
        scheme, rest = model.split("://", 1)
        rest = rest.strip("/")
        if scheme in ("finetunejob", "builtin", "hf"):
            return rest
        return rest.rsplit("/", 1)[-1] or scheme
    path = Path(source)
    if Path(model).name == model and not Path(model).exists():
        return model  # a local job's name
    return path.parent.name if path.name == "output" else path.name


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="model directory, builtin://NAME, hf://ORG/NAME, or a finished local job "
        "(finetunejob://NAME or NAME)",
    )
    parser.add_argument(
        "--storage", default=LOCAL_STORAGE, help="where local jobs ran (as for `kubetune run`)"
    )
    parser.add_argument("--namespace", default="default", help="namespace of a local job")
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N (auto: cuda when available)"
    )


def cmd_generate(args: argparse.Namespace) -> int:
    source = resolve_model(args.model, storage=args.storage, namespace=args.namespace)
    from kubetune_trainer.reporting.logs import quiet_libraries
    from kubetune_trainer.serving.inference import ChatModel

    quiet_libraries()  # the answer is the output: no loading bars around it
    chat = ChatModel.load(source, device=args.device)
    if args.score is not None and not chat.score_conditioned:
        raise UserError(
            f"--score: {args.model} was not trained with score conditioning",
            exit_code=EXIT_USAGE,
        )
    system = [{"role": "system", "content": args.system}] if args.system else []
    prompts = [[*system, {"role": "user", "content": text}] for text in args.prompt]
    results = chat.complete(
        prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        score=args.score,
    )
    if args.json:
        out = [
            {
                "prompt": text,
                "completion": samples[0].text,
                "finishReason": samples[0].finish_reason,
                "completionTokens": samples[0].completion_tokens,
            }
            for text, samples in zip(args.prompt, results, strict=True)
        ]
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        for index, samples in enumerate(results):
            if len(results) > 1:
                print(f"--- {index + 1}: {args.prompt[index]}")
            print(samples[0].text)
    return 0


def check_can_listen(host: str, port: int) -> None:
    """Fail before the model loads when the address cannot be served."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise UserError(
            f"cannot listen on {host}:{port}: {reason}",
            hint="choose another --port (or stop what listens there)",
            exit_code=EXIT_USAGE,
        ) from None


def cmd_serve(args: argparse.Namespace) -> int:
    source = resolve_model(args.model, storage=args.storage, namespace=args.namespace)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise UserError(f"${args.api_key_env} is empty or unset", exit_code=EXIT_USAGE)
    check_can_listen(args.host, args.port)
    from kubetune_trainer.reporting.logs import configure_logging
    from kubetune_trainer.serving.engine import EngineSettings
    from kubetune_trainer.serving.inference import ChatModel
    from kubetune_trainer.serving.openai_server import ServerSettings, serve

    configure_logging()
    name = args.served_model_name or served_model_name(args.model, source)
    settings = ServerSettings(
        model_name=name,
        api_key=api_key,
        timeout_seconds=args.timeout,
        engine=EngineSettings(max_requests=args.max_requests),
    )
    serve(ChatModel.load(source, device=args.device, name=name), settings, host=args.host,
          port=args.port)  # fmt: skip
    return 0


def add_inference_commands(commands: argparse._SubParsersAction) -> None:
    """Register `generate` and `serve` on the `kubetune` command's subparsers."""
    generate = commands.add_parser(
        "generate",
        help="complete prompts with a model (its chat template applied)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_arguments(generate)
    generate.add_argument(
        "--prompt", action="append", required=True, help="a user message (repeatable)"
    )
    generate.add_argument("--system", help="a system message before each prompt")
    generate.add_argument("--max-new-tokens", type=int, default=128)
    generate.add_argument(
        "--temperature", type=float, default=0.0, help="0 (default) is greedy decoding"
    )
    generate.add_argument("--seed", type=int, help="seed for sampling (temperature > 0)")
    generate.add_argument(
        "--score",
        type=float,
        help="the score to ask a score-conditioned model for (default: its highest)",
    )
    generate.add_argument("--json", action="store_true", help="print a JSON list of results")
    generate.set_defaults(func=cmd_generate)

    serve = commands.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible chat-completions API",
        description="Serve MODEL at http://HOST:PORT/v1 (POST /v1/chat/completions, with "
        "streaming; GET /v1/models; /health; /metrics). " + (__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--served-model-name",
        "--served-name",
        help="model id clients send and /v1/models lists (default: the job's or model's name)",
    )
    serve.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds one generation may take before it is stopped (504)",
    )
    serve.add_argument(
        "--max-requests",
        type=int,
        default=32,
        help="requests in flight at once; more are refused with 503 until some finish",
    )
    serve.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="require 'Authorization: Bearer KEY' with KEY read from this environment variable",
    )
    serve.set_defaults(func=cmd_serve)
