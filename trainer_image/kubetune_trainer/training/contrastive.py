"""The contrastive auxiliary loss (spec.training.contrastive): an InfoNCE term on pooled
response representations, added to SFT's or DPO's loss and logged apart from it.

Each row's anchor is its prompt's representation: the model's final hidden states over the
prompt's tokens, pooled. Its candidates are response representations, pooled over response
tokens only (prompt and padding masked out). With negatives ``pair`` (DPO) the candidates are the
pair's chosen response (the positive) and its rejected one; with ``inBatch`` they are every
response of the micro-batch (for DPO, all chosen and all rejected ones), the row's own (chosen)
response the positive. A logit is the cosine similarity divided by the temperature.

The hidden states are the training forward's own, caught by a hook on the model's backbone, so no
second forward runs. ``loss`` stays the trainer's loss plus weight × the term (as TRL adds a
mixture-of-experts auxiliary loss); the unweighted term is logged as ``contrastive_loss``, the
share of anchors whose positive ranks first as ``contrastive_accuracy``, and for DPO the mean
cosine to the chosen response minus that to the rejected one as ``contrastive_margin``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import Tensor

    from kubetune_trainer.plan import ContrastiveSpec

Pooling = Literal["mean", "last"]
Layout = Literal["preference", "single"]
"""How a batch holds its rows: preference, TRL's DPO batches (the chosen sequences, then the
rejected ones, with a completion_mask); single, SFT batches (one sequence per row, the trained
tokens those whose label is not -100)."""

IGNORED_LABEL = -100


def pooled(hidden: Tensor, mask: Tensor, pooling: Pooling) -> Tensor:
    """(rows, dim): per row, the mean of ``hidden`` (rows, length, dim) over the positions where
    ``mask`` (rows, length) is set, or the hidden state at the last such position. A row with no
    such position pools to zeros."""
    import torch

    weights = (mask > 0).to(hidden.dtype)
    if pooling == "mean":
        total = (hidden * weights.unsqueeze(-1)).sum(dim=1)
        return total / weights.sum(dim=1, keepdim=True).clamp(min=1)
    positions = torch.arange(mask.size(1), device=mask.device)
    last = torch.where(mask > 0, positions, -1).max(dim=1).values
    picked = hidden[torch.arange(hidden.size(0), device=hidden.device), last.clamp(min=0)]
    return picked * (last >= 0).to(hidden.dtype).unsqueeze(-1)


def candidate_logits(
    anchors: Tensor, positives: Tensor, negatives: Tensor, *, in_batch: bool, temperature: float
) -> tuple[Tensor, Tensor]:
    """InfoNCE logits (anchors, candidates) and each anchor's positive column.

    ``in_batch``: every anchor scores every positive and every negative (rows of ``negatives``
    may number zero), its own positive at its row index. Otherwise ``negatives`` is row-aligned
    with the anchors and each anchor scores its positive (column 0) against its negative."""
    import torch
    import torch.nn.functional as F

    rows = anchors.size(0)
    if in_batch:
        candidates = torch.cat([positives, negatives])
        cosine = F.cosine_similarity(anchors.unsqueeze(1), candidates.unsqueeze(0), dim=-1)
        target = torch.arange(rows, device=anchors.device)
    else:
        cosine = torch.stack(
            [
                F.cosine_similarity(anchors, positives, dim=-1),
                F.cosine_similarity(anchors, negatives, dim=-1),
            ],
            dim=1,
        )
        target = torch.zeros(rows, dtype=torch.long, device=anchors.device)
    return cosine / temperature, target


def info_nce(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over anchors of -log softmax(logits)[positive]."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float(), target)


def split_representations(
    hidden: Tensor, inputs: dict[str, Any], layout: Layout, pooling: Pooling
) -> tuple[Tensor, Tensor, Tensor]:
    """(anchors, positives, negatives) pooled from a batch's final hidden states: the prompts'
    representations, the trained (chosen) responses', and the rejected responses' (zero rows
    for the single layout)."""
    attention = inputs.get("attention_mask")
    if attention is None:
        attention = inputs["input_ids"].new_ones(inputs["input_ids"].shape)
    if layout == "preference":
        response = inputs["completion_mask"]
    else:
        response = (inputs["labels"] != IGNORED_LABEL).long()
    response = response * attention
    prompt = attention * (1 - response)
    # A prompt-learning adapter prepends virtual tokens; the real tokens are the last ones.
    hidden = hidden[:, -response.size(1) :]
    prompts = pooled(hidden, prompt, pooling)
    responses = pooled(hidden, response, pooling)
    if layout == "single":
        return prompts, responses, responses[:0]
    rows = hidden.size(0) // 2
    return prompts[:rows], responses[:rows], responses[rows:]


def contrastive_terms(
    hidden: Tensor, inputs: dict[str, Any], layout: Layout, spec: ContrastiveSpec
) -> tuple[Tensor, dict[str, float]]:
    """The InfoNCE term of one batch and what is logged of it (unweighted)."""
    import torch
    import torch.nn.functional as F

    anchors, positives, negatives = split_representations(hidden, inputs, layout, spec.pooling)
    in_batch = spec.negatives == "inBatch"
    logits, target = candidate_logits(
        anchors, positives, negatives, in_batch=in_batch, temperature=spec.temperature
    )
    term = info_nce(logits, target)
    with torch.no_grad():
        logged = {
            "contrastive_loss": term.item(),
            "contrastive_accuracy": (logits.argmax(dim=1) == target).float().mean().item(),
        }
        if layout == "preference":
            margin = F.cosine_similarity(anchors, positives, dim=-1) - F.cosine_similarity(
                anchors, negatives, dim=-1
            )
            logged["contrastive_margin"] = margin.mean().item()
    return term, logged


def backbone_of(model: Any) -> Any:
    """The module whose output's last_hidden_state feeds the LM head: the one TRL's fused LM
    head calls (``base_model`` of the causal LM, inside a PEFT wrapper if any)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.base_model


class ContrastiveMixin:
    """Adds ``weight`` × the InfoNCE term to a TRL trainer's loss (set ``contrastive`` and
    ``contrastive_layout`` on the subclass); the term's figures go to TRL's per-mode metrics,
    which its ``log`` averages over the logging interval."""

    contrastive: ContrastiveSpec
    contrastive_layout: Layout

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        captured: list[Tensor] = []

        def keep_first(_module: Any, _args: Any, output: Any) -> None:
            # The first call is the policy's forward; a PEFT reference (adapters disabled) or the
            # recomputed logits for return_outputs run the same backbone afterwards.
            if not captured:
                captured.append(
                    output[0] if isinstance(output, tuple) else output.last_hidden_state
                )

        unwrapped = self.accelerator.unwrap_model(model)  # type: ignore[attr-defined]
        handle = backbone_of(unwrapped).register_forward_hook(keep_first)
        try:
            result = super().compute_loss(  # type: ignore[misc]
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(
                "spec.training.contrastive: the forward did not run the model's backbone "
                f"({type(backbone_of(unwrapped)).__name__}), so there are no hidden states to "
                "contrast; this architecture is not supported"
            )
        loss, outputs = result if return_outputs else (result, None)
        term, logged = contrastive_terms(
            captured[0], inputs, self.contrastive_layout, self.contrastive
        )
        mode = "train" if self.model.training else "eval"  # type: ignore[attr-defined]
        for key, value in logged.items():
            self._metrics[mode][key].append(value)  # type: ignore[attr-defined]
        weighted = self.contrastive.weight * term.to(loss.dtype)
        if mode == "train" and self._loss_scaled_for_accumulation(num_items_in_batch):
            weighted = weighted / self.current_gradient_accumulation_steps  # type: ignore[attr-defined]
        loss = loss + weighted
        return (loss, outputs) if return_outputs else loss

    def _loss_scaled_for_accumulation(self, num_items_in_batch: Any) -> bool:
        """Whether the Trainer leaves gradient accumulation to the loss (it then does not divide
        by the accumulation steps, so this per-micro-batch term must be divided here)."""
        explicit = getattr(self, "loss_is_scaled_for_ga", None)
        if explicit is not None:
            return bool(explicit)
        return bool(
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None)  # type: ignore[attr-defined]
            or self.compute_loss_func is not None  # type: ignore[attr-defined]
        )


def with_contrastive(base: type, spec: ContrastiveSpec | None, layout: Layout) -> type:
    """``base`` (a TRL trainer class) with the contrastive term when the plan has one."""
    if spec is None:
        return base
    return type(
        f"Contrastive{base.__name__}",
        (ContrastiveMixin, base),
        {"contrastive": spec, "contrastive_layout": layout},
    )
