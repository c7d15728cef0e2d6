"""Resolve a model source URI to a local directory holding config, weights and tokenizer.

- a local path or ``file://PATH``: used in place.
- ``hf://ORG/NAME``: ``huggingface_hub.snapshot_download`` at ``ModelSpec.revision``, with the
  token from ``$KUBETUNE_MODEL_TOKEN`` (the operator maps ``tokenSecret`` to it). With
  ``HF_HUB_OFFLINE=1`` only the local Hub cache is used.
- ``s3://BUCKET/PREFIX``: the prefix is mirrored into ``$KUBETUNE_CACHE/s3/`` with boto3
  (``AWS_ENDPOINT_URL`` selects an S3-compatible server; credentials are the usual AWS ones).
- ``pvc://CLAIM/PATH``: ``$KUBETUNE_PVC_ROOT/CLAIM/PATH`` (default root ``/mnt/pvc``).
- ``builtin://NAME``: built once into the cache (see :mod:`kubetune_trainer.models.builtin`).

``finetunejob://`` references are resolved by the operator into one of the above before the
plan reaches the trainer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import ValidationError

from kubetune_trainer.exit_codes import EXIT_USAGE
from kubetune_trainer.models.adapters import is_adapter_dir
from kubetune_trainer.models.builtin import ensure_builtin
from kubetune_trainer.plan import ModelSpec
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

log = logging.getLogger(__name__)

TOKEN_ENV = "KUBETUNE_MODEL_TOKEN"
# What a training run needs from a Hub model repository; other formats (original/, GGUF,
# ONNX, .pth) can be many gigabytes and are skipped.
HF_IGNORE = ["original/*", "*.gguf", "*.onnx", "onnx/*", "*.pth", "*.msgpack", "*.h5", "*.ot"]


class ModelSourceError(SourceError):
    """A model source that cannot be resolved."""


def model_spec(source: ModelSpec | str) -> ModelSpec:
    """A ModelSpec for a source URI; a URI the schema refuses is a ModelSourceError."""
    if isinstance(source, ModelSpec):
        return source
    try:
        return ModelSpec(source=source)
    except ValidationError as err:
        reason = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        raise ModelSourceError(f"'{source}': {reason}", exit_code=EXIT_USAGE) from None


def resolve_model_dir(spec: ModelSpec | str) -> Path:
    """The local directory of the model ``spec`` names, fetching or building it if needed."""
    spec = model_spec(spec)
    uri = spec.source
    kind = scheme(uri)
    if kind == "builtin":
        path = ensure_builtin(uri_rest(uri).strip("/"))
    elif kind == "file":
        path = local_path(uri)
    elif kind == "pvc":
        try:
            path = pvc_path(uri)
        except SourceError as exc:
            raise ModelSourceError(str(exc)) from exc
    elif kind == "s3":
        try:
            path = fetch_s3(uri)
        except SourceError as exc:
            raise ModelSourceError(str(exc)) from exc
    elif kind == "hf":
        path = _hf_snapshot(uri_rest(uri).strip("/"), spec.revision)
    elif kind == "finetunejob":
        raise ModelSourceError(
            f"'{uri}': finetunejob:// is resolved by the operator; the trainer needs the "
            "storage location of that job's output"
        )
    else:
        raise ModelSourceError(f"'{uri}': unsupported model source scheme '{kind}://'")
    if not path.is_dir():
        raise ModelSourceError(f"'{uri}': {path} is not a directory")
    if not (path / "config.json").is_file() and not is_adapter_dir(path):
        raise ModelSourceError(
            f"'{uri}': no config.json (nor adapter_config.json) in {path}; "
            "is this a model directory?"
        )
    return path


def _hf_snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = hf_offline()
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=hf_cache_dir(),
            token=os.environ.get(TOKEN_ENV) or None,
            local_files_only=offline,
            ignore_patterns=HF_IGNORE,
        )
    except LocalEntryNotFoundError as exc:
        if offline:
            raise ModelSourceError(
                f"'hf://{repo_id}': not in the local Hub cache and HF_HUB_OFFLINE is set",
                hint="download it once with HF_HUB_OFFLINE unset, or point HF_HUB_CACHE at a "
                "cache that holds it",
            ) from exc
        raise ModelSourceError(
            f"'hf://{repo_id}': cannot reach the Hub and it is not in the local cache",
            hint="check the network (HF_ENDPOINT, proxies), or use a local path, s3:// or pvc://",
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ModelSourceError(
            f"'hf://{repo_id}': download failed: {exc}",
            hint=f"check the repository name and revision; a gated model needs a token "
            f"(spec.model.tokenSecret, or ${TOKEN_ENV} locally)",
        ) from exc
    log.info("event=model_resolved uri=hf://%s revision=%s path=%s", repo_id, revision, path)
    return Path(path)
