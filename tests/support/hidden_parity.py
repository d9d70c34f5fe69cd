"""The hidden-state parity of a native architecture against transformers' model on the same
weights: the architecture's last hidden states of one packed batch, the reference's of one
right-padded batch cut back to each sequence, and how far the two are apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from poolkit.contracts.batch import PackedBatch


def run(arch: torch.nn.Module, seqs: list[list[int]], types: list[list[int]] | None = None) -> list[torch.Tensor]:
    """The architecture's last hidden states of one packed batch (with segment ids ``types``), on
    the architecture's device (an ``LLM``'s model is on the suite's device), brought back to the
    CPU beside the references."""
    batch = PackedBatch.from_sequences(seqs, token_type_ids=types, device=next(arch.parameters()).device)
    with torch.inference_mode():
        hidden = arch(batch)
    assert hidden.shape == (sum(map(len, seqs)), arch.hidden_size)
    return batch.split(hidden.cpu())


def reference_hidden(
    model: torch.nn.Module,
    seqs: list[list[int]],
    *,
    types: list[list[int]] | None = None,
    pad: int = 0,
    positions: bool = False,
) -> list[torch.Tensor]:
    """Transformers' last hidden state on one right-padded batch, cut back to each sequence.

    Args:
        types: segment ids, padded with 0 (BERT's ``token_type_ids``).
        pad: the padding id (MPNet numbers positions from the tokens that are not its padding id).
        positions: pass explicit position ids ``0 .. width - 1`` (a decoder's).
    """
    width = max(map(len, seqs))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    inputs = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        inputs["token_type_ids"] = torch.tensor([t + [0] * (width - len(t)) for t in types])
    if positions:
        inputs["position_ids"] = torch.arange(width).expand_as(ids)
    with torch.inference_mode():
        out = model(**inputs).last_hidden_state
    return [out[i, : len(s)] for i, s in enumerate(seqs)]


def agreement(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> tuple[float, float]:
    """Largest absolute difference and smallest per-token cosine over all sequences."""
    a, b = torch.cat(ours).double(), torch.cat(theirs).double()
    return (a - b).abs().max().item(), F.cosine_similarity(a, b, dim=-1).min().item()
