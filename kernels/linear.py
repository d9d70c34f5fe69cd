"""A linear layer with its activation: ``act(x @ W^T + b)``; and the gated feed-forward input
``act(gate) * up`` of SwiGLU / GeGLU layers.

The oneDNN kernels run the matmuls on packed weights, with bias and activation as oneDNN
post-ops applied while each output tile is still in cache. In bf16, on CPUs with AVX512-BF16,
two activations are the exception: oneDNN's swish and tanh-GELU post-ops cost half a matmul or
more (one thread, 2048 x 768 -> 2304 to 6144: +50% and +50-95%; a gated layer's product by the up
projection, a binary post-op, another +30%), so for SiLU and the tanh GELU the kernels run a
plain matmul (for a gated layer one matmul over both halves) and compute the activation, times
the up half, in one compiled pass over its output
(:func:`poolkit.kernels.elementwise.activation_c`, +20-30%), rounding as torch's own bf16
activation does. ReLU's and the erf GELU's post-ops cost less than such a pass: they stay.

On CPUs with AMX, the ``:amx`` kernels (``linear.c``, compiled on first use) run bf16 calls
themselves: the matmul on AMX tiles over weights packed once into the tiles' layout, with the
bias, the activation (none, SiLU, tanh GELU, ReLU, erf GELU) and a gated
layer's product by the up half applied to each 32 x 32 block of results while the tiles already
compute the next, so that nothing but the final bf16 output is written (one thread, 2,048 rows,
fastest of 25 calls: a SwiGLU layer's 768 -> 2 x 3,072 with its SiLU x up 20.3 -> 16.9 ms
against oneDNN's matmul and pass; plain 3,072 -> 768 9.41 -> 8.29 ms). Other calls (float32,
``tanh`` and ``sigmoid``, widths that are not multiples of 32) go on to the oneDNN kernels.

The op's contract, which every ``linear_act`` kernel keeps (same arguments and defaults as the
reference, which is what ``poolkit.kernel_reference("linear_act")`` returns) and models rely on
without importing this module: ``fn(x, weight, bias, act="none") -> out``

- ``x``: ``[..., in_features]``, in ``weight``'s dtype and on its device;
- ``weight``: ``[out_features, in_features]``; ``bias``: ``[out_features]`` or ``None``;
- ``act``: one of the names of :data:`ACTIVATIONS`, which are those of the contract's
  :data:`poolkit.contracts.kernel.LINEAR_ACTIVATIONS`, every one of them taken by every kernel;
- returns ``act(x @ weight^T + bias)``, ``[..., out_features]`` in ``x``'s dtype; autograd
  works through it (a kernel without a backward hands such calls to the reference).

The ``gated_linear`` op (Llama's ``act(gate_proj(x)) * up_proj(x)``, ModernBERT's GeGLU,
NomicBERT's SwiGLU): ``fn(x, weight, bias, act="silu", gate_first=True) -> out``

- ``x``: ``[..., in_features]``, in ``weight``'s dtype and on its device;
- ``weight``: ``[2 * inner, in_features]``, the two projections stacked by output rows (as a
  checkpoint's fused ``gate_up_proj`` or ``Wi`` is); ``bias``: ``[2 * inner]`` or ``None``;
- ``act``: a name of :data:`ACTIVATIONS`, applied to the gate half: the first ``inner`` output
  features when ``gate_first``, else the second;
- returns ``act(gate) * up``, ``[..., inner]`` in ``x``'s dtype; autograd works through it.
  Unfused that is a ``[..., 2 * inner]`` matmul output, then two more passes over it (the
  activation and the product); the oneDNN kernel applies the activation to one matmul's tile and
  the product to the other's, or (bf16 with AVX512-BF16) both in one pass over the wide output;
  the AMX kernel computes gate and up columns side by side and writes only the product.

The ``gated_activation`` op, the same product for a gate and up projection that a layer of their
own computed (an int8 ``gate_up_proj``, which ``gated_linear`` cannot take):
``fn(y, act="silu", gate_first=True) -> out``

- ``y``: ``[..., 2 * inner]``, any float dtype; ``act`` and ``gate_first`` as ``gated_linear``'s;
- returns ``act(gate) * up``, ``[..., inner]`` in ``y``'s dtype: the reference computes it as torch
  does in ``y``'s dtype, a kernel may compute in float32 and round once (the compiled pass does).
"""

from __future__ import annotations

import ctypes
import functools
import weakref
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from poolkit.config import cpu
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.kernel import Kernel, KernelPriority, implements

from .compiler import load_c_library, workers
from .elementwise import activation_c, activation_c_runs

SOURCE = Path(__file__).with_name("linear.c")

#: Activations of :func:`linear_act`, by name: exactly the names of the op's contract,
#: :data:`poolkit.contracts.kernel.LINEAR_ACTIVATIONS`, in its order (tests/architecture/test_layering.py checks it).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "gelu": F.gelu,
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}

#: The private ``torch.ops.mkldnn`` ops the oneDNN kernel calls; without all of them it is unavailable.
ONEDNN_OPS = ("_linear_pointwise", "_reorder_linear_weight", "_is_mkldnn_bf16_supported")
#: oneDNN's post-op (``attr``, ``algorithm``) for each activation name.
_ONEDNN_POST_OPS = {
    "none": ("none", ""),
    "gelu": ("gelu", "none"),
    "gelu_tanh": ("gelu", "tanh"),
    "relu": ("relu", ""),
    "silu": ("swish", ""),
    "tanh": ("tanh", ""),
    "sigmoid": ("sigmoid", ""),
}


def linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str = "none") -> torch.Tensor:
    """``act(x @ weight^T + bias)``, the reference: ``F.linear`` then the activation.

    Args:
        x: ``[..., in_features]`` inputs, in the weight's dtype.
        weight: ``[out_features, in_features]``.
        bias: ``[out_features]`` or ``None``.
        act: a name of :data:`ACTIVATIONS`.
    """
    return ACTIVATIONS[act](F.linear(x, weight, bias))


@implements(linear_act)
def linear_act_onednn(x, weight, bias, act="none") -> torch.Tensor:
    """:func:`linear_act` as one oneDNN matmul with bias and activation as post-ops, or (bf16 on
    CPUs with AVX512-BF16) a plain one and the compiled activation in place.

    Runs fp32 and bf16 inference on the CPU; anything else (fp64, autograd, another device)
    goes to the reference.
    """
    if not _onednn_runs(x, weight):
        return linear_act(x, weight, bias, act)
    rows, n = _bucketed_rows(x)
    if activation_c_runs(x.dtype, weight.shape[0], act):
        out = activation_c(torch.ops.mkldnn._linear_pointwise(rows, _packed(weight, ("onednn", None)), bias, "none", [], ""), act)
    else:
        attr, algorithm = _ONEDNN_POST_OPS[act]
        out = torch.ops.mkldnn._linear_pointwise(rows, _packed(weight, ("onednn", None)), bias, attr, [], algorithm)
    return out[:n].reshape(*x.shape[:-1], out.shape[-1])


def gated_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str = "silu", gate_first: bool = True
) -> torch.Tensor:
    """``act(gate) * up`` of the two halves of ``x @ weight^T + bias``, the reference.

    Args:
        x: ``[..., in_features]`` inputs, in the weight's dtype.
        weight: ``[2 * inner, in_features]``: the gate and up projections stacked.
        bias: ``[2 * inner]`` or ``None``.
        act: a name of :data:`ACTIVATIONS`, for the gate half.
        gate_first: the gate is the first half of the output features (else the second).
    """
    return gated_activation(F.linear(x, weight, bias), act, gate_first)


def gated_activation(y: torch.Tensor, act: str = "silu", gate_first: bool = True) -> torch.Tensor:
    """``act(gate) * up`` of the two halves of ``y``, a gated feed-forward's gate and up projections
    computed by a layer of their own (an int8 layer's, which has no gated kernel): the reference,
    in ``y``'s dtype as torch computes it.

    Args:
        y: ``[..., 2 * inner]`` the gate and up projections side by side.
        act: a name of :data:`ACTIVATIONS`, for the gate half.
        gate_first: the gate is the first half (else the second).
    """
    first, second = y.chunk(2, dim=-1)
    gate, up = (first, second) if gate_first else (second, first)
    return ACTIVATIONS[act](gate) * up


@implements(gated_activation)
def gated_activation_c(y, act="silu", gate_first=True) -> torch.Tensor:
    """:func:`gated_activation` in one compiled pass (``elementwise.c``), computed in float32 and
    rounded once, where the pass takes the call (bf16 on a CPU with AVX512-BF16, SiLU or the tanh
    GELU, ``inner`` a multiple of 16, no autograd): one read of both halves and one write, where
    torch's activation and product take three passes and two roundings. Other calls: the reference."""
    inner = y.shape[-1] // 2
    if y.device.type != "cpu" or torch.is_grad_enabled() or y.shape[-1] % 2 or not activation_c_runs(y.dtype, inner, act):
        return gated_activation(y, act, gate_first)
    rows = y.reshape(-1, y.shape[-1])
    return activation_c(rows.contiguous(), act, gate_first).reshape(*y.shape[:-1], inner)


@implements(gated_linear)
def gated_linear_onednn(x, weight, bias, act="silu", gate_first=True) -> torch.Tensor:
    """:func:`gated_linear` as two oneDNN matmuls: the gate's with the activation as its post-op,
    the up projection's with the product by the gate as its post-op; or (bf16 on CPUs with
    AVX512-BF16) one matmul over both halves and the compiled ``act(gate) * up``. Where oneDNN
    cannot run (see :func:`linear_act_onednn`), the reference."""
    if not _onednn_runs(x, weight):
        return gated_linear(x, weight, bias, act, gate_first)
    rows, n = _bucketed_rows(x)
    if activation_c_runs(x.dtype, weight.shape[0] // 2, act):
        both = torch.ops.mkldnn._linear_pointwise(rows, _packed(weight, ("onednn", None)), bias, "none", [], "")
        out = activation_c(both, act, gate_first)
    else:
        attr, algorithm = _ONEDNN_POST_OPS[act]
        g, u = (0, 1) if gate_first else (1, 0)
        biases = (None, None) if bias is None else bias.chunk(2)
        gate = torch.ops.mkldnn._linear_pointwise(rows, _packed(weight, ("onednn", g)), biases[g], attr, [], algorithm)
        out = torch.ops.mkldnn._linear_pointwise.binary(rows, gate, _packed(weight, ("onednn", u)), biases[u], "mul")
    return out[:n].reshape(*x.shape[:-1], out.shape[-1])


#: The activations the AMX kernels apply to their results, by name, with their codes in linear.c;
#: a call with another one goes to the oneDNN kernel. The erf GELU of a plain layer too, since simd.h
#: reads it from a table: 2,048 rows of 384 -> 1,536 take 1.09 ms against oneDNN's 1.40 with its
#: post-op, 768 -> 3,072 3.43 against 4.42 (with erfc through a reciprocal and e^x it lost, 4.42 ms
#: against 4.05).
AMX_ACTIVATIONS = {"none": 0, "silu": 1, "gelu_tanh": 2, "relu": 3, "gelu": 4}
#: Below this many multiply-adds a call runs on the calling thread alone.
_PARALLEL_MACS = 1 << 23


@implements(linear_act)
def linear_act_amx(x, weight, bias, act="none") -> torch.Tensor:
    """:func:`linear_act` in one pass on AMX tiles (linear.c): the matmul, the bias and the
    activation, rounded once to bf16. Takes bf16 inference on the CPU with ``in_features`` and
    ``out_features`` multiples of 32 and an activation of :data:`AMX_ACTIVATIONS`; hands any
    other call to :func:`linear_act_onednn`."""
    if not _amx_runs(x, weight, bias, act, gated=False):
        return linear_act_onednn(x, weight, bias, act)
    return _amx_linear(x, weight, bias, act, None)


@implements(gated_linear)
def gated_linear_amx(x, weight, bias, act="silu", gate_first=True) -> torch.Tensor:
    """:func:`gated_linear` in one pass on AMX tiles (linear.c): each block of results holds 16
    gate and the 16 matching up columns, so ``act(gate) * up`` is computed, in float32, before
    anything is written, and rounded once to bf16. Takes what :func:`linear_act_amx` takes with
    ``inner`` a multiple of 16; hands any other call to :func:`gated_linear_onednn`."""
    if not _amx_runs(x, weight, bias, act, gated=True):
        return gated_linear_onednn(x, weight, bias, act, gate_first)
    return _amx_linear(x, weight, bias, act, gate_first)


def _amx_runs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str, gated: bool) -> bool:
    """Whether the AMX kernel takes this call: bf16 inference on the CPU, ``in_features`` a
    positive multiple of 32, the outputs a positive multiple of 32 (a gated layer's ``inner`` of
    16), an activation it applies, a float bias on the CPU (or none), a build with AMX."""
    width, multiple = (weight.shape[0] // 2, 16) if gated else (weight.shape[0], 32)
    return (
        act in AMX_ACTIVATIONS
        and x.dtype == torch.bfloat16
        and weight.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.shape[-1] == weight.shape[1]
        and x.shape[-1] > 0
        and x.shape[-1] % 32 == 0
        and width > 0
        and width % multiple == 0
        and (bias is None or (bias.device.type == "cpu" and bias.is_floating_point() and bias.shape == weight.shape[:1]))
        and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)))
        and _amx_library() is not None
    )


def _amx_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str, gate_first: bool | None
) -> torch.Tensor:
    """The AMX kernel's call: plain when ``gate_first`` is ``None``, else gated."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    (m, k), n = rows.shape, weight.shape[0]
    gated = gate_first is not None
    width = n // 2 if gated else n
    out = torch.empty((m, width), dtype=x.dtype)
    if m:
        groups, blocks = -(-m // 32), n // 32
        packed = _packed(weight, ("amx", gate_first))
        b = None if bias is None else _packed_bias(bias, gate_first)
        head = (
            rows.data_ptr(), rows.stride(0), m, packed.data_ptr(), k, None if b is None else b.data_ptr(),
            out.data_ptr(), width, _chunk_rows(k, n), AMX_ACTIVATIONS[act], int(gated),
        )
        by_rows = groups >= 2 * torch.get_num_threads()  # split by rows, else by column blocks
        code = _amx_library().poolkit_linear(*head, groups, blocks, int(by_rows), workers(m * n * k >= _PARALLEL_MACS))
        if code:
            if code == 1:
                raise MemoryError("poolkit linear kernel: out of memory for its scratch rows")
            raise ValueError(f"poolkit linear kernel: cannot compute {list(weight.shape)} with {act!r} (code {code})")
    return out.reshape(*x.shape[:-1], width)


def _chunk_rows(k: int, n: int) -> int:
    """Rows per cache chunk of the AMX kernel (measured, one thread, 2,048 rows): 32 when the whole
    weight fits the L2 cache (up to 1.5 MiB: the chunk's rows stay in L1 while every block of
    weights comes from L2; 384 -> 1,152 at 1,190 GFLOP/s against 1,030 with 512 rows), else about
    768 KiB of inputs, at most 512 rows (the chunk in L2 while each block's weights stream by;
    768 -> 6,144 at 890 GFLOP/s against 560 with 32 rows, 3,072 -> 768 best at 128)."""
    if n * k * 2 <= 3 << 19:
        return 32
    return max(32, min(512, (768 * 1024 // (2 * k)) // 32 * 32))


#: The int8 tile layouts ``_packed`` makes by the packer of :mod:`poolkit.kernels.int8`, which adds
#: them (``"amx"``, ``"channels"``) as it loads: it builds on this module, not this module on it.
INT8_PACKERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def _packed_bias(bias: torch.Tensor, gate_first: bool | None) -> torch.Tensor:
    """``bias`` in float32 and in the packed weight's column order (gated: 16 of the gate's, then
    the 16 matching up biases)."""
    b = bias.detach().float().contiguous()
    if gate_first is None:
        return b
    first, second = b.chunk(2)
    gate, up = (first, second) if gate_first else (second, first)
    return torch.stack((gate.view(-1, 16), up.view(-1, 16)), dim=1).reshape(-1)


@functools.cache
def _amx_library() -> ctypes.CDLL | None:
    """linear.c built for this machine, when the CPU has AMX-BF16 (:mod:`poolkit.config.cpu`), the build
    holds the kernel and the kernel grants its tiles."""
    lib = load_c_library(SOURCE) if cpu.cpu_features().amx_bf16 else None
    if lib is None or not lib.poolkit_linear_available():
        return None
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.poolkit_linear_pack.argtypes = (p, i, i, i, i, i, p)
    lib.poolkit_linear_pack.restype = None
    lib.poolkit_linear.argtypes = (p, i, i, p, i, p, p, i, i, ctypes.c_int, ctypes.c_int, i, i, ctypes.c_int, i)
    lib.poolkit_linear.restype = ctypes.c_int
    return lib


def _amx_available() -> bool:
    return _onednn_available() and _amx_library() is not None


def _onednn_runs(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN runs this call: fp32 or bf16 inference on the CPU, input and weight alike."""
    return (
        x.device.type == "cpu"
        and x.dtype in _onednn_dtypes()
        and weight.dtype == x.dtype
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


def _bucketed_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` as ``[m, in_features]`` rows, ``m`` its row count's :func:`row_bucket` (zero rows
    appended), and the row count ``n`` it had."""
    rows = x.reshape(-1, x.shape[-1])
    n, m = rows.shape[0], row_bucket(rows.shape[0])
    if m != n:  # oneDNN keeps a primitive per input shape: bounded shapes keep its memory bounded
        # (the engine's batches come padded to these buckets already, so this copy is for other callers)
        rows = torch.cat([rows, rows.new_zeros(m - n, rows.shape[1])])
    return rows, n


def row_bucket(n: int) -> int:
    """The row count ``n`` inputs are padded to for oneDNN: up to 1024 the next power of two or
    one and a half times one from 48 (16, 32, 48, 64, 96, ..., 768, 1024), then the next multiple of 256.
    Packed batches have a different token count almost every time, and oneDNN caches a primitive
    (with its buffers) per shape: without buckets a server's memory grew by gigabytes in ten
    minutes (poolkit bench-serve); with them at most 40 shapes per layer exist up to 8192 rows,
    for at most 1.5x the rows of a batch (2x below 16 rows) and 3% of a large one. (Powers of two
    alone padded the 40-token suffixes of shared prefixes to 64 rows, and 640 to 1024.)"""
    if n <= 32:
        return 16 if n <= 16 else 32
    if n <= 1024:
        power = 1 << (n - 1).bit_length()
        return power * 3 // 4 if n <= power * 3 // 4 else power
    return -(-n // 256) * 256


#: Packed weights by ``id()`` of the weight they were made from and their layout (see
#: :func:`_pack`), with that weight's state; an entry leaves with its weight (kept out of the weight
#: itself, so models still pickle and copy).
_PACKED: dict[tuple[int, tuple], tuple[tuple, weakref.ref, torch.Tensor]] = {}


def _packed(weight: torch.Tensor, layout: tuple) -> torch.Tensor:
    """``weight`` packed once into ``layout`` (:func:`_pack`), again if it is changed in place.

    Unpacked, oneDNN reorders the weight on every call, which doubles the time of a small
    batch's matmul (one sentence: 141 -> 66 us for BERT's feed-forward expansion in bf16).

    A weight is packed again when its version counter moves (``copy_()`` or any other in-place
    op, in or out of inference mode) or its storage or dtype changes (``.data`` swaps,
    ``module.to(dtype)``, even when the new storage takes the old one's address); writes through
    ``.data``, which has a counter of its own, are not seen.
    An *inference tensor* (the weights of a model built inside ``torch.inference_mode()``, even
    once cast outside it) has no version counter: it is packed again only when its storage or
    dtype changes. Torch refuses
    in-place ops on it outside inference mode, so what goes unseen is an in-place rewrite of
    such a weight inside inference mode (:func:`forget_packed` drops the packed copies then).
    """
    storage = weight.untyped_storage()
    key = (_version(weight), weight.data_ptr(), weight.dtype)
    slot = (id(weight), layout)
    entry = _PACKED.get(slot)
    # The storage itself, not its address: a freed weight's address is often the next one's.
    if entry is not None and entry[0] == key and entry[1]() is storage:
        return entry[2]
    if entry is None:
        weakref.finalize(weight, _PACKED.pop, slot, None)
    packed = _pack(weight.detach(), layout)
    _PACKED[slot] = (key, weakref.ref(storage), packed)
    return packed


def _pack(weight: torch.Tensor, layout: tuple) -> torch.Tensor:
    """``weight`` in a kernel's layout: ``("onednn", half)``, oneDNN's blocked layout of the whole
    weight (``half`` ``None``) or of the first or second half of its rows; ``("amx", gate_first)``,
    the AMX kernel's tiles (linear.c) of a plain (``gate_first`` ``None``) or gated layer;
    ``("int8", None)``, oneDNN's packed int8 weight, ``("int8", "dpbusd")`` the one-pass int8 kernels' layout
    (``("int8", "channels")``: of a float channels' weight),
    ``("int8", "sums")`` / ``("int8", "int_sums")`` its rows' sums in float32 / int32
    (:mod:`poolkit.kernels.int8`)."""
    kind, how = layout
    if kind == "int8":  # an int8 weight for poolkit.kernels.int8: packed for oneDNN or AMX, or its rows' sums
        if how is None:
            return torch.ops.onednn.qlinear_prepack(weight.contiguous(), None)
        if how in INT8_PACKERS:  # the AMX-INT8 kernel's own tile layouts, which poolkit.kernels.int8 adds
            return INT8_PACKERS[how](weight)
        sums = weight.sum(1, dtype=torch.int32)
        return sums if how == "int_sums" else sums.float()
    if kind == "onednn":
        return torch.ops.mkldnn._reorder_linear_weight(weight if how is None else weight.chunk(2)[how])
    weight = weight.contiguous()
    n, k = weight.shape
    if how is None:
        first, second, step, blocks = 0, 16, 32, n // 32
    else:
        inner = n // 2
        first, second = (0, inner) if how else (inner, 0)
        step, blocks = 16, inner // 16
    packed = torch.empty(n * k, dtype=weight.dtype)
    _amx_library().poolkit_linear_pack(weight.data_ptr(), k, blocks, first, second, step, packed.data_ptr())
    return packed


def forget_packed() -> None:
    """Drop every packed weight: the next call packs again.

    Needed only after rewriting, in place and inside ``torch.inference_mode()``, weights that
    were themselves made in inference mode (they keep no version counter to tell).
    """
    _PACKED.clear()


def _version(weight: torch.Tensor) -> int | None:
    """``weight``'s version counter, or ``None`` for a tensor that keeps none: an inference tensor,
    or a parameter made in inference mode whose data was swapped outside it (``module.to(dtype)``),
    which no longer says ``is_inference()`` but still has no counter."""
    if weight.is_inference():
        return None
    try:
        return weight._version
    except RuntimeError:
        return None


@functools.cache
def _onednn_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes oneDNN's fused linear takes on this CPU (bf16 only where oneDNN supports it)."""
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return (torch.float32, torch.bfloat16) if bf16 else (torch.float32,)


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and all(hasattr(torch.ops.mkldnn, op) for op in ONEDNN_OPS)


def _onednn_priority() -> int:
    """The oneDNN kernels' rank: above the torch reference on CPUs with AVX-512, below it on the
    others (AVX2), where their only dtype is fp32 and MKL's sgemm with torch's activation after it
    was faster end to end: 1.14x on all-MiniLM-L6-v2 and 1.20-1.25x on a bge-base-shaped encoder,
    alternating in one process on an AMD EPYC with AVX2 (docs/performance.md, issue 30). They still
    run when asked for by name, and their tests still run there."""
    return KernelPriority.COMPILED if cpu.cpu_features().avx512_dispatch else KernelPriority.BELOW_REFERENCE


@hookimpl
def poolkit_register_kernels(register):
    for op, reference, onednn, amx in (
        ("linear_act", linear_act, linear_act_onednn, linear_act_amx),
        ("gated_linear", gated_linear, gated_linear_onednn, gated_linear_amx),
    ):
        register(f"{op}:torch", Kernel(fn=reference, reference=reference, device="any"))
        for impl, fn, priority, available in (
            ("onednn", onednn, _onednn_priority(), _onednn_available),
            ("amx", amx, KernelPriority.TOP, _amx_available),
        ):
            register(
                f"{op}:{impl}", Kernel(fn=fn, device="cpu", priority=priority, is_available=available, row_bucket=row_bucket)
            )
    register("gated_activation:torch", Kernel(fn=gated_activation, reference=gated_activation, device="any"))
    register(  # where the compiled pass is built (AVX512-BF16)
        "gated_activation:c",
        Kernel(fn=gated_activation_c, device="cpu", priority=KernelPriority.COMPILED,
               is_available=lambda: activation_c_runs(torch.bfloat16, 16, "silu")),
    )
