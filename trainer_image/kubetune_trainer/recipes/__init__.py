"""One recipe per method (torchtune-style): each module's run(ctx) trains (or evaluates) and
saves."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubetune_trainer.recipes.common import RecipeResult, RunContext

# method → module under kubetune_trainer.recipes ("eval" would shadow the builtin's name).
RECIPE_MODULES = {
    "sft": "sft",
    "dpo": "dpo",
    "reward": "reward",
    "ppo": "ppo",
    "grpo": "grpo",
    "eval": "evaluate",
}


def recipe_for(method: str) -> Callable[[RunContext], RecipeResult]:
    module = importlib.import_module(f"{__name__}.{RECIPE_MODULES[method]}")
    return module.run
