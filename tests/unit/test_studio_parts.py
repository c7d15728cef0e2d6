"""The studio's pure parts: who gets which item, reading import files, building snapshots; the
package imports without torch; the migrations build exactly the tables the ORM declares."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from kubetune_studio import importer, queue, snapshot
from kubetune_studio.agreement import VoteRecord
from kubetune_studio.campaigns import CampaignSpec, model_pairs, swap_positions
from kubetune_studio.config import Settings
from kubetune_studio.errors import Invalid
from kubetune_studio.store.database import current_revision, make_engine, revisions, upgrade
from kubetune_studio.store.schema import Base

# --------------------------------------------------------------------------- assignment


def simulate_queue(items: int, gold: int, labelers: int, overlap: int, gold_every: int):
    """Labelers take turns asking for items and voting at once: the votes per item."""
    votes: dict[int, list[int]] = {i: [] for i in range(items + gold)}
    is_gold = {i: i >= items for i in votes}
    active = set(range(labelers))
    while active:
        for labeler in sorted(active):
            candidates = [
                queue.Candidate(i, is_gold[i], len(v)) for i, v in votes.items() if labeler not in v
            ]
            regular = sum(1 for i, v in votes.items() if labeler in v and not is_gold[i])
            on_gold = sum(1 for i, v in votes.items() if labeler in v and is_gold[i])
            chosen = queue.next_item(
                candidates,
                queue.LabelerProgress(regular, on_gold),
                overlap=overlap,
                gold_every=gold_every,
                seed=7,
                labeler_id=labeler,
            )
            if chosen is None:
                active.discard(labeler)
            else:
                votes[chosen].append(labeler)
    return votes, is_gold


@pytest.mark.parametrize(("items", "labelers", "overlap"), [(30, 3, 2), (25, 5, 3), (10, 2, 2)])
def test_every_regular_item_reaches_the_overlap_exactly(
    items: int, labelers: int, overlap: int
) -> None:
    votes, is_gold = simulate_queue(items, 0, labelers, overlap, gold_every=0)
    assert all(len(v) == overlap for i, v in votes.items() if not is_gold[i])


def test_gold_items_come_at_the_campaign_rate() -> None:
    votes, is_gold = simulate_queue(items=40, gold=6, labelers=2, overlap=2, gold_every=5)
    for labeler in range(2):
        seen_gold = sum(1 for i, v in votes.items() if labeler in v and is_gold[i])
        seen_regular = sum(1 for i, v in votes.items() if labeler in v and not is_gold[i])
        assert seen_regular == 40
        assert seen_gold == 6  # one after every 5 regular votes, while gold items remain


def test_labelers_see_items_in_different_orders() -> None:
    candidates = [queue.Candidate(i, False, 0) for i in range(50)]
    progress = queue.LabelerProgress(0, 0)
    firsts = {
        queue.next_item(candidates, progress, overlap=3, gold_every=0, seed=0, labeler_id=labeler)
        for labeler in range(10)
    }
    assert len(firsts) > 5


# --------------------------------------------------------------------------- campaigns


def test_pairs_and_positions() -> None:
    assert model_pairs(["base", "x", "y"], "base", "baseline") == [("x", "base"), ("y", "base")]
    assert len(model_pairs(["a", "b", "c", "d"], "a", "all-pairs")) == 6
    swaps = [swap_positions(0, f"prompt-{i}", "tuned", "base") for i in range(400)]
    assert 160 < sum(swaps) < 240  # a fair coin per item


def test_campaign_spec_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="baseline: 'c' is not one of the models"):
        CampaignSpec(slug="ok", models=[{"name": "a"}, {"name": "b"}], baseline="c")
    with pytest.raises(ValueError, match="lower-case letters"):
        CampaignSpec(slug="Not OK", models=[{"name": "a"}, {"name": "b"}], baseline="a")


# --------------------------------------------------------------------------- import files


def test_response_rows_accept_text_or_messages() -> None:
    text = json.dumps({"prompt": "Hi?", "model": "m", "response": "Hello"})
    chat = json.dumps(
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi?"},
            ],
            "model": "m",
            "response": "Hello",
            "category": "greeting",
        }
    )
    rows = importer.parse_lines([text, "", chat], "r.jsonl", importer.response_row)
    assert rows[0].prompt == [{"role": "user", "content": "Hi?"}]
    assert rows[1].category == "greeting"
    assert importer.prompt_key(rows[0].prompt) != importer.prompt_key(rows[1].prompt)


def test_bad_rows_are_named_by_file_row_and_line_and_nothing_is_returned() -> None:
    lines = [
        json.dumps({"prompt": "ok", "model": "m", "response": "r"}),
        "",
        "{not json",
        json.dumps({"prompt": "ok", "response": "r"}),
        json.dumps(
            {"prompt": [{"role": "assistant", "content": "x"}], "model": "m", "response": "r"}
        ),
    ]
    with pytest.raises(Invalid) as caught:
        importer.parse_lines(lines, "gen.jsonl", importer.response_row)
    message = caught.value.message
    assert "gen.jsonl: row 1 (line 3): malformed JSON" in message
    assert "gen.jsonl: row 2 (line 4): field 'model': missing or not a string" in message
    assert (
        "gen.jsonl: row 3 (line 5): field 'prompt': the last message must be the user's" in message
    )


def test_gold_rows_need_a_known_answer() -> None:
    row = {"prompt": "p", "response_a": "x", "response_b": "y", "answer": "c"}
    with pytest.raises(Invalid, match="field 'answer': 'c' is not one of a, b, tie, both_bad"):
        importer.parse_lines([json.dumps(row)], "gold.jsonl", importer.gold_row)


# --------------------------------------------------------------------------- snapshots


def test_snapshot_keeps_majorities_and_counts_what_it_drops() -> None:
    items = [
        snapshot.PairSource(
            i, [{"role": "user", "content": f"q{i}"}], f"A{i}", f"B{i}", "m1", "m2", None
        )
        for i in range(5)
    ]
    votes = [
        VoteRecord(0, 1, "a"), VoteRecord(0, 2, "a"), VoteRecord(0, 3, "b"),  # A wins 2-1
        VoteRecord(1, 1, "b"), VoteRecord(1, 9, "a"), VoteRecord(1, 8, "a"),  # B: 9, 8 excluded
        VoteRecord(2, 1, "tie"), VoteRecord(2, 2, "tie"),
        VoteRecord(3, 1, "a"), VoteRecord(3, 2, "b"),  # no majority
        VoteRecord(77, 1, "a"),  # a gold item: not among the pair sources
    ]  # fmt: skip
    built = snapshot.build(items, votes, excluded={8, 9})
    assert [(r["item"], r["chosen"][0]["content"], r["rejected_model"]) for r in built.rows] == [
        (0, "A0", "m2"),
        (1, "B1", "m1"),
    ]
    assert built.counts == {
        "dropped_no_majority": 1,
        "dropped_tie": 1,
        "items": 5,
        "items_without_votes": 1,
        "pairs": 2,
        "votes_excluded_labelers": 2,
        "votes_used": 8,
    }


def test_snapshot_writes_the_manifest_last(tmp_path: Path) -> None:
    where = snapshot.write(str(tmp_path), "c", 3, b'{"x": 1}\n', {"snapshot": 3})
    assert where == f"{tmp_path}/c/v3"
    assert sorted(p.name for p in Path(where).iterdir()) == ["manifest.json", "train.jsonl"]
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in Path(where).iterdir())  # others read


# --------------------------------------------------------------------------- boundaries


def test_the_studio_imports_without_torch() -> None:
    """Every studio module, and the app, with torch made unimportable; from the trainer only
    the shared statistics (and, when a judge votes, its torch-free judge), and nothing of the
    operator."""
    program = textwrap.dedent(
        """
        import importlib, pkgutil, sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None

        sys.meta_path.insert(0, NoTorch())
        import kubetune_studio
        for module in pkgutil.walk_packages(kubetune_studio.__path__, "kubetune_studio."):
            if ".migrations" not in module.name:
                importlib.import_module(module.name)
        from kubetune_studio.config import Settings
        from kubetune_studio.web.app import create_app
        create_app(Settings(database_url="sqlite://"))
        assert "torch" not in sys.modules
        assert not any(m.startswith("kubetune.") or m == "kubetune" for m in sys.modules)
        trainer = sorted(m for m in sys.modules if m.startswith("kubetune_trainer"))
        assert trainer == [
            "kubetune_trainer",
            "kubetune_trainer.evaluation",
            "kubetune_trainer.evaluation.statistics",
        ], trainer
        # The arena's judge is the trainer's pairwise judge, imported when a judge votes.
        importlib.import_module("kubetune_trainer.evaluation.judge")
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_migrations_build_the_declared_schema(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'studio.db'}")
    upgrade(engine)
    assert current_revision(engine) == revisions()[-1]
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_settings_come_from_the_environment_and_name_a_bad_variable() -> None:
    settings = Settings.from_env({"KUBETUNE_STUDIO_RATE_LIMIT": "5/second", "OTHER": "x"})
    assert settings.rate_limit == "5/second"
    assert settings.database_url == "sqlite:///studio.db"
    with pytest.raises(Invalid, match=r"^KUBETUNE_STUDIO_MAX_BODY_BYTES: Input should be a valid"):
        Settings.from_env({"KUBETUNE_STUDIO_MAX_BODY_BYTES": "lots"})
