"""Data loading: formats, bad rows, HH parsing, mixtures, eval split, every URI scheme."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.data import DataError, load_data
from kubetune_trainer.data.conversations import parse_hh
from kubetune_trainer.data.errors import BadRow
from kubetune_trainer.data.mixture import allocate
from kubetune_trainer.plan import DataSpec

pytestmark = pytest.mark.trainer


def spec(**fields: Any) -> DataSpec:
    return DataSpec.model_validate(fields)


def write_jsonl(path: Path, rows: list[Any], *, raw_lines: dict[int, str] | None = None) -> Path:
    """Rows as JSON lines; ``raw_lines`` replaces row i's line with text as given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows]
    for i, text in (raw_lines or {}).items():
        lines[i] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def chat(question: str, answer: str, system: str | None = None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system else []
    return [*turns, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def numbered(n: int, tag: str) -> list[dict[str, Any]]:
    return [
        {"messages": chat(f"{tag} question {i}", f"{tag} answer {i}"), "answer": str(i)}
        for i in range(n)
    ]


def tags(dataset: Any) -> Counter[str]:
    return Counter(row["messages"][0]["content"].split()[0] for row in dataset)


# --------------------------------------------------------------------------- formats


def test_messages_rows_pass_through_with_answer_and_score(tmp_path: Path) -> None:
    rows = [
        {"messages": chat("1 + 1?", "2", system="Be brief."), "answer": 2, "score": "0.5"},
        {
            "messages": [
                *chat("2 + 2?", "4"),
                {"role": "user", "content": "and 3 + 3?"},
                {"role": "assistant", "content": "6"},
            ]
        },
    ]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    train = load_data(spec(sources=[{"uri": str(path)}]), kind="sft").train
    got = sorted(train, key=lambda r: len(r["messages"]))
    assert got[0]["messages"] == rows[0]["messages"]
    assert got[0]["answer"] == "2" and got[0]["score"] == 0.5
    assert got[1]["messages"] == rows[1]["messages"] and got[1]["answer"] is None


def test_prompt_completion_and_text_and_prompt_only(tmp_path: Path) -> None:
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Say hi", "completion": "hi"}])
    loaded = load_data(spec(sources=[{"uri": str(pc), "format": "prompt-completion"}]), kind="sft")
    assert loaded.train[0] == {
        "prompt": [{"role": "user", "content": "Say hi"}],
        "completion": [{"role": "assistant", "content": "hi"}],
    }
    text = write_jsonl(tmp_path / "text.jsonl", [{"body": "plain text"}])
    source = {"uri": str(text), "format": "text", "columns": {"text": "body"}}
    assert load_data(spec(sources=[source]), kind="sft").train[0] == {"text": "plain text"}
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"q": [{"role": "user", "content": "3 + 4?"}], "gold": "7", "s": 1}]
    )
    source = {
        "uri": str(prompts),
        "format": "prompt-only",
        "columns": {"prompt": "q", "answer": "gold", "score": "s"},
    }
    row = load_data(spec(sources=[source]), kind="prompt").train[0]
    assert row == {"prompt": [{"role": "user", "content": "3 + 4?"}], "answer": "7", "score": 1.0}
    # A messages source can feed prompts: everything before the last assistant turn.
    msgs = write_jsonl(tmp_path / "m.jsonl", [{"messages": chat("5 + 5?", "10"), "answer": "10"}])
    row = load_data(spec(sources=[{"uri": str(msgs)}]), kind="prompt").train[0]
    assert row == {"prompt": [{"role": "user", "content": "5 + 5?"}], "answer": "10"}
    with pytest.raises(DataError, match="format prompt-only cannot feed sft"):
        load_data(spec(sources=[{"uri": str(prompts), "format": "prompt-only"}]), kind="sft")


def test_mixed_messages_and_prompt_completion_become_messages(tmp_path: Path) -> None:
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Say hi", "completion": "hi"}])
    msgs = write_jsonl(tmp_path / "m.jsonl", [{"messages": chat("Say yo", "yo")}])
    loaded = load_data(
        spec(sources=[{"uri": str(pc), "format": "prompt-completion"}, {"uri": str(msgs)}]),
        kind="sft",
    )
    assert sorted(r["messages"][1]["content"] for r in loaded.train) == ["hi", "yo"]
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match="cannot mix"):
        load_data(
            spec(sources=[{"uri": str(text), "format": "text"}, {"uri": str(msgs)}]), kind="sft"
        )


def test_explicit_and_implicit_preference(tmp_path: Path) -> None:
    explicit = write_jsonl(
        tmp_path / "explicit.jsonl",
        [{"prompt": "2 + 2?", "chosen": "4", "rejected": "5", "answer": "4"}],
    )
    row = load_data(
        spec(sources=[{"uri": str(explicit), "format": "preference"}]), kind="preference"
    ).train[0]
    assert row == {
        "prompt": [{"role": "user", "content": "2 + 2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
        "answer": "4",
    }
    shared = [*chat("Hi", "Hello!", system="Be kind."), {"role": "user", "content": "2 + 2?"}]
    implicit = write_jsonl(
        tmp_path / "implicit.jsonl",
        [
            {
                "chosen": [*shared, {"role": "assistant", "content": "4"}],
                "rejected": [*shared, {"role": "assistant", "content": "22"}],
            }
        ],
    )
    row = load_data(
        spec(sources=[{"uri": str(implicit), "format": "preference"}]), kind="preference"
    ).train[0]
    assert row["prompt"] == shared
    assert row["chosen"] == [{"role": "assistant", "content": "4"}]
    assert row["rejected"] == [{"role": "assistant", "content": "22"}]
    # The same pairs feed sft (prompt + chosen) and prompts.
    sft = load_data(
        spec(sources=[{"uri": str(implicit), "format": "preference"}]), kind="sft"
    ).train[0]
    assert sft["messages"] == [*shared, {"role": "assistant", "content": "4"}]


HH_CHOSEN = (
    "\n\nHuman: What is 2 + 2?\n\nAssistant: It is 4."
    "\n\nHuman: And times 3?\n\nAssistant: That makes 12."
)
HH_REJECTED = (
    "\n\nHuman: What is 2 + 2?\n\nAssistant: It is 4.\n\nHuman: And times 3?\n\nAssistant: No idea."
)


def test_hh_text_parses_into_messages() -> None:
    assert parse_hh(HH_CHOSEN, "chosen") == [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "And times 3?"},
        {"role": "assistant", "content": "That makes 12."},
    ]
    # Multi-line turns keep their inner newlines; the leading blank lines are optional.
    assert parse_hh("Human: line one\nline two\n\nAssistant: ok", "text") == [
        {"role": "user", "content": "line one\nline two"},
        {"role": "assistant", "content": "ok"},
    ]
    for text, reason in [
        ("just some text", "no 'Human:' / 'Assistant:' turns"),
        ("preamble\n\nHuman: hi\n\nAssistant: yo", "text before the first 'Human:' turn"),
        ("\n\nAssistant: hi\n\nHuman: yo", "expected Human:, got Assistant:"),
        ("\n\nHuman: hi\n\nAssistant:   ", "turn 1: assistant turn is empty"),
    ]:
        with pytest.raises(BadRow, match=reason):
            parse_hh(text, "chosen")


def test_hh_rlhf_pairs_share_the_conversation_prefix(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    source = {"uri": str(path), "format": "hh-rlhf"}
    row = load_data(spec(sources=[source]), kind="preference").train[0]
    assert row["prompt"] == [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "And times 3?"},
    ]
    assert row["chosen"] == [{"role": "assistant", "content": "That makes 12."}]
    assert row["rejected"] == [{"role": "assistant", "content": "No idea."}]
    assert load_data(spec(sources=[source]), kind="sft").train[0]["messages"][-1]["content"] == (
        "That makes 12."
    )
    assert load_data(spec(sources=[source]), kind="prompt").train[0]["prompt"] == row["prompt"]
    # For sft, an HH row with only a text column is one conversation.
    text = write_jsonl(tmp_path / "hh-text.jsonl", [{"text": HH_CHOSEN}])
    sft = load_data(spec(sources=[{"uri": str(text), "format": "hh-rlhf"}]), kind="sft").train[0]
    assert sft["messages"] == parse_hh(HH_CHOSEN, "text")
    with pytest.raises(DataError, match="format messages cannot feed preference"):
        load_data(spec(sources=[{"uri": str(text)}]), kind="preference")


# --------------------------------------------------------------------------- bad rows


def test_bad_row_fails_with_file_row_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rows: list[Any] = numbered(4, "ok")
    rows[2] = {"messages": chat("1 + 1?", "   ")}
    path = write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    # A blank line before the bad record: the row index counts records, the line number lines.
    path.write_text("\n" + path.read_text())
    with pytest.raises(DataError) as caught:
        load_data(spec(sources=[{"uri": "data/train.jsonl"}]), kind="sft")
    assert (
        str(caught.value)
        == "data/train.jsonl: row 2 (line 4): messages[1]: assistant turn is empty"
    )


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"other": 1}, "row 1 (line 2): missing field 'messages'"),
        (
            {
                "messages": [
                    {"role": "assistant", "content": "hi"},
                    {"role": "user", "content": "yo"},
                ]
            },
            "row 1 (line 2): messages[0]: expected a user turn, got assistant (wrong role order)",
        ),
        (
            {"messages": [*chat("a", "b"), {"role": "system", "content": "late"}]},
            "messages[2]: a system turn may only come first",
        ),
        ({"messages": [{"role": "user", "content": "only a question"}]}, "ends with a user turn"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]: unknown role 'robot'"),
        ({"messages": "not a list"}, "messages: expected a list of messages"),
    ],
)
def test_bad_rows_name_the_problem(tmp_path: Path, row: dict[str, Any], message: str) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [numbered(1, "ok")[0], row])
    with pytest.raises(DataError, match=re.escape(message)):
        load_data(spec(sources=[{"uri": str(path)}]), kind="sft")


def test_skip_policy_counts_bad_rows_including_malformed_json(tmp_path: Path) -> None:
    rows: list[Any] = numbered(10, "ok")
    rows[3] = {"messages": chat("x", "")}
    rows[7] = {"prompt": "wrong format"}
    path = write_jsonl(tmp_path / "t.jsonl", rows, raw_lines={5: '{"messages": [oops'})
    with pytest.raises(DataError, match=r"t.jsonl: row 3 \(line 4\)"):
        load_data(spec(sources=[{"uri": str(path)}]), kind="sft")
    loaded = load_data(spec(sources=[{"uri": str(path)}], badRows="skip"), kind="sft")
    assert len(loaded.train) == 7
    assert loaded.skipped_rows == 3
    assert loaded.skipped_by_source == {str(path): 3}
    assert loaded.bad_rows[0] == f"{path}: row 3 (line 4): messages[1]: assistant turn is empty"
    assert loaded.bad_rows[1].startswith(f"{path}: row 5 (line 6): malformed JSON")
    assert loaded.bad_rows[2] == f"{path}: row 7 (line 8): missing field 'messages'"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", "{p}: no rows (the data is empty)"),
        (
            "latin1.jsonl",
            b'{"text": "ok"}\n{"text": "caf\xe9"}\n',
            "{p}: row 1 (line 2): not valid UTF-8: byte 0xe9 at column 14 (invalid continuation "
            "byte)",
        ),
        (
            "latin1.json",
            b'[{"text": "ok"},\n {"text": "caf\xe9"}]',
            "{p}: line 2: not valid UTF-8: byte 0xe9 at byte offset 31 (invalid continuation byte)",
        ),
        ("broken.jsonl.gz", b"not gzip", "{p}: cannot read: Not a gzipped file (b'no')"),
    ],
    ids=["empty", "not-utf8-line", "not-utf8-json", "not-gzip"],
)
def test_unusable_files_are_bad_data(tmp_path: Path, name: str, content: bytes, message: str):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        load_data(spec(sources=[{"uri": str(path), "format": "text"}]), kind="sft")
    assert str(caught.value) == message.format(p=path)
    assert caught.value.exit_code == 65


def test_skip_policy_drops_rows_that_are_not_utf8(tmp_path: Path) -> None:
    good = json.dumps(numbered(1, "ok")[0]).encode()
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join([good, b'{"messages": "\xff"}', good]) + b"\n")
    loaded = load_data(spec(sources=[{"uri": str(path)}], badRows="skip"), kind="sft")
    assert (len(loaded.train), loaded.skipped_rows) == (2, 1)
    assert loaded.bad_rows == [
        f"{path}: row 1 (line 2): not valid UTF-8: byte 0xff at column 15 (invalid start byte)"
    ]


def test_bad_preference_rows(tmp_path: Path) -> None:
    same = chat("q", "a")
    cases = [
        ({"chosen": same, "rejected": same}, "chosen and rejected are identical"),
        ({"chosen": chat("q1", "a"), "rejected": chat("q2", "b")}, "share no prompt"),
        (
            {
                "chosen": same + chat("next?", "yes")[0:2],
                "rejected": same + chat("other?", "no")[0:2],
            },
            r"chosen\[2\]: chosen and rejected differ at a user turn",
        ),
        ({"prompt": "q", "chosen": "a", "rejected": ""}, "rejected: assistant turn is empty"),
    ]
    for i, (row, message) in enumerate(cases):
        path = write_jsonl(tmp_path / f"pref{i}.jsonl", [row])
        with pytest.raises(DataError, match=f"row 0 \\(line 1\\): .*{message}"):
            load_data(spec(sources=[{"uri": str(path), "format": "preference"}]), kind="preference")
    hh = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: hi", "rejected": HH_REJECTED}])
    with pytest.raises(DataError, match=r"row 0 .*chosen: ends with a user turn"):
        load_data(spec(sources=[{"uri": str(hh), "format": "hh-rlhf"}]), kind="preference")


# --------------------------------------------------------------------------- mixtures, splits


def test_weighted_mixture_follows_the_documented_rule(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", numbered(600, "A"))
    b = write_jsonl(tmp_path / "b.jsonl", numbered(600, "B"))
    c = write_jsonl(tmp_path / "c.jsonl", numbered(100, "C"))
    sources = [
        {"uri": str(a), "weight": 3},
        {"uri": str(b), "weight": 1},
        {"uri": str(c), "weight": 1},
    ]
    loaded = load_data(spec(sources=sources, seed=7), kind="sft")
    # N = 1300 rows; shares 3:1:1 → 780 / 260 / 260 (C, with 100 rows, is repeated).
    assert loaded.mixture == {str(a): 780, str(b): 260, str(c): 260}
    counts = tags(loaded.train)
    assert counts == {"A": 780, "B": 260, "C": 260}
    c_rows = Counter(
        r["messages"][0]["content"] for r in loaded.train if r["messages"][0]["content"][0] == "C"
    )
    assert set(c_rows.values()) <= {2, 3} and len(c_rows) == 100  # 2 whole copies + 60 sampled
    # Rows are shuffled: sources interleave.
    first = [r["messages"][0]["content"][0] for r in loaded.train.select(range(50))]
    assert len(set(first)) == 3
    # Global cap and per-source caps.
    capped = load_data(spec(sources=sources, seed=7, maxSamples=500), kind="sft")
    assert len(capped.train) == 500
    assert abs(tags(capped.train)["A"] / 500 - 0.6) < 0.01
    sources[0]["maxSamples"] = 50
    per_source = load_data(spec(sources=sources, seed=7), kind="sft")
    assert len(per_source.train) == 750
    assert (
        len(
            {
                r["messages"][0]["content"]
                for r in per_source.train
                if r["messages"][0]["content"][0] == "A"
            }
        )
        == 50
    )
    assert allocate(10, [1, 1, 1]) == [4, 3, 3]


def test_mixture_is_deterministic_by_seed(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", numbered(200, "A"))
    b = write_jsonl(tmp_path / "b.jsonl", numbered(50, "B"))
    sources = [{"uri": str(a)}, {"uri": str(b), "weight": 2}]
    one = load_data(spec(sources=sources, seed=1), kind="sft").train.to_list()
    two = load_data(spec(sources=sources, seed=1), kind="sft").train.to_list()
    other = load_data(spec(sources=sources, seed=2), kind="sft").train.to_list()
    assert one == two
    assert one != other
    # 250 rows at 1:2 → 83.3 / 166.7 → 83 / 167 (largest remainder).
    assert Counter(r["messages"][0]["content"][0] for r in one) == {"A": 83, "B": 167}


def test_eval_ratio_holds_out_disjoint_rows_deterministically(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", numbered(300, "A"))
    b = write_jsonl(tmp_path / "b.jsonl", numbered(100, "B"))
    # Weights 3:1 match the pools (270 and 90 rows), so the mixture is each pool once.
    sources = [{"uri": str(a), "weight": 3}, {"uri": str(b)}]
    data = spec(sources=sources, evalRatio=0.1, seed=3)
    loaded = load_data(data, kind="sft")
    assert loaded.eval is not None
    train = {r["messages"][0]["content"] for r in loaded.train}
    held = [r["messages"][0]["content"] for r in loaded.eval]
    assert len(held) == 40 and tags(loaded.eval) == {"A": 30, "B": 10}
    assert len(loaded.train) == 360
    assert train.isdisjoint(held)
    assert train | set(held) == {
        f"{t} question {i}" for t, n in (("A", 300), ("B", 100)) for i in range(n)
    }
    again = load_data(data, kind="sft")
    assert again.eval.to_list() == loaded.eval.to_list()
    assert again.train.to_list() == loaded.train.to_list()
    reseeded = load_data(spec(sources=sources, evalRatio=0.1, seed=4), kind="sft")
    assert {r["messages"][0]["content"] for r in reseeded.eval} != set(held)


def test_eval_sources_and_builtin_splits() -> None:
    loaded = load_data(
        spec(
            sources=[{"uri": "builtin://arithmetic-sft", "maxSamples": 300}],
            evalSources=[{"uri": "builtin://arithmetic-sft", "split": "test", "maxSamples": 50}],
            evalRatio=0.5,  # ignored: evalSources win
        ),
        kind="sft",
    )
    assert len(loaded.train) == 300 and loaded.eval is not None and len(loaded.eval) == 50
    assert all(r["messages"][-1]["content"] == r["answer"] for r in loaded.eval)
    # Builtins read in their own format unless one is given, also after a plan round trip
    # (which writes the default format out).
    wire = spec(sources=[{"uri": "builtin://arithmetic-preference"}]).to_wire()
    assert wire["sources"][0]["format"] == "messages"
    prefs = load_data(DataSpec.model_validate(wire), kind="preference")
    assert set(prefs.train.column_names) == {"prompt", "chosen", "rejected", "answer"}
    prompts = load_data(
        spec(sources=[{"uri": "builtin://arithmetic-prompts", "split": "test"}]), kind="prompt"
    )
    assert len(prompts.train) == 200 and prompts.train[0]["prompt"][-1]["role"] == "user"
    with pytest.raises(DataError, match="no split 'validation'"):
        load_data(
            spec(sources=[{"uri": "builtin://arithmetic-sft", "split": "validation"}]), kind="sft"
        )


# --------------------------------------------------------------------------- file kinds, schemes


def test_json_parquet_and_split_directories(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = numbered(6, "J")
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    assert (
        len(load_data(spec(sources=[{"uri": str(tmp_path / "rows.json")}]), kind="sft").train) == 6
    )
    table = pa.Table.from_pylist(numbered(5, "P"))
    pq.write_table(table, tmp_path / "rows.parquet")
    got = load_data(spec(sources=[{"uri": str(tmp_path / "rows.parquet")}]), kind="sft").train
    assert sorted(r["answer"] for r in got) == [str(i) for i in range(5)]

    folder = tmp_path / "folder"
    write_jsonl(folder / "train-00000.jsonl", numbered(3, "T"))
    write_jsonl(folder / "train-00001.jsonl", numbered(2, "U"))
    write_jsonl(folder / "test.jsonl", numbered(4, "E"))
    (folder / ".hidden.jsonl").write_text("garbage\n")
    assert tags(load_data(spec(sources=[{"uri": str(folder)}]), kind="sft").train) == {
        "T": 3,
        "U": 2,
    }
    test = load_data(spec(sources=[{"uri": str(folder), "split": "test"}]), kind="sft").train
    assert tags(test) == {"E": 4}


def test_datasets_saved_to_disk(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    Dataset.from_list(numbered(4, "S")).save_to_disk(str(tmp_path / "single"))
    DatasetDict(
        {"train": Dataset.from_list(numbered(3, "T")), "test": Dataset.from_list(numbered(2, "E"))}
    ).save_to_disk(str(tmp_path / "dict"))
    assert tags(load_data(spec(sources=[{"uri": str(tmp_path / "single")}]), kind="sft").train) == {
        "S": 4
    }
    test = load_data(spec(sources=[{"uri": str(tmp_path / "dict"), "split": "test"}]), kind="sft")
    assert tags(test.train) == {"E": 2}
    broken = Dataset.from_list([{"messages": chat("q", "")}])
    broken.save_to_disk(str(tmp_path / "broken"))
    with pytest.raises(DataError, match=r"broken: row 0: messages\[1\]: assistant turn is empty"):
        load_data(spec(sources=[{"uri": str(tmp_path / "broken")}]), kind="sft")


def test_s3_data_from_a_local_s3_server(s3_upload, tmp_path: Path) -> None:
    folder = tmp_path / "upload"
    write_jsonl(folder / "train.jsonl", numbered(5, "S"))
    write_jsonl(folder / "test.jsonl", [{"messages": chat("q", "")}])
    s3_upload("datasets", "arith/v1", folder)
    assert tags(load_data(spec(sources=[{"uri": "s3://datasets/arith/v1"}]), kind="sft").train) == {
        "S": 5
    }
    # A single object, and the bad-row message names the s3 object.
    with pytest.raises(DataError, match=r"s3://datasets/arith/v1/test.jsonl: row 0 \(line 1\)"):
        load_data(spec(sources=[{"uri": "s3://datasets/arith/v1", "split": "test"}]), kind="sft")
    single = load_data(spec(sources=[{"uri": "s3://datasets/arith/v1/train.jsonl"}]), kind="sft")
    assert len(single.train) == 5


def test_pvc_and_hf_offline_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "pvc"
    write_jsonl(root / "data-claim" / "sets" / "train.jsonl", numbered(4, "V"))
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(root))
    assert tags(load_data(spec(sources=[{"uri": "pvc://data-claim/sets"}]), kind="sft").train) == {
        "V": 4
    }

    cache = tmp_path / "hub"
    repo = cache / "datasets--acme--hh"
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    snapshot = repo / "snapshots" / commit
    write_jsonl(
        snapshot / "helpful-base" / "train.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}]
    )
    write_jsonl(snapshot / "harmless-base" / "train.jsonl", [{"chosen": "bad", "rejected": "bad"}])
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    source = {"uri": "hf://acme/hh", "format": "hh-rlhf", "subset": "helpful-base"}
    row = load_data(spec(sources=[source]), kind="preference").train[0]
    assert row["chosen"] == [{"role": "assistant", "content": "That makes 12."}]
    with pytest.raises(DataError, match=re.escape("hf://acme/hh/harmless-base/train.jsonl: row 0")):
        load_data(spec(sources=[{**source, "subset": "harmless-base"}]), kind="preference")
    with pytest.raises(DataError, match="HF_HUB_OFFLINE"):
        load_data(spec(sources=[{"uri": "hf://acme/absent"}]), kind="sft")
    shutil.rmtree(cache)
