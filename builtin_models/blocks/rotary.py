"""The one home of rotary positions: reading them off a config (:func:`rotary_parameters`,
:class:`RotarySpec`), their frequencies, each token's ``cos`` and ``sin``, and the interleaved
rotation. The half-against-half rotation is the ``rotary`` kernel op."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import ModelLoadError

from .norms import at_least_float32

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: Each token's ``cos`` and ``sin``, ``[T, rotary dim]``.
Rotary = tuple[torch.Tensor, torch.Tensor]

#: Rotary types :func:`rotary_parameters` computes as transformers computes them. ``dynamic`` is plain
#: RoPE up to ``max_position_embeddings``, and poolkit never runs a longer sequence; ``longrope``
#: switches frequencies by the length of the batch and is refused.
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


def rope_parameters(config: PretrainedConfig, layer_type: str | None = None) -> dict[str, Any]:
    """The rotary parameters of a layer type: ``rope_parameters`` (transformers 5, per layer type
    for Gemma 3) or ``rope_theta`` / ``rope_scaling`` (older configs), as one dict."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    return dict(params)


def rotary_parameters(config: PretrainedConfig, head_dim: int, layer_type: str | None = None) -> tuple[torch.Tensor, float]:
    """The rotary inverse frequencies (float32, ``[head_dim // 2]``) and the cos/sin scaling of a
    layer type. Scaled types come from transformers' own ``ROPE_INIT_FUNCTIONS``, so they match it.

    Raises:
        ModelLoadError: a rotary type whose frequencies depend on the batch, or an unknown one.
    """
    params = rope_parameters(config, layer_type)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ModelLoadError(f"unsupported rope_type '{kind}'; poolkit's decoders support {', '.join(ROPE_TYPES)}")
    if float(params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None) or 1.0)) != 1.0:
        raise ModelLoadError("partial_rotary_factor is not supported; rotary embeddings span the whole head")
    if kind in ("default", "dynamic"):
        theta = params.get("rope_theta", getattr(config, "rope_theta", None))
        if theta is None:
            theta = getattr(config, "default_theta", 10_000.0)
        return rotary_inv_freq(theta, head_dim), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    layered = layer_type is not None and isinstance((getattr(config, "rope_parameters", None) or {}).get(layer_type), dict)
    try:
        if layered:
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[kind](config, None, layer_type=layer_type)
        else:
            inv_freq, scaling = ROPE_INIT_FUNCTIONS[kind](config, None)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"cannot compute '{kind}' rotary embeddings from the config: {type(exc).__name__}: {exc}") from None
    if inv_freq.shape[0] * 2 != head_dim:
        raise ModelLoadError(f"'{kind}' rotary embeddings cover {inv_freq.shape[0] * 2} of the {head_dim} head dimensions")
    return inv_freq.float(), float(scaling)


def rotary_inv_freq(theta: float, head_dim: int) -> torch.Tensor:
    """Plain RoPE's inverse frequencies ``theta ** (-2i / head_dim)``, float32, ``[head_dim // 2]``."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim
    return 1.0 / (float(theta) ** exponents)


@dataclass(frozen=True)
class RotarySpec:
    """Rotary positions as an encoder family configures them (NomicBERT, GTE; the families read it
    off their configs), with their NTK scalings.

    Attributes:
        dim: how many leading dimensions of each head are rotated (all, or NomicBERT's
            ``rotary_emb_fraction`` of them).
        theta: the rotary base.
        interleaved: rotate pairs of even and odd dimensions (GPT-J, :func:`rotate_interleaved`)
            instead of the first and second halves (GPT-NeoX, the ``rotary`` kernel op).
        ntk_factor: GTE's fixed NTK scaling (``rope_scaling: {"type": "ntk"}``): the base times
            ``factor`` and every frequency divided by ``factor ** (2 / dim)``, or with ``mixed_b``
            each frequency ``m`` divided by ``exp(a * m ** mixed_b)``.
        ntk_mixed_b: the exponent of mixed NTK scaling; ``None`` for fixed.
        dynamic_factor: NomicBERT's dynamic NTK scaling (``rotary_scaling_factor``): a sequence
            longer than ``trained_positions`` gets the base
            ``theta * (factor * n / trained - (factor - 1)) ** (dim / (dim - 2))``.
        trained_positions: NomicBERT's ``max_trained_positions``.
    """

    dim: int
    theta: float
    interleaved: bool = False
    ntk_factor: float | None = None
    ntk_mixed_b: float | None = None
    dynamic_factor: float | None = None
    trained_positions: int = 2048

    @functools.lru_cache(maxsize=256)
    def inv_freq(self, length: int = 0) -> torch.Tensor:
        """The float32 inverse frequencies ``[dim // 2]`` of a sequence of ``length`` tokens."""
        if self.dynamic_factor and length > self.trained_positions:
            factor, dim = self.dynamic_factor, self.dim
            base = self.theta * ((factor * length / self.trained_positions) - (factor - 1)) ** (dim / (dim - 2))
            return rotary_inv_freq(base, self.dim)
        if self.ntk_factor is not None and self.ntk_factor > 1:
            factor = self.ntk_factor
            if self.ntk_mixed_b is None:
                return rotary_inv_freq(self.theta * factor, self.dim) / factor ** (2 / self.dim)
            a = torch.tensor(factor).log() / (self.dim / 2) ** self.ntk_mixed_b
            lambdas = (a * torch.arange(1, self.dim // 2 + 1).float() ** self.ntk_mixed_b).exp()
            return rotary_inv_freq(self.theta, self.dim) / lambdas
        return rotary_inv_freq(self.theta, self.dim)

    def cos_sin(self, batch: PackedBatch, dtype: torch.dtype) -> Rotary:
        """Each token's ``cos`` and ``sin`` as ``dtype``, ``[T, dim]`` (their angles in float32).

        With dynamic scaling, a sequence longer than ``trained_positions`` gets its own base, as
        the published model computes it alone, so results never depend on the rest of the batch.
        """
        inv_freq = self.inv_freq()
        if self.dynamic_factor and batch.max_len > self.trained_positions:
            rows = [inv_freq if n <= self.trained_positions else self.inv_freq(n) for n in batch.seq_lens]
            inv_freq = torch.stack(rows).to(batch.device)[batch.seq_ids]
        return rotary_cos_sin(inv_freq, batch.positions, dtype)


def rotary_cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype, scaling: float = 1.0, wide: bool = False
) -> Rotary:
    """Each token's rotary ``cos`` and ``sin`` (times ``scaling``) as ``dtype``, ``[T, head_dim]``.

    The angles are computed in float32 whatever ``dtype`` is, as transformers does. ``inv_freq`` is
    ``[head_dim // 2]``, or ``[T, head_dim // 2]`` for frequencies of each token's own. ``wide``:
    rounded to ``dtype``, then held in at least float32 (ModernBERT's: the ``rotary`` op then
    computes in float32, as transformers' ModernBERT does).
    """
    angles = positions.float().unsqueeze(-1) * inv_freq.to(positions.device)
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos(), angles.sin()
    if scaling != 1.0:
        cos, sin = cos * scaling, sin * scaling
    cos, sin = cos.to(dtype), sin.to(dtype)
    return (at_least_float32(cos), at_least_float32(sin)) if wide else (cos, sin)


def rotate_interleaved(x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
    """``x`` with its first ``cos.shape[-1]`` dimensions rotated in adjacent pairs (GPT-J style),
    the rest as they are; ``cos`` and ``sin`` are ``[T, rotary dim]``."""
    cos, sin = rotary
    dim = cos.shape[-1]
    head, tail = x[..., :dim], x[..., dim:]
    shape = (cos.shape[0],) + (1,) * (x.dim() - 2) + (dim // 2,)
    c, s = cos[..., : dim // 2].reshape(shape), sin[..., : dim // 2].reshape(shape)
    even, odd = head[..., 0::2], head[..., 1::2]
    head = torch.stack((even * c - odd * s, odd * c + even * s), dim=-1).flatten(-2)
    return head if tail.shape[-1] == 0 else torch.cat((head, tail), dim=-1)
