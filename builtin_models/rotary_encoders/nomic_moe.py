"""NomicBERT's mixture-of-experts feed-forward layers (nomic-embed-text-v2-moe), on packed tokens.

nomic-embed-text-v2-moe is NomicBERT (:mod:`~poolkit.builtin_models.rotary_encoders.nomic`) whose
feed-forward block is, in every ``moe_every_n_layers``-th layer, a mixture of experts: a router
scores each token against ``num_experts`` experts, the token goes to its ``moe_top_k`` best, and
their outputs are summed, each weighted by its router probability, plus one bias all experts share.
The math follows nomic's published code (``NomicRouter``, ``NomicExpertMLP``, ``NomicExperts``
of its megablocks-style layer, as vLLM's ``bert_with_rope.py`` and text-embeddings-inference
run it too):

- the layers with experts are those whose index ``i`` has ``i % moe_every_n_layers == 1``
  (layer 1, 3, 5... for every second one; layer 0 never);
- routing: ``softmax`` over all experts of ``router.layer(x)``, in float32, then the top
  ``moe_top_k``; the kept probabilities are *not* renormalised to sum to one
  (``moe_normalize_expert_weights: false``);
- expert ``e``: ``act(x @ w1[e].T) @ w2[e]``, both ``w1`` and ``w2`` stored ``[experts *
  intermediate, hidden]`` with the expert axis outer (``experts.mlp.w1`` / ``w2``), no gate, no
  per-expert bias; ``act`` is the config's ``activation_function`` (``gelu``: the exact GELU);
- the shared ``experts.bias`` (``[hidden]``) is added once, after the weighted sum.

Tokens are grouped by expert (one sort of the ``[T * top_k]`` assignments), so each expert runs
one matmul pair over all its tokens of the batch: a loop over experts, never over tokens. Routing
depends on the token alone, so results never depend on the rest of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks.checks import refuse_switches, unsupported
from ..blocks.linear import activation_function

if TYPE_CHECKING:
    from transformers import PretrainedConfig


@dataclass(frozen=True)
class MoESpec:
    """Which layers have experts, and how many a token goes to.

    Attributes:
        num_experts: experts per mixture-of-experts layer (``num_experts``).
        top_k: experts each token goes to (``moe_top_k``).
        every_n_layers: ``moe_every_n_layers``: layer ``i`` has experts when ``i % n == 1``.
    """

    num_experts: int
    top_k: int
    every_n_layers: int

    def has_experts(self, index: int) -> bool:
        """Whether layer ``index`` (from 0) is a mixture-of-experts layer, as nomic's code picks them."""
        return index % self.every_n_layers == 1


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def moe_spec(config: PretrainedConfig, gated: bool) -> MoESpec | None:
    """The mixture of experts a NomicBERT config asks for, or ``None`` (no ``moe_every_n_layers``).

    Args:
        config: the config, with nomic's fields (``moe_every_n_layers``, ``num_experts``,
            ``moe_top_k``, ``moe_normalize_expert_weights``, ``num_shared_experts``,
            ``expert_choice_router``).
        gated: whether the config's ``activation_function`` is a gated one (SwiGLU...).

    Raises:
        ModelLoadError: naming the field of a variant nomic's published layer does not have.
    """
    every = getattr(config, "moe_every_n_layers", None)
    if every is None or every is False or every == 0:
        return None
    if not _positive(every):
        raise unsupported("moe_every_n_layers", every, "it must be a positive integer")
    experts, top_k = getattr(config, "num_experts", None), getattr(config, "moe_top_k", None)
    if not _positive(experts):
        raise unsupported("num_experts", experts, "moe_every_n_layers needs a positive number of experts")
    if not _positive(top_k) or top_k > experts:
        raise unsupported("moe_top_k", top_k, f"each token goes to between 1 and num_experts ({experts}) experts")
    refuse_switches(config, (
        ("moe_normalize_expert_weights", "nomic's router keeps the top-k probabilities as they are"),
        ("num_shared_experts", "shared experts are not supported (nomic-embed-text-v2-moe has none)"),
        ("expert_choice_router", "only token-choice routing is supported"),
    ))
    if gated:
        activation = getattr(config, "activation_function", None)
        raise unsupported(
            "activation_function", activation,
            "mixture-of-experts NomicBERT runs plain (non-gated) experts, as nomic-embed-text-v2-moe's gelu",
        )
    return MoESpec(num_experts=experts, top_k=top_k, every_n_layers=every)


class NomicExperts(nn.Module):
    """The experts' weights, as the checkpoint stacks them: ``w1`` and ``w2``, each
    ``[num_experts * intermediate, hidden]`` (``experts.mlp.w1`` / ``w2``)."""

    def __init__(self, hidden: int, intermediate: int, num_experts: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts * intermediate, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts * intermediate, hidden))
        self.shape = (num_experts, intermediate, hidden)


class NomicMoE(nn.Module):
    """A mixture-of-experts feed-forward block: ``router`` (``router.layer`` in the checkpoint),
    ``experts`` (``experts.mlp``) and the experts' shared ``bias`` (``experts.bias``).

    Called as the dense blocks are, ``(x [T, H] in the weights' dtype, linear_act kernel)`` (the kernel unused); returns
    ``[T, H]`` in ``x``'s dtype. The router is called as a module: LoRA adapters reach it, and
    ``quantization="int8"`` leaves it in float (a few outputs wide, it would cost nothing to keep and
    only move near-tie tokens to other experts). The experts' stacked weights are no linear layers,
    so adapters cannot target them.
    """

    def __init__(self, hidden: int, intermediate: int, spec: MoESpec, activation: str) -> None:
        super().__init__()
        self.top_k = spec.top_k
        self.router = nn.Linear(hidden, spec.num_experts, bias=False)
        self.experts = NomicExperts(hidden, intermediate, spec.num_experts)
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.act = activation_function(activation)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's ``top_k`` router probabilities (float32, or wider for a wider model) and experts, ``[T, top_k]``."""
        logits = self.router(x.to(self.router.weight.dtype))
        probs = logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
        return probs.topk(self.top_k, dim=-1)

    def forward(self, x: torch.Tensor, linear_act: Callable | None = None) -> torch.Tensor:
        weights, chosen = self.route(x)
        num_experts, intermediate, hidden = self.experts.shape
        flat = chosen.flatten()
        order = flat.argsort(stable=True)  # the assignments, grouped by expert
        tokens = order // self.top_k
        counts = torch.bincount(flat, minlength=num_experts).tolist()
        inputs = x.index_select(0, tokens).to(self.experts.w1.dtype)
        w1 = self.experts.w1.view(num_experts, intermediate, hidden)
        w2 = self.experts.w2.view(num_experts, intermediate, hidden)
        outputs = torch.empty_like(inputs)
        start = 0
        for expert, count in enumerate(counts):
            if count:
                rows = slice(start, start + count)
                outputs[rows] = self.act(F.linear(inputs[rows], w1[expert])) @ w2[expert]
                start += count
        scale = weights.flatten()[order].unsqueeze(-1)
        wide = scale.dtype
        total = torch.zeros(x.shape[0], hidden, dtype=wide, device=x.device)
        total.index_add_(0, tokens, outputs.to(wide) * scale)
        return (total + self.bias.to(wide)).to(x.dtype)
