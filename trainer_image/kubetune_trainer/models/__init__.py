"""Models: resolve a source, build the builtin tiny models, chat templates, load for training.

Importing this package does not import torch or transformers; the functions do, when called.
"""

from kubetune_trainer.models.builtin import ensure_builtin
from kubetune_trainer.models.loading import (
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
)
from kubetune_trainer.models.sources import ModelSourceError, resolve_model_dir
from kubetune_trainer.models.templates import END_OF_TURN, TEMPLATES, resolve_template

__all__ = [
    "END_OF_TURN",
    "TEMPLATES",
    "ModelSourceError",
    "ensure_builtin",
    "load_model",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "resolve_model_dir",
    "resolve_template",
]
