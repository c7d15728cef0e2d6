"""Preference snapshots: a campaign's accepted votes as a DPO training set, versioned.

Building is pure (:func:`build`): for each regular item, the votes of included labelers are
counted; the item becomes a pair when their plurality is A or B (the response shown there is
``chosen``, the other ``rejected``). Items whose plurality is tie or both-bad, or that have no
single plurality, are dropped and counted; gold items and excluded labelers' votes never count.

Writing (:func:`write`) puts ``train.jsonl`` and then ``manifest.json`` (written last, so a
snapshot with a manifest is complete) under ``ROOT/CAMPAIGN/vN/`` where ROOT is a directory
(a mounted PVC) or ``s3://bucket/prefix``. The rows are in TRL's conversational preference
format, which a FineTuneJob reads with ``format: preference``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_studio.agreement import Quality, Thresholds, VoteRecord

FORMAT = "kubetune-preference-snapshot/v1"
DATA_FILE = "train.jsonl"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PairSource:
    """A regular item as the snapshot needs it."""

    item_id: int
    prompt: list[dict[str, str]]
    text_a: str
    text_b: str
    model_a: str
    model_b: str
    category: str | None


@dataclass(frozen=True)
class Built:
    rows: list[dict[str, Any]]
    counts: dict[str, int]


def build(items: Sequence[PairSource], votes: Sequence[VoteRecord], excluded: set[int]) -> Built:
    by_item: dict[int, Counter[str]] = {item.item_id: Counter() for item in items}
    counts: Counter[str] = Counter()
    for vote in votes:
        if vote.item_id not in by_item:
            continue  # gold item
        if vote.labeler_id in excluded:
            counts["votes_excluded_labelers"] += 1
            continue
        by_item[vote.item_id][vote.choice] += 1
        counts["votes_used"] += 1
    rows = []
    for item in items:
        tally = by_item[item.item_id]
        total = sum(tally.values())
        if not total:
            counts["items_without_votes"] += 1
            continue
        ranked = tally.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            counts["dropped_no_majority"] += 1
            continue
        winner, support = ranked[0]
        if winner in ("tie", "both_bad"):
            counts[f"dropped_{winner}"] += 1
            continue
        chosen, rejected = (
            (item.text_a, item.text_b) if winner == "a" else (item.text_b, item.text_a)
        )
        chosen_model, rejected_model = (
            (item.model_a, item.model_b) if winner == "a" else (item.model_b, item.model_a)
        )
        rows.append(
            {
                "prompt": item.prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "chosen_model": chosen_model,
                "rejected_model": rejected_model,
                "votes": total,
                "support": round(support / total, 4),
                "category": item.category,
                "item": item.item_id,
            }
        )
    counts["items"] = len(items)
    counts["pairs"] = len(rows)
    return Built(rows=rows, counts=dict(sorted(counts.items())))


def data_bytes(rows: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()


def manifest(
    *,
    campaign: str,
    version: int,
    created: str,
    revision: str,
    data: bytes,
    built: Built,
    quality: Quality,
    thresholds: Thresholds,
) -> dict[str, Any]:
    """What the snapshot holds and how it was filtered (labelers by id; emails stay in the
    studio)."""
    return {
        "format": FORMAT,
        "campaign": campaign,
        "snapshot": version,
        "created": created,
        "store_revision": revision,
        "files": {
            DATA_FILE: {"rows": len(built.rows), "sha256": hashlib.sha256(data).hexdigest()}
        },
        "counts": built.counts,
        "agreement": {
            "krippendorff_alpha": quality.alpha,
            "krippendorff_alpha_before_exclusions": quality.alpha_all,
            "mean_cohen_kappa": quality.mean_kappa,
            "labelers": {
                str(q.labeler_id): {
                    "votes": q.votes,
                    "gold_agreement": q.gold_agreement,
                    "consensus_agreement": q.consensus_agreement,
                    "excluded": q.excluded,
                    "reasons": q.reasons,
                }
                for q in quality.labelers.values()
            },
        },
        "filters": {
            "dropped": ["gold items", "tie", "both_bad", "no single plurality",
                        "votes of excluded labelers"],
            "thresholds": thresholds.__dict__,
            "excluded_labelers": sorted(
                str(i) for i, q in quality.labelers.items() if q.excluded
            ),
            "labelers_total": len(quality.labelers),
        },
    }  # fmt: skip


def location(root: str, campaign: str, version: int) -> str:
    return f"{root.rstrip('/')}/{campaign}/v{version}"


def write(root: str, campaign: str, version: int, data: bytes, manifest_: dict[str, Any]) -> str:
    """Writes the snapshot (data first, manifest last); its location (a path or s3:// URI)."""
    where = location(root, campaign, version)
    document = (json.dumps(manifest_, indent=2, sort_keys=True) + "\n").encode()
    if where.startswith("s3://"):
        _write_s3(where, {DATA_FILE: data, MANIFEST: document})
    else:
        directory = Path(where)
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(directory / DATA_FILE, data)
        _write_atomic(directory / MANIFEST, document)
    return where


def _write_atomic(path: Path, content: bytes) -> None:
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    # Readable by the training pods, which run as another user on the same volume.
    os.fchmod(handle, 0o644)
    with os.fdopen(handle, "wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def _write_s3(uri: str, files: Mapping[str, bytes]) -> None:
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client = boto3.client("s3", endpoint_url=endpoint or None)
    for name, content in files.items():  # insertion order: the manifest last
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}".lstrip("/"), Body=content)
