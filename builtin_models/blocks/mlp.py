"""Feed-forward layers the families share."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from poolkit.plugins.lookup import kernel_for

from .linear import activation_function, fused_activation, gated_linear, linear


class GatedMLP(nn.Module):
    """``down(act(gate) * up)`` with the gate and up projections stacked in one layer of ``2 * inner``
    outputs, the activated half first or second (``gate_first``).

    Args:
        hidden, inner: the model's width and the feed-forward width.
        activation: the activation's transformers name (``hidden_act``).
        names: the checkpoint's names of the stacked projection and of the down projection
            (ModernBERT's ``Wi`` / ``Wo``, GTE's and NomicBERT's ``up_gate`` / ``down``).
        bias: whether each of the two has a bias.
        gate_first: the first ``inner`` outputs are the activated ones.
    """

    def __init__(
        self, hidden: int, inner: int, activation: str, names: tuple[str, str], bias: tuple[bool, bool], gate_first: bool
    ) -> None:
        super().__init__()
        self.names = names
        self.gate_first = gate_first
        setattr(self, names[0], nn.Linear(hidden, 2 * inner, bias=bias[0]))
        setattr(self, names[1], nn.Linear(inner, hidden, bias=bias[1]))
        self.act = activation_function(activation)
        self.fused_act = fused_activation(activation)

    def forward(self, x: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        # Looked up by name on each call: quantization and adapters may replace the layers.
        stacked, down = (getattr(self, name) for name in self.names)
        kernels = (kernel_for(self, "gated_linear", x.device), linear_act)
        return linear(gated_linear(x, stacked, kernels, self.fused_act, self.act, self.gate_first), down, linear_act)
