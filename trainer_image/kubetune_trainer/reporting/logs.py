"""Log output of kubetune's processes: kubetune's own lines at ``KUBETUNE_LOG_LEVEL`` (INFO by
default), other libraries at WARNING (Python's own default), and the third-party messages known
to say nothing a user can act on silenced where they come from, one by one: a named logger
turned down or a warning filtered by its text, never everything at once. With
``KUBETUNE_LOG_LEVEL=DEBUG`` nothing is silenced and every library logs at DEBUG."""

from __future__ import annotations

import logging
import os
import warnings

OWN_LOGGERS = ("kubetune",)
"""kubetune.trainer, kubetune.serve, kubetune.export, ... (and kubetune_trainer.* modules)."""

NOISY_LOGGERS = {
    # onnxscript's optimizer passes log every initializer they fold or deduplicate at INFO
    # (~100 lines per export) through onnx_ir's loggers.
    "onnx_ir": logging.WARNING,
    "onnxscript": logging.WARNING,
    # torch.onnx.export(dynamo=True) reports each translation step ("[torch.onnx] Obtain model
    # graph ... ✅") on its own logger.
    "torch.onnx": logging.WARNING,
    # DeepSpeed announces the accelerator it detected ("Setting ds_accelerator to cpu") at
    # INFO on its own handler, whatever the root logger says.
    "DeepSpeed": logging.WARNING,
}

NOISY_WARNINGS = (
    # TRL's configs warn that gradient_checkpointing's default changes, whatever its value.
    (FutureWarning, r".*gradient_checkpointing.*"),
)


def log_level() -> str:
    return os.environ.get("KUBETUNE_LOG_LEVEL", "INFO").strip().upper() or "INFO"


def configure_logging(level: str | None = None, fmt: str = "%(asctime)s %(message)s") -> None:
    """Set up logging for a kubetune process (trainer, export stage, server, Ray worker)."""
    level = (level or log_level()).upper()
    debug = level == "DEBUG"
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format=fmt)
    for name in (*OWN_LOGGERS, "kubetune_trainer"):
        logging.getLogger(name).setLevel(level)
    if debug:
        return
    for name, quiet_level in NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet_level)
    for category, message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
