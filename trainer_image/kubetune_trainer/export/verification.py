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


VERIFY_QUESTIONS = ("What is 41 + 1?", "Write one short sentence about the sea.")
"""Fixed chat prompts every export verification renders with the model's template."""
GREEDY_TOKENS = 8


def verification_inputs(tokenizer: Any) -> list[list[int]]:
    """Token ids of the fixed prompts, rendered with the chat template as a user turn."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": question}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        for question in VERIFY_QUESTIONS
    ]


def greedy_and_logits(model: Any, prompts: list[list[int]]) -> tuple[list[list[int]], list[Any]]:
    """Greedy continuations and the prompt logits of each prompt (one at a time: no padding)."""
    import torch

    tokens, logits = [], []
    with torch.no_grad():
        for ids in prompts:
            input_ids = torch.tensor([ids])
            logits.append(model(input_ids=input_ids).logits[0].float())
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=GREEDY_TOKENS,
                do_sample=False,
            )
            tokens.append(out[0, len(ids) :].tolist())
    return tokens, logits


def compare(
    loader: str, reference: tuple[list, list], candidate: tuple[list, list], tolerance: float
) -> Verification:
    diff = max(float((a - b).abs().max()) for a, b in zip(reference[1], candidate[1], strict=True))
    return Verification(
        loader=loader,
        max_abs_logit_diff=diff,
        tolerance=tolerance,
        greedy_match=reference[0] == candidate[0],
        prompts=len(reference[0]),
    )
