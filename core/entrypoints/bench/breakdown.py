"""``poolkit bench --breakdown``: where one pass of a workload spends its time.

A pooling model's time is its linear layers' matmuls plus everything else (tokenizing, attention,
norms, residuals, pooling). The breakdown runs one pass with every linear layer of the native
families timed through the layers' probe (:func:`poolkit.contracts.kernel.probing`), then runs each
of those calls again alone (the same layer, kernel and shape, warm, best of a few), so the matmuls
are measured against themselves rather than against one square GEMM:

- ``matmul_s``: the pass's time inside the linear layers (matmul and fused epilogue);
- ``alone_s``: the same calls run alone, summed as often as the pass made them;
- ``wall_s``: the whole pass; ``matmul_flops``: the layers' multiply-adds (2 x rows x in x out).

The ratio ``alone_s / matmul_s`` is how close the model's matmuls come to what the same GEMMs reach
alone, and ``1 - matmul_s / wall_s`` the share of the pass outside the matmuls. A model none of whose
layers run through the probe (the transformers fallback, a plugin's own layers) gives no breakdown.
"""

from __future__ import annotations

import time
from typing import Any, Callable

#: Each call re-run alone this many times, the best kept.
REPEATS = 3


def breakdown(run: Callable[[], Any], repeats: int = REPEATS) -> dict[str, float]:
    """The breakdown of one ``run()`` (after a warm-up run), or ``{}`` where no linear layer was probed."""
    import torch

    from ...contracts.kernel import probing

    calls: dict[tuple[int, tuple[int, ...], torch.dtype], list[Any]] = {}  # a layer's call shape -> [compute, count, device]
    inside = 0.0
    flops = 0.0

    def timed(layer: torch.nn.Module, x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        nonlocal inside, flops
        out, seconds = _timed_call(compute, x)
        inside += seconds
        flops += 2.0 * (x.numel() // x.shape[-1]) * int(layer.in_features) * int(layer.out_features)
        key = (id(layer), tuple(x.shape), x.dtype)
        if key in calls:
            calls[key][1] += 1
        else:
            calls[key] = [compute, 1, x.device]
        return out

    run()
    start = time.perf_counter()
    with probing(timed):
        run()
    wall = time.perf_counter() - start
    if not calls:
        return {}
    alone = 0.0
    inputs: dict[tuple[Any, ...], torch.Tensor] = {}  # stand-in inputs, one per shape, made after the pass
    with torch.inference_mode():  # as the engine runs the model
        for (_, shape, dtype), (compute, count, device) in calls.items():
            if (shape, dtype) not in inputs:
                inputs[shape, dtype] = torch.randn(shape, device=device).to(dtype)
            x = inputs[shape, dtype]
            compute(x)  # warm: a kernel packs or compiles for a new shape once
            alone += min(_timed_call(compute, x)[1] for _ in range(repeats)) * count
    return {"wall_s": wall, "matmul_s": inside, "alone_s": alone, "matmul_flops": flops}


def _timed_call(compute: Callable[[Any], Any], x: Any) -> tuple[Any, float]:
    """``compute(x)`` and its seconds, the device's queue drained before and after on a GPU."""
    import torch

    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = compute(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def describe(figures: dict[str, float], peak_gflops: float) -> str:
    """One line of a breakdown for the bench's table: the matmuls' GFLOP/s in the pass and alone,
    against the machine's matmul peak, and the share of the pass outside them."""
    inside = figures["matmul_flops"] / figures["matmul_s"] / 1e9
    alone = figures["matmul_flops"] / figures["alone_s"] / 1e9
    peak = f", {100 * inside / peak_gflops:.0f}% of the matmul peak" if peak_gflops else ""
    return (
        f"matmuls {inside:,.0f} GFLOP/s in the pass, {alone:,.0f} alone ({100 * figures['alone_s'] / figures['matmul_s']:.0f}%){peak}; "
        f"outside the matmuls {100 * (1 - figures['matmul_s'] / figures['wall_s']):.1f}% of the pass"
    )
