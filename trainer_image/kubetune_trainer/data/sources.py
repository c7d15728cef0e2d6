"""Locate a DataSource: turn its URI and split into files to read (or a saved dataset).

- a local path, ``pvc://``, ``s3://`` (mirrored into the cache first) or ``hf://ORG/NAME``
  (``huggingface_hub.snapshot_download`` of the dataset repository; with ``HF_HUB_OFFLINE=1``
  only the local Hub cache) each become a file or a directory.
- A file is read whatever the split. A directory saved with ``datasets``' ``save_to_disk`` is
  loaded with ``load_from_disk`` (a DatasetDict by split). Any other directory is searched
  recursively for jsonl / json / parquet files (gzip too, hidden files skipped), and the split
  picks among them: files named ``SPLIT.*``, ``SPLIT-*``, ``SPLIT_*`` or under a folder named
  ``SPLIT``. If none match and the split is ``train``, every file is used.
- ``subset`` (a hub dataset's configuration) selects the sub-folder of that name.
- ``builtin://NAME`` is kubetune's synthetic dataset NAME (split ``train`` or ``test``).
- ``studio://HOST[:PORT]/CAMPAIGN[@VERSION]`` is a preference snapshot of kubetune's feedback
  studio, downloaded into the cache (:mod:`kubetune_trainer.data.studio`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kubetune_trainer.data import studio
from kubetune_trainer.data.errors import DataError
from kubetune_trainer.data.readers import data_suffix
from kubetune_trainer.data.synthetic import DATA_DIR
from kubetune_trainer.plan import DataSource, read_format
from kubetune_trainer.uris import (
    SourceError,
    fetch_s3,
    hf_cache_dir,
    hf_offline,
    local_path,
    pvc_path,
    scheme,
    uri_rest,
)

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)


@dataclass
class Located:
    """What to read for one source."""

    files: list[tuple[Path, str]] = field(default_factory=list)
    """(local path, display name) in reading order."""
    dataset: Dataset | None = None
    """A dataset saved with save_to_disk, loaded."""
    dataset_origin: str = ""


def native_format(source: DataSource) -> str:
    """The format to read the source in (see :func:`kubetune_trainer.plan.read_format`)."""
    return read_format(source)


def locate(source: DataSource) -> Located:
    uri = source.uri
    kind = scheme(uri)
    try:
        if kind == "builtin":
            name = uri_rest(uri).strip("/")
            path = DATA_DIR / name / f"{source.split}.jsonl"
            if not path.is_file():
                raise DataError(f"{uri}: no split '{source.split}' (use train or test)")
            return Located(files=[(path, f"{uri}/{path.name}")])
        if kind == "file":
            root = local_path(uri)
        elif kind == "pvc":
            root = pvc_path(uri)
        elif kind == "s3":
            root = fetch_s3(uri)
        elif kind == "hf":
            root = _hf_snapshot(uri_rest(uri).strip("/"))
        elif kind == "studio":
            root = studio.fetch(uri)
        else:
            raise DataError(f"{uri}: unsupported data scheme '{kind}://'")
    except SourceError as exc:
        raise DataError(str(exc)) from exc
    display = uri.rstrip("/")
    if root.is_file():
        return Located(files=[(root, display)])
    if not root.is_dir():
        raise DataError(f"{uri}: {root} does not exist")
    if source.subset:
        sub = root / source.subset
        if not sub.is_dir():
            raise DataError(f"{uri}: no subset '{source.subset}' (no folder {source.subset}/)")
        root, display = sub, f"{display}/{source.subset}"
    return _locate_dir(root, display, source.split)


def _locate_dir(root: Path, display: str, split: str) -> Located:
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return _saved_dataset(root, display, split)
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and data_suffix(p) is not None
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DataError(f"{display}: no jsonl, json or parquet files")
    chosen = [p for p in files if _in_split(p.relative_to(root), split)]
    if not chosen:
        if split != "train":
            raise DataError(f"{display}: no files for split '{split}'")
        chosen = files
    return Located(files=[(p, f"{display}/{p.relative_to(root).as_posix()}") for p in chosen])


def _in_split(relative: Path, split: str) -> bool:
    if split in relative.parts[:-1]:
        return True
    return re.match(rf"^{re.escape(split)}(?:[._-]|$)", relative.name) is not None


def _saved_dataset(root: Path, display: str, split: str) -> Located:
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(root))
    except (OSError, ValueError) as exc:
        raise DataError(f"{display}: cannot load saved dataset: {exc}") from exc
    if isinstance(loaded, DatasetDict):
        if split not in loaded:
            raise DataError(f"{display}: no split '{split}' (has {', '.join(loaded)})")
        return Located(dataset=loaded[split], dataset_origin=f"{display}[{split}]")
    return Located(dataset=loaded, dataset_origin=display)


def _hf_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = hf_offline()
    try:
        path = snapshot_download(
            repo_id,
            repo_type="dataset",
            cache_dir=hf_cache_dir(),
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as exc:
        hint = " (HF_HUB_OFFLINE is set and it is not in the local Hub cache)" if offline else ""
        raise DataError(f"hf://{repo_id}: not found{hint}") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise DataError(f"hf://{repo_id}: download failed: {exc}") from exc
    log.info("event=dataset_resolved uri=hf://%s path=%s", repo_id, path)
    return Path(path)
