"""kubetune_trainer: the plan contract and the trainer.

The package is grouped by role, in layers. A module may import from its own layer and the
layers below it, never from a layer above, and no import (at module level or inside a
function) may close a circle; tests/unit/test_layers.py holds this rule.
docs/architecture.md shows the same list.
"""

LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),  # kubetune-train: the entry point
    ("runtime", "export", "serving"),  # run a plan (single or Ray); the export stage; serving
    ("recipes",),  # one module per method
    ("evaluation", "models", "data"),  # measures, metric suite, gate, judge, sandbox, rewards
    ("training", "ppo"),  # callbacks, checkpoints, hardware, DeepSpeed; PPO's parts
    ("plan", "exit_codes", "uris", "trl_fields"),  # the contract with the operator
    ("reporting",),  # progress records, the job-status reporter, Prometheus metrics
)
"""Top-level modules and packages of kubetune_trainer, highest layer first."""
