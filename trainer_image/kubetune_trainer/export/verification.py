"""The outcome of checking one artifact against its source model with an independent loader."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Verification:
    loader: str
    """Who read the artifact back, e.g. "transformers-gguf" or "onnxruntime"."""
    max_abs_logit_diff: float
    """Largest |logit difference| against the source model over the fixed prompts."""
    tolerance: float
    """The bound max_abs_logit_diff had to stay under for this output type."""
    greedy_match: bool
    """Whether greedy decoding produced the same tokens as the source model."""
    prompts: int
    """How many fixed prompts were compared."""
    detail: str = ""
    tokens_match: bool = True
    """Whether the artifact's own tokenizer encoded the prompts like the source's (GGUF)."""

    @property
    def ok(self) -> bool:
        return self.tokens_match and self.greedy_match and self.max_abs_logit_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}
