"""``quantization="int8"`` for the native families: their linear layers in int8, calibrated at load.

A model's linear layers (every one that runs through :func:`poolkit.builtin_models.blocks.linear.linear`
or :func:`~poolkit.builtin_models.blocks.linear.gated_linear`: attention and feed-forward projections;
heads and poolers stay float) become :class:`~poolkit.builtin_models.blocks.linear.Int8Linear` layers:
weights int8 per output channel, activations int8 per token at run time (the ``linear_int8`` op).

Per-token scales keep one token's outlier from costing the others their resolution, but a
transformer's activations have outlier *channels* as well, the same few features large in every
token. SmoothQuant moves them into the weights: each input channel ``j`` is divided by ``s_j =
amax(|x_j|) ** alpha / amax(|W[:, j]|) ** (1 - alpha)`` and the weight's column multiplied by it,
the product unchanged, both now easy to round (``alpha`` 0.5; the activations' maxima are measured
on calibration texts as the model loads).

The largest input channels can instead stay in float (:data:`FLOAT_CHANNELS`, LLM.int8()'s
decomposition): the kernel sees them as zeros, so they widen no token's range, and their products
are added in float32. Some layers may still lose too much. Calibration measures each layer's own cost, the
drop in cosine similarity of the model's output when that layer alone is int8, and keeps the
costliest layers in float until the whole model, measured again, meets the error budget:
:data:`BUDGET`, the least cosine similarity between the int8 and float outputs over the
calibration texts, mean-pooled and first-token alike (and last-token where the architecture pools
that one), or the user's ``quantization_budget``. The costs only rank the layers: how many of the
cheapest keep the budget together is measured whole.

Float channels and the rotation cost time (the rotation a third more of the rounding), so the
fastest configuration is tried first: every layer plain (smoothed, no float channels, no
rotation). Where it meets the budget (a looser one, as OpenVINO's int8 keeps, or a model whose
activations round well) it runs; otherwise each layer takes its most accurate configuration.

Last, the attention's two products are tried in integers (:data:`INTEGER_ATTENTION`, where the CPU's
kernel of that op runs the stream's dtype so: float32 on CPUs with AVX512-VNNI, calls without a window or bias):
kept where some of the model's calls ran so and the whole model, its layers as chosen, still meets
the budget (``int8_attention`` in the report).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch
from torch import nn

from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.kernel import hadamard_rows, probing
from poolkit.plugins.lookup import kernel_for, select_kernel, use_op

from .linear import Int8Linear

logger = logging.getLogger(__name__)

#: The error budget: the least cosine similarity between the int8 model's output and the float
#: model's, over the calibration texts.
BUDGET = 0.9995
#: SmoothQuant's migration strengths tried for each layer (0: none).
ALPHAS = (0.0, 0.25, 0.4, 0.5, 0.6, 0.75)
#: How many input channels (those of the largest calibrated inputs) each layer may keep in float;
#: the count whose output is closest to the float layer's is chosen with the strength. On
#: all-MiniLM-L6-v2 with every layer int8, eight lift the least cosine to fp32 over two held-out
#: sets of texts from 0.99816 (none) and 0.99886 (two) to 0.99919, for about 4% of the speed.
FLOAT_CHANNELS = (8,)
#: The Hadamard block the calibration tries on each layer's smoothed inputs (QuaRot's rotation, the
#: ``linear_int8`` op's ``rotation``), taken where it brings the layer's output closer to the float
#: layer's (:data:`ROTATION_GAIN`). all-MiniLM-L6-v2, every layer int8, least cosine to fp32 over
#: held-out texts: short ones 0.99922 -> 0.99951, documents of 256 tokens 0.99874 -> 0.99932 (blocks
#: of 16: worse than none on the calibration texts; of 512: no better than 64, at three more
#: butterfly stages).
ROTATION = 64
#: The share of a layer's error the rotation must leave (at most) to be taken: it costs the row
#: rounding about a third more time, so a layer it barely helps goes without. On all-MiniLM-L6-v2
#: 0.95 rotates 22 of 24 layers (held-out least cosine 0.99951 short, 0.99932 at 256 tokens); 0.85
#: only the six feed-forward outputs (0.99940, 0.99895: under 0.999 on the long texts).
ROTATION_GAIN = 0.95
#: The op that answers the model's ``varlen_attention`` calls where calibration takes the attention's
#: products in integers (int8 scores, 12-bit probabilities): on all-MiniLM-L6-v2 in float32 the
#: roundings alone keep a least cosine of 0.99998 to the float model, for 1.6-1.9x the attention.
INTEGER_ATTENTION = "varlen_attention_int8"
#: Input rows of each layer kept to choose its strength.
SAMPLE_ROWS = 512
#: Bytes of the float model's linear outputs :func:`own_costs` keeps, from the first call on.
REPLAY_BYTES = 1 << 30


class Quantizable:
    """Mixed into a native architecture: :meth:`quantize` replaces its linear layers by int8 ones."""

    def quantize(self, method: str, batches: Callable[[], Iterable[PackedBatch]], budget: float | None = None) -> dict:
        """See :meth:`poolkit.contracts.architecture.Architecture.quantize`."""
        if method != "int8":
            raise ModelLoadError(f"quantization '{method}' is not supported by {type(self).__name__}; it runs int8")
        return quantize_int8(self, list(batches()), BUDGET if budget is None else budget)


def quantize_int8(model: Architecture, batches: list[PackedBatch], budget: float = BUDGET) -> dict:
    """Calibrate ``model`` on ``batches`` and turn its linear layers int8 where the budget allows.

    Returns:
        what ``poolkit info`` shows: ``method``, ``int8_layers``, ``rotated_layers`` (those of them
        whose inputs are rotated) and ``float_layers`` (module names), ``min_cosine`` (measured on
        the calibration texts with those layers), ``budget``; where the selected ``linear_int8``
        kernel declines this CPU (its ``declines()`` gives a reason: slower than float here),
        ``declined`` with that reason and every layer in float.
    """
    with torch.inference_mode():
        seen = _input_maxima(model, batches)
        if not seen:
            raise ModelLoadError(f"{type(model).__name__} has no linear layers poolkit can run in int8")
        names = {module: name for name, module in model.named_modules()}
        float_layers = {name: module for module, name in names.items() if module in seen}
        quantized = kernel_for(model, "linear_int8", _device(model))
        reason = quantized.declines() if hasattr(quantized, "declines") else None
        if reason is not None:  # a kernel that measured itself slower than float on this CPU
            logger.warning("quantization 'int8' declined: %s", reason)
            return {"method": "int8", "declined": reason, "int8_layers": [], "float_layers": list(float_layers)}
        levels = quantized.weight_levels
        reference = [_summary(model, batch) for batch in batches]
        int8 = {name: _int8_linear(module, *seen[module], quantized, plain=True) for name, module in float_layers.items()}

        def cosine(chosen: Iterable[str]) -> float:
            _swap(model, {name: int8[name] for name in chosen})
            try:
                return min(_cosine(_summary(model, b), r) for b, r in zip(batches, reference))
            finally:
                _swap(model, {name: float_layers[name] for name in int8})

        chosen = list(int8)
        achieved = cosine(chosen)
        if achieved < budget:  # the plain layers miss it: each layer's most accurate configuration
            int8 = {name: _int8_linear(module, *seen[module], quantized) for name, module in float_layers.items()}
            achieved = cosine(chosen)
        if achieved < budget:
            cost = own_costs(model, int8, float_layers, batches[0], reference[0])  # on the first batch
            ranked = chosen = sorted(int8, key=cost.__getitem__)
            while chosen and achieved < budget:
                # the layers whose costs add up to the budget, then one fewer while the whole misses it
                total, fits = 0.0, 0
                for name in chosen:
                    total += cost[name]
                    if total > 1.0 - budget:
                        break
                    fits += 1
                chosen = chosen[: min(fits, len(chosen) - 1)] if fits else []
                achieved = cosine(chosen) if chosen else 1.0
            chosen, achieved = _most_within(ranked, len(chosen), achieved, budget, cosine)
        _swap(model, {name: int8[name] for name in chosen})
        attention = _integer_attention(model, batches, reference, budget)
        achieved = attention if attention is not None else achieved
    kept = [name for name in int8 if name not in chosen]
    logger.info("int8: %d of %d linear layers, min cosine %.5f on the calibration texts", len(chosen), len(int8), achieved)
    return {
        "method": "int8",
        "int8_layers": chosen,
        "rotated_layers": [name for name in chosen if int8[name].rotation],
        "float_channel_layers": [name for name in chosen if int8[name].outliers is not None],
        "float_layers": kept,
        "int8_attention": attention is not None,
        "min_cosine": round(achieved, 6),
        "budget": budget,
        "weight_levels": levels,
    }


def _integer_attention(model: nn.Module, batches: list[PackedBatch], reference: list[torch.Tensor], budget: float) -> float | None:
    """The model's attention answered by the ``varlen_attention_int8`` op (integer products) where its
    kernel here runs the stream's dtype in integers, some of the model's calls ran so (its outputs
    moved: MPNet's calls, with their position bias, go to the float kernel) and the model, its linear layers as chosen,
    still meets ``budget`` with it: the least cosine it keeps then, else ``None`` and the attention as
    it was."""
    parameter = next(model.parameters())
    if parameter.dtype not in getattr(select_kernel(INTEGER_ATTENTION, parameter.device), "dtypes", ()):
        return None
    before = [_summary(model, b) for b in batches]
    use_op(model, "varlen_attention", INTEGER_ATTENTION)
    after = [_summary(model, b) for b in batches]
    if any(not torch.equal(x, y) for x, y in zip(before, after)):
        achieved = min(_cosine(x, r) for x, r in zip(after, reference))
        if achieved >= budget:
            return achieved
    use_op(model, "varlen_attention", None)
    return None


def _most_within(
    ranked: list[str], met: int, achieved: float, budget: float, cosine: Callable[[list[str]], float]
) -> tuple[list[str], float]:
    """The most of the cheapest layers that keeps the budget, and the least cosine they keep.

    The costs' sum overstates the whole's loss where each layer's own run re-rounds every layer after
    it (a bf16 stream's rounding, counted once for every layer), so the layers whose costs fit the
    budget may be far fewer than those that keep it together. Between the first ``met`` of ``ranked``
    (which kept it, at ``achieved``) and all of them (which did not), the longest start found to keep
    it by bisection, each count measured whole by ``cosine``.
    """
    missed = len(ranked)
    while missed - met > 1:
        middle = (met + missed) // 2
        found = cosine(ranked[:middle])
        if found >= budget:
            met, achieved = middle, found
        else:
            missed = middle
    return ranked[:met], achieved


def own_costs(
    model: nn.Module, int8: dict[str, Int8Linear], float_layers: dict[str, nn.Module], batch: PackedBatch, reference: torch.Tensor
) -> dict[str, float]:
    """Each layer's own cost on ``batch``: one less the least cosine of the model's summary
    (:func:`_summary`) to ``reference``, the float model's, with that layer alone in int8.

    A layer's run computes what its own layer changes and no more: up to that layer's first call,
    every linear layer sees the inputs it saw in the float run and gives the outputs it gave there,
    so the float run's outputs are kept (in call order, up to :data:`REPLAY_BYTES`) and those calls
    return a copy of theirs instead of running their matmul. Half the model's matmuls on average,
    the same costs (``test_each_layers_own_cost_is_its_run_alone_in_int8``); the budget itself is
    checked by whole runs, whatever the costs rank.
    """
    kept: list[tuple[nn.Module, torch.Tensor]] = []
    first: dict[nn.Module, int] = {}
    room = REPLAY_BYTES
    calls = 0

    def keep(layer: nn.Module, x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        nonlocal room, calls
        out = compute(x)
        first.setdefault(layer, calls)
        calls += 1
        size = out.numel() * out.element_size()
        if len(kept) == calls - 1 and size <= room:  # the kept calls stay the first ones
            kept.append((layer, out.clone()))
            room -= size
        return out

    def replaying(until: int) -> Callable[..., torch.Tensor]:
        position = 0

        def replay(layer: nn.Module, x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
            nonlocal position, until
            at, position = position, position + 1
            if at < until:
                if kept[at][0] is layer and kept[at][1].shape[:-1] == x.shape[:-1]:
                    return kept[at][1].clone()  # a copy: the model may write into its layers' outputs
                until = 0  # not the call the float run made here: this one and the rest run
            return compute(x)

        return replay

    with probing(keep):
        model(batch)
    costs = {}
    for name, layer in float_layers.items():
        _swap(model, {name: int8[name]})
        try:
            with probing(replaying(min(first.get(layer, 0), len(kept)))):
                costs[name] = 1.0 - _cosine(_summary(model, batch), reference)
        finally:
            _swap(model, {name: layer})
    return costs


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _input_maxima(model: nn.Module, batches: list[PackedBatch]) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """Each linear layer's largest absolute input per input channel over ``batches``, and a
    sample of its input rows (:data:`SAMPLE_ROWS`, spread over the first batch)."""
    seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def observe(layer: nn.Module, x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if isinstance(layer, nn.Linear):
            rows = x.detach().reshape(-1, x.shape[-1]).float()
            amax = rows.abs().amax(0)
            if layer in seen:
                seen[layer] = (torch.maximum(seen[layer][0], amax), seen[layer][1])
            else:
                pick = torch.linspace(0, rows.shape[0] - 1, min(SAMPLE_ROWS, rows.shape[0])).long()
                seen[layer] = (amax, rows[pick].clone())
        return compute(x)

    with probing(observe):
        for batch in batches:
            model(batch)
    return seen


def _int8_linear(layer: nn.Linear, input_max: torch.Tensor, sample: torch.Tensor, quantized: Callable, plain: bool = False) -> Int8Linear:
    """``layer`` smoothed by its calibrated input maxima and rounded to the kernel's levels per row,
    with the smoothing strength of :data:`ALPHAS`, the number of float channels of
    :data:`FLOAT_CHANNELS` and the rotation (none, or :data:`ROTATION` where the kernel takes it)
    whose output on ``sample`` is closest to the float layer's; ``plain``: the strength alone, no
    float channels and no rotation (the fastest layer)."""
    weight = layer.weight.detach().float()
    bias = None if layer.bias is None else layer.bias.detach().float()
    exact = torch.nn.functional.linear(sample, weight, bias)
    rotations = [0]
    if not plain and ROTATION in getattr(quantized, "rotations", ()) and weight.shape[1] % ROTATION == 0:
        rotations.append(ROTATION)
    best, best_error = None, float("inf")
    for count in (0,) if plain else FLOAT_CHANNELS:
        count = min(count, input_max.numel() - 1)
        outliers = input_max.topk(count).indices.sort().values if count > 0 else None
        for rotation in rotations:
            for alpha in ALPHAS:
                candidate = _rounded(weight, bias, input_max, alpha, quantized.weight_levels, outliers, rotation)
                error = (candidate(sample) - exact).norm().item() / (ROTATION_GAIN if rotation else 1.0)  # a handicap
                if error < best_error:
                    best, best_error = candidate, error
    return best


def _rounded(
    weight: torch.Tensor, bias: torch.Tensor | None, input_max: torch.Tensor, alpha: float, levels: int,
    outliers: torch.Tensor | None = None, rotation: int = 0,
) -> Int8Linear:
    column_max = weight.abs().amax(0).clamp_min(1e-5)
    smooth = (input_max.clamp_min(1e-5) ** alpha / column_max ** (1 - alpha)).clamp(1e-3, 1e3)
    inv_smooth = 1.0 / smooth
    outlier_weight = None
    if outliers is not None:  # computed in float: zeros to the kernel, in its inputs and its weight
        outlier_weight = weight[:, outliers].t().contiguous()
        weight = weight.clone()
        weight[:, outliers] = 0
        inv_smooth[outliers] = 0
    weight = weight * smooth
    if rotation:  # W x = (W H)(H x): the kernel rotates the smoothed inputs, the weight takes H once
        weight = hadamard_rows(weight, rotation)
    scale = weight.abs().amax(1).clamp_min(1e-12) / levels
    qweight = torch.round(weight / scale[:, None]).clamp_(-levels, levels).to(torch.int8)
    return Int8Linear(qweight, scale, bias, inv_smooth.contiguous(), outliers, outlier_weight, rotation)


def _swap(model: nn.Module, replacements: dict[str, nn.Module]) -> None:
    for name, module in replacements.items():
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attribute, module)


def _summary(model: nn.Module, batch: PackedBatch) -> torch.Tensor:
    """``model``'s output on ``batch`` as calibration compares it: per sequence, its mean hidden state
    and its first token's, and its last token's where the architecture pools that one
    (``default_pooling_type`` ``"LAST"``: the decoders, CLIP's text side, whose first token has read
    only itself): ``[2 * sequences, hidden]``, or ``3 *``."""
    hidden = model(batch).float()
    means = torch.stack([part.mean(0) for part in batch.split(hidden)])
    ends = [batch.first_indices] + ([batch.last_indices] if getattr(model, "default_pooling_type", None) == "LAST" else [])
    return torch.cat([means, *(hidden[at] for at in ends)])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()
