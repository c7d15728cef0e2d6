"""Log output of kubetune's processes: kubetune's own lines at ``KUBETUNE_LOG_LEVEL`` (INFO by
default), other libraries at WARNING (Python's own default) and, where a library's line is
known to tell a user nothing, that line silenced where it comes from: a named logger turned
down, or the library's own switch for its progress bars. Never everything at once: a warning
from anywhere else still shows, with its logger's name. ``KUBETUNE_LOG_LEVEL=DEBUG`` silences
nothing and lets every library log at DEBUG.

Silenced, by name (at the default level):

- onnxscript's optimizer passes (``onnx_ir``, ``onnxscript``): every initializer folded or
  deduplicated at INFO, ~100 lines per ONNX export;
- ``torch.onnx``'s exporter: "torchvision is not installed. Skipping torchvision::nms" and its
  step-by-step reports (``TORCH_LOGS=-onnx``: torch resets its own loggers when imported);
- transformers' and datasets' progress bars for sub-second steps (loading weights, writing
  shards, tokenizing a dataset); kubetune's own training bar stays;
- Ray's notice that token authentication is on (``ray``'s authentication logger);
- gguf's notice that a tokenizer's pair template has a separator it does not map
  (``gguf.vocab``): kubetune's chat models never encode pairs;
- transformers' deprecation of ``is_gradient_checkpointing``, which peft still reads when it
  wraps a model (a warnings filter on that message alone).

Others are not printed because kubetune no longer provokes them: DeepSpeed's accelerator notice
(the plan says CPU or GPU: DS_ACCELERATOR is set), TRL's ``gradient_checkpointing``
deprecation (the new ``activation_checkpointing`` name is passed), HF Trainer's dict of logs
per step (kubetune's bar or log line shows the loss instead).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

OWN_LOGGERS = ("kubetune", "kubetune_trainer")
"""kubetune.trainer, kubetune.serve, kubetune.export, ... and kubetune_trainer.* modules."""

NOISY_LOGGERS = {
    "onnx_ir": logging.WARNING,
    "onnxscript": logging.WARNING,
    "ray._private.authentication": logging.ERROR,
    "gguf.vocab": logging.ERROR,
}

NOISY_WARNINGS = ((FutureWarning, r"`is_gradient_checkpointing` is deprecated"),)
"""(category, message regex) of warnings a library raises about another's use of it."""

QUIET_ENVIRONMENT = {
    "TORCH_LOGS": "-onnx",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}
"""Switches the libraries read when they are imported; a value the user set wins."""


def log_level() -> str:
    return os.environ.get("KUBETUNE_LOG_LEVEL", "INFO").strip().upper() or "INFO"


def is_own(logger_name: str) -> bool:
    return logger_name.split(".")[0] in OWN_LOGGERS


class SourceFormatter(logging.Formatter):
    """kubetune's lines as they are (``event=... key=value``); another library's with its level
    and logger name, so a reader knows where it came from."""

    def __init__(self, with_time: bool = True) -> None:
        super().__init__()
        stamp = "%(asctime)s " if with_time else ""
        self.own = logging.Formatter(stamp + "%(message)s")
        self.other = logging.Formatter(stamp + "%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return (self.own if is_own(record.name) else self.other).format(record)


class OthersFromLevel(logging.Filter):
    """Another library's records only from ``level`` up, whatever level its own loggers are at
    (records propagate to the root handler past every ancestor's level)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return is_own(record.name) or record.levelno >= self.level


def configure_logging(level: str | None = None, *, with_time: bool = True) -> None:
    """Set up logging for a kubetune process (trainer, export stage, server, Ray worker). Call
    it first thing: some switches are read when the libraries are imported."""
    level = (level or log_level()).upper()
    debug = level == "DEBUG"
    handler = logging.StreamHandler()
    handler.setFormatter(SourceFormatter(with_time))
    handler.addFilter(OthersFromLevel(logging.DEBUG if debug else logging.WARNING))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])
    logging.captureWarnings(True)  # warnings become one log line each (logger py.warnings)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
    if debug:
        return
    for name, quiet_level in NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet_level)
    for category, message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    quiet_libraries()


def quiet_libraries() -> None:
    """The libraries' switches in QUIET_ENVIRONMENT, for what is imported later and, for the
    Hub's and transformers' progress bars, for what is imported already (the command line
    imports the Hub early; the environment switch is read at import)."""
    for variable, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(variable, value)
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] != "1":
        return
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None:
        hub.disable_progress_bars()
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        transformers_logging.disable_progress_bar()
