"""One recipe per method (torchtune-style): each module's run(ctx) trains (or evaluates) and
saves. A method whose module is missing is refused by kubetune-train before any model loads."""

from __future__ import annotations

import importlib
import importlib.util
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


def available_methods() -> tuple[str, ...]:
    """Methods whose recipe module ships in this trainer version."""
    return tuple(
        method
        for method, module in RECIPE_MODULES.items()
        if importlib.util.find_spec(f"{__name__}.{module}") is not None
    )


def recipe_for(method: str) -> Callable[[RunContext], RecipeResult]:
    if method not in available_methods():
        raise NotImplementedError(f"method {method} has no recipe in this trainer version")
    module = importlib.import_module(f"{__name__}.{RECIPE_MODULES[method]}")
    return module.run
