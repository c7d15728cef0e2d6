"""Runs a user can drive, without training: the state of a local run read back from its files,
the runner's handling of Ctrl-C with real child processes, the trainer's stop signals, the
tables of `kubetune list`/`status` (local and cluster), and how `kubetune serve` names a model
and refuses what does not fit."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kubetune.api import FineTuneJob
from kubetune.inference_cli import served_model_name
from kubetune.local import LogWriter, format_duration, run_attempt, run_forwarding_signals
from kubetune.planner import make_plan
from kubetune.run_records import (
    Attempt,
    LocalState,
    decide_state,
    read_run,
    run_dirs,
)
from kubetune.runs_cluster import age, choose_pod0, list_table, status_lines
from kubetune.runs_local import RunNotFound, find_run, follow
from kubetune.runs_local import list_table as local_list_table
from kubetune_trainer.exit_codes import EXIT_INTERRUPTED, EXIT_PREEMPTED
from kubetune_trainer.serving.openai_server import (
    RequestError,
    completion_budget,
    cut_at_stop,
    parse_chat_request,
    safe_prefix,
)
from kubetune_trainer.training.checkpoint_fs import CheckpointStore

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------- local run state


def attempt(record: dict | None, result: dict | None = None, alive: bool = False) -> Attempt:
    return Attempt(1, record, result, alive)


@pytest.mark.parametrize(
    ("record", "result", "alive", "state"),
    [
        ({"pid": 1}, None, True, LocalState.running),
        ({"pid": 1}, None, False, LocalState.stopped),  # the runner vanished mid-attempt
        ({"exitCode": 0}, {"preempted": False}, False, LocalState.succeeded),
        ({"exitCode": EXIT_PREEMPTED}, {"preempted": True}, False, LocalState.interrupted),
        ({"exitCode": EXIT_INTERRUPTED}, None, False, LocalState.stopped),
        ({"exitCode": -9}, None, False, LocalState.stopped),
        ({"exitCode": 1}, None, False, LocalState.failed),
        (None, {"preempted": True}, False, LocalState.interrupted),  # a run from before records
        (None, {"preempted": False}, False, LocalState.succeeded),
    ],
)
def test_the_state_of_a_local_run_follows_its_latest_attempt(record, result, alive, state):
    assert decide_state(attempt(record, result, alive)) == state


def test_no_attempt_is_pending():
    assert decide_state(None) == LocalState.pending


def write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def fake_run(root: Path, namespace: str = "demo", name: str = "tiny") -> Path:
    """A run directory as two attempts leave it: the first interrupted at step 12, the second
    resumed from the checkpoint at 12 and finished at 30."""
    run = root / namespace / name
    job = FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "method": "sft",
                "model": {"source": "builtin://tiny-llama"},
                "data": {"sources": [{"uri": "builtin://arithmetic-sft"}]},
            },
        }
    )
    for n in (1, 2):
        write(
            run / f"plan-attempt-{n}.json",
            make_plan(job, attempt=n, default_storage=str(root)).to_json(),
        )
    write(
        run / "logs" / "attempt-1.json",
        {"attempt": 1, "started": "2026-01-01T10:00:00Z", "finished": "2026-01-01T10:01:00Z",
         "exitCode": EXIT_PREEMPTED, "resumedFrom": None},
    )  # fmt: skip
    write(
        run / "logs" / "attempt-2.json",
        {"attempt": 2, "started": "2026-01-01T11:00:00Z", "finished": "2026-01-01T11:00:30Z",
         "exitCode": 0, "resumedFrom": 12},
    )  # fmt: skip
    write(run / "logs" / "attempt-2.log", "line one\nline two\n")
    write(run / "result-attempt-1.json", {"finalStep": 12, "preempted": True})
    write(run / "result-attempt-2.json", {"finalStep": 30, "preempted": False})
    write(run / "progress.json", {"step": 30, "totalSteps": 30, "loss": "0.5", "skippedRows": 2})
    store = CheckpointStore(run)
    store.register_attempt(2)
    write(root / "staged" / "model.safetensors", "weights")
    store.publish(root / "staged", 30, 2)
    write(run / "output" / "config.json", {})
    return run


def test_a_local_run_is_read_back_from_its_files(tmp_path: Path):
    run = fake_run(tmp_path)
    view = read_run(run)
    assert (view.namespace, view.name, view.method) == ("demo", "tiny", "sft")
    assert view.state == LocalState.succeeded and view.attempt == 2
    assert (view.step, view.total_steps, view.loss) == (30, 30, "0.5")
    assert view.seconds == 90.0  # 60 s, then 30 s
    assert (view.resumed_from, view.skipped_rows, view.last_checkpoint) == (12, 2, 30)
    assert view.output == str(run / "output")
    assert view.log == run / "logs" / "attempt-2.log"
    assert [a["exitCode"] for a in view.attempts] == [EXIT_PREEMPTED, 0]
    assert json.loads(json.dumps(view.to_dict()))["state"] == "Succeeded"


def test_runs_are_found_by_name_or_namespace(tmp_path: Path):
    fake_run(tmp_path, "demo", "tiny")
    fake_run(tmp_path, "other", "tiny")
    fake_run(tmp_path, "demo", "solo")
    assert [d.parent.name + "/" + d.name for d in run_dirs(tmp_path)] == [
        "demo/solo", "demo/tiny", "other/tiny"
    ]  # fmt: skip
    assert find_run(tmp_path, "solo", None) == tmp_path / "demo" / "solo"
    assert find_run(tmp_path, "tiny", "other") == tmp_path / "other" / "tiny"
    with pytest.raises(RunNotFound, match=r"several namespaces .*add --namespace"):
        find_run(tmp_path, "tiny", None)
    with pytest.raises(RunNotFound, match="no local run named nope"):
        find_run(tmp_path, "nope", None)


def test_the_local_list_table(tmp_path: Path):
    lines = local_list_table([read_run(fake_run(tmp_path))])
    assert lines[0].split() == [
        "NAMESPACE", "JOB", "METHOD", "STATE", "STEP", "LOSS", "DURATION", "OUTPUT"
    ]  # fmt: skip
    assert lines[1].split()[:7] == ["demo", "tiny", "sft", "Succeeded", "30/30", "0.5", "1m30s"]


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (42.4, "42s"), (65, "1m05s"), (7380, "2h03m")]
)
def test_durations_read_like_a_clock(seconds: float, text: str):
    assert format_duration(seconds) == text


def test_follow_prints_what_is_appended_until_the_run_ends(tmp_path: Path):
    log = tmp_path / "attempt-1.log"
    log.write_bytes(b"first\n")
    polls = iter([True, True, False])

    def running() -> bool:
        alive = next(polls)
        if not alive:
            with log.open("ab") as out:
                out.write(b"last\n")  # written as the run ended
        else:
            with log.open("ab") as out:
                out.write(b"more\n")
        return alive

    assert b"".join(follow(log, running, poll=0)) == b"first\nmore\nmore\nlast\n"


# --------------------------------------------------------------------------- the runner


def test_progress_bars_leave_one_line_in_the_log():
    out = io.BytesIO()
    writer = LogWriter(out)
    for chunk in (
        b"start\n 10%|#",
        b"   | 1/10\r 50%|#####",
        b" | 5/10\r100%|###| 10/10\n",
        b"end",
    ):
        writer.write(chunk)
    writer.close()
    assert out.getvalue() == b"start\n100%|###| 10/10\nend\n"


TRAINER_DOUBLE = textwrap.dedent(
    """
    import signal, sys, time
    # Like kubetune-train: SIGTERM means save at the next step, then exit 75. SIGINT is what
    # the terminal would send; the runner must never let it reach us.
    signal.signal(signal.SIGINT, lambda *_: sys.exit(3))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("ready", flush=True)
    while not stop:
        time.sleep(0.01)
    if sys.argv[1] == "hang":  # a save that never ends
        while True:
            time.sleep(1)
    print("saved", flush=True)
    sys.exit(75)
    """
)


def runner_script(tmp_path: Path, mode: str) -> Path:
    """A process running the runner on the double above, so signals can be sent to its group
    as a terminal would."""
    (tmp_path / "double.py").write_text(TRAINER_DOUBLE)
    script = tmp_path / "runner.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            from pathlib import Path
            from kubetune.local import run_attempt
            code = run_attempt(
                [sys.executable, {str(tmp_path / "double.py")!r}, {mode!r}],
                {{}},
                Path({str(tmp_path / "run")!r}),
                1,
            )
            sys.exit(code)
            """
        )
    )
    return script


def start_runner(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    runner = subprocess.Popen(
        [sys.executable, str(runner_script(tmp_path, mode))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert runner.stdout is not None
    assert runner.stdout.readline() == "ready\n"
    return runner


def test_ctrl_c_reaches_the_runner_alone_which_asks_the_trainer_to_save(tmp_path: Path):
    runner = start_runner(tmp_path, "save")
    os.killpg(runner.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == EXIT_PREEMPTED, out
    assert "interrupted: saving a checkpoint at the next step (Ctrl-C again to stop at once)" in out
    assert "saved" in out
    log = (tmp_path / "run" / "logs" / "attempt-1.log").read_text()
    assert log == "ready\nsaved\n"
    record = json.loads((tmp_path / "run" / "logs" / "attempt-1.json").read_text())
    assert record["exitCode"] == EXIT_PREEMPTED and record["finished"]


def test_a_second_ctrl_c_stops_the_trainer_and_its_children_at_once(tmp_path: Path):
    runner = start_runner(tmp_path, "hang")
    os.killpg(runner.pid, signal.SIGINT)
    assert runner.stdout is not None
    assert "interrupted" in runner.stdout.readline() + runner.stdout.readline()
    record = json.loads((tmp_path / "run" / "logs" / "attempt-1.json").read_text())
    os.killpg(runner.pid, signal.SIGINT)
    assert runner.wait(timeout=60) == EXIT_INTERRUPTED
    with pytest.raises(ProcessLookupError):
        os.kill(record["pid"], 0)  # the trainer's group is gone


def test_the_runner_returns_the_trainer_exit_code_and_keeps_its_output(tmp_path: Path):
    log = tmp_path / "out.log"
    code = run_forwarding_signals(
        [sys.executable, "-c", "print('hello'); raise SystemExit(65)"], dict(os.environ), log
    )
    assert code == 65
    assert log.read_text() == "hello\n"
    code = run_attempt([sys.executable, "-c", "pass"], dict(os.environ), tmp_path / "r", 3)
    assert code == 0
    assert json.loads((tmp_path / "r" / "logs" / "attempt-3.json").read_text())["exitCode"] == 0


STOP_SIGNALS = textwrap.dedent(
    """
    import os, signal, sys
    from kubetune_trainer.runtime.signals import StopSignals
    # Python's own Ctrl-C handler, even when this runs where SIGINT starts ignored (a job
    # started in the background by a non-interactive shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        print("first", stop.requested(), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        print("again", stop.requested(), flush=True)
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            print("second SIGINT: KeyboardInterrupt", flush=True)
    print("restored", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    """
)


def test_the_trainer_saves_on_a_first_ctrl_c_and_stops_on_a_second():
    done = subprocess.run(
        [sys.executable, "-c", STOP_SIGNALS], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "first True",
        "again True",
        "second SIGINT: KeyboardInterrupt",
        "restored True",
    ]


# --------------------------------------------------------------------------- cluster tables

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def pod(name: str, attempt: int, index: str | None = None, role: str | None = None) -> dict:
    labels = {"kubetune.io/attempt": str(attempt)}
    if index is not None:
        labels["batch.kubernetes.io/job-completion-index"] = index
    if role is not None:
        labels["kubetune.io/role"] = role
    return {
        "metadata": {"name": name, "labels": labels, "creationTimestamp": "2026-01-01T11:00:00Z"}
    }


def test_pod0_is_the_first_index_or_the_ray_head_of_the_current_attempt():
    pods = [pod("a1-0", 1, "0"), pod("a2-1", 2, "1"), pod("a2-0", 2, "0")]
    assert choose_pod0(pods, 2)["metadata"]["name"] == "a2-0"
    ray = [pod("worker", 1, role="worker"), pod("head", 1, role="head")]
    assert choose_pod0(ray, 1)["metadata"]["name"] == "head"
    assert choose_pod0(pods, 3) is None


def cluster_job(**status: object) -> dict:
    return {
        "metadata": {
            "name": "sft",
            "namespace": "team",
            "creationTimestamp": "2026-01-01T11:55:00Z",
        },
        "spec": {"method": "sft"},
        "status": status,
    }


def test_the_cluster_list_shows_phase_progress_and_age():
    jobs = [
        cluster_job(
            phase="Running", attempt=2, progress={"step": 5, "totalSteps": 9, "loss": "1.2"}
        )
    ]
    rows = list_table(jobs, NOW, namespaces=True)
    assert rows[1] == ("team", "sft", "sft", "Running", "5/9", "1.2", "2", "5m")
    assert list_table([cluster_job()], NOW, namespaces=False)[1][2:4] == ("Pending", "-")


def test_cluster_status_shows_checkpoint_conditions_and_events():
    job = cluster_job(
        phase="Succeeded",
        attempt=1,
        progress={"step": 9, "totalSteps": 9, "loss": "0.1"},
        lastCheckpoint={"uri": "s3://b/ckpt", "step": 9},
        conditions=[
            {"type": "Succeeded", "status": "True", "reason": "Succeeded", "message": "done"}
        ],
    )
    events = [
        {
            "type": "Normal",
            "reason": "Launched",
            "message": "attempt 1",
            "lastTimestamp": "2026-01-01T11:59:00Z",
        }
    ]
    text = "\n".join(status_lines(job, events, NOW))
    assert "phase:       Succeeded" in text
    assert "checkpoint:  step 9 at s3://b/ckpt" in text
    assert "CONDITIONS" in text and "EVENTS" in text
    assert any(line.split()[:3] == ["1m", "Normal", "Launched"] for line in text.splitlines())


def test_age_reads_like_kubectl():
    assert [age(t, NOW) for t in ("2026-01-01T11:59:30Z", "2026-01-01T09:00:00Z", None)] == [
        "30s", "3h", "-"
    ]  # fmt: skip
    assert age("2026-01-01T11:58:00.123456Z", NOW) == "1m"  # an event's eventTime


# --------------------------------------------------------------------------- serving


@pytest.mark.parametrize(
    ("model", "source", "name"),
    [
        ("demo-dpo", "/x/runs/demo/demo-dpo/output", "demo-dpo"),
        ("finetunejob://demo-dpo", "/x/runs/demo/demo-dpo/output", "demo-dpo"),
        ("runs/demo/demo-dpo/output", "/x/runs/demo/demo-dpo/output", "demo-dpo"),
        ("runs/demo/demo-dpo", "/x/runs/demo/demo-dpo/output", "demo-dpo"),
        ("builtin://tiny-llama", "builtin://tiny-llama", "tiny-llama"),
        ("hf://Qwen/Qwen2.5-0.5B", "hf://Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B"),
    ],
)
def test_a_served_model_is_named_never_by_its_path(model, source, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if model.startswith("runs/"):
        (tmp_path / model).mkdir(parents=True)
    assert served_model_name(model, source) == name


def test_a_prompt_over_the_context_is_refused_as_openai_refuses_it():
    assert completion_budget(100, None, 2048) == 128
    assert completion_budget(2000, None, 2048) == 48  # the default fits in what is left
    assert completion_budget(100, 500, 2048) == 500
    with pytest.raises(RequestError) as refused:
        completion_budget(2000, 100, 2048)
    body = refused.value.body()["error"]
    assert (body["code"], body["param"], body["type"]) == (
        "context_length_exceeded",
        "messages",
        "invalid_request_error",
    )
    assert "maximum context length is 2048 tokens" in body["message"]
    assert "2100 tokens (2000 in the messages, 100 in the completion)" in body["message"]
    with pytest.raises(RequestError):
        completion_budget(2048, None, 2048)


def test_requests_are_parsed_or_refused_naming_the_field():
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    chat = parse_chat_request(
        {"messages": messages, "stream": True, "stream_options": {"include_usage": True},
         "max_completion_tokens": 5, "stop": "\n"}, "m", 100
    )  # fmt: skip
    assert (chat.messages, chat.max_tokens, chat.stream, chat.include_usage, chat.stops) == (
        [{"role": "user", "content": "hi"}], 5, True, True, ["\n"]
    )  # fmt: skip
    assert chat.score is None
    assert parse_chat_request({"messages": messages, "score": 4.5}, "m", 100).score == 4.5
    for body, param in [
        ({"messages": []}, "messages"),
        ({"messages": messages, "model": "other"}, "model"),
        ({"messages": messages, "stream": True, "n": 2}, "n"),
        ({"messages": messages, "max_tokens": 101}, "max_tokens"),
        ({"messages": messages, "stream": "yes"}, "stream"),
        ({"messages": messages, "score": "high"}, "score"),
        ({"messages": messages, "score": True}, "score"),
    ]:
        with pytest.raises(RequestError) as refused:
            parse_chat_request(body, "m", 100)
        assert refused.value.param == param


def test_streamed_text_holds_back_what_may_become_a_stop_string():
    assert cut_at_stop("12 + 1 = 13\nUser:", ["\nUser"]) == ("12 + 1 = 13", True)
    assert safe_prefix("12 + 1 = 13\nUs", ["\nUser"]) == "12 + 1 = 13"
    assert safe_prefix("12 + 1 = 13\nAnd", ["\nUser"]) == "12 + 1 = 13\nAnd"
    assert safe_prefix("caf\ufffd", []) == "caf"  # half a character so far


def test_status_shows_each_reward_objective_locally_and_on_a_cluster(tmp_path: Path):
    from kubetune.runs_local import status_lines as local_status_lines

    objectives = {"fluency": "0.3125", "quality": "0.75"}
    run = fake_run(tmp_path)
    write(run / "progress.json", {"step": 30, "totalSteps": 30, "objectives": objectives})
    view = read_run(run)
    assert view.objectives == objectives
    assert view.to_dict()["objectives"] == objectives
    assert "objectives:   fluency 0.3125  quality 0.75" in local_status_lines(view)
    job = cluster_job(phase="Running", progress={"step": 3, "objectives": objectives})
    assert "objectives:  fluency 0.3125  quality 0.75" in status_lines(job, [], NOW)
    plain = cluster_job(phase="Running", progress={"step": 3})
    assert not any(line.startswith("objectives:") for line in status_lines(plain, [], NOW))
