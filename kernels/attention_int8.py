"""Attention with integer products, for int8 models: the ``varlen_attention_int8`` op.

The contract of the op, which every kernel of it keeps (the arguments and defaults of its reference,
``poolkit.kernel_reference("varlen_attention_int8")``):

``varlen_attention_int8``: ``fn(q, k, v, batch, causal=False, scale=None, window=None, bias=None) -> out``

- the arguments and result of ``varlen_attention`` (:mod:`poolkit.kernels.attention`): the same
  attention over the sequences of a packed batch, whose products a kernel may compute on rounded
  operands: queries and keys rounded to int8 per token and head (each its own scale), probabilities
  and values to integers of at least 12 and 11 bits (values per dimension of a sequence's head). The
  reference is the exact attention, ``varlen_attention``'s reference itself. Calls a kernel has no
  integer path for go to the exact attention.
- A model does not ask for it by name: int8 calibration
  (:func:`poolkit.builtin_models.blocks.quantize.quantize_int8`) has the model's ``varlen_attention``
  calls answered by this op's kernel (:func:`poolkit.plugins.lookup.use_op`) when the kernel's
  ``dtypes`` (those whose calls it runs in integers; none for the reference) include the stream's and
  the model still meets the error budget with it.

On CPUs with AVX512-VNNI, ``varlen_attention_int8:vnni`` runs float32 calls, and bf16 calls where no
AMX bf16 attention does (the Zen 4 class), bidirectional or causal (no ``window``, ``bias`` or
``key_lens``; head sizes in steps of 16 up to 256) in one call of ``attention_int8.c``: VPDPBUSD for
the scores (4 products a lane, against the FMA's one), VPDPWSSD for the outputs (2), the softmax in
float32; 1.5-1.7x the float32 build of ``attention.c`` on all-MiniLM-L6-v2's and bge-base's shapes at
110-512 tokens, level on 20-40. Its other calls go to ``varlen_attention:avx512`` (bf16 on AMX:
``varlen_attention:amx``).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from poolkit.config import cpu
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.kernel import Kernel, KernelPriority, implements

from .attention import _amx_available, _c_takes, _call, amx_varlen_attention, avx512_varlen_attention, varlen_attention
from .compiler import load_typed_library

SOURCE = Path(__file__).with_name("attention_int8.c")
_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    "poolkit_attention_int8_available": (),
    "poolkit_varlen_attention_int8": (_P, _I, _P, _I, _P, _I, _P, _P, _I, _I, _I, _I, _I, ctypes.c_float, ctypes.c_int, ctypes.c_int, _I),
}


@functools.cache
def _library() -> ctypes.CDLL | None:
    """attention_int8.c built for this machine, where the CPU has AVX512-VNNI and the build has the kernel."""
    lib = load_typed_library(SOURCE, _SIGNATURES) if cpu.cpu_features().avx512_vnni else None
    return lib if lib is not None and lib.poolkit_attention_int8_available() else None


class _RunsInIntegers:
    """The stream dtypes whose calls :func:`vnni_varlen_attention_int8` runs in integers here, read
    when asked (``dtype in kernel.dtypes``): float32 on every CPU it runs on, and bf16 where no AMX
    bf16 attention runs them (AMX's tiles outrun the integer products; AVX512-BF16's ``vdpbf16ps``
    does not: the integer kernel is 1.8-2.8x it on all-MiniLM-L6-v2's and bge-base's shapes at 110-512
    tokens, level at 24)."""

    def __iter__(self):
        yield torch.float32
        if not _amx_available():
            yield torch.bfloat16

    def __contains__(self, dtype: object) -> bool:
        return dtype in tuple(self)

    def __repr__(self) -> str:
        return repr(tuple(self))


@implements(varlen_attention)
def vnni_varlen_attention_int8(q, k, v, batch, causal=False, scale=None, window=None, bias=None) -> torch.Tensor:
    """``varlen_attention_int8`` as one call of attention_int8.c over the packed batch, its heads
    split over torch's threads, bidirectional or causal, float32 and (where no AMX bf16 attention runs
    them) bf16; windows, biases, ``key_lens`` and off-grid calls go to ``varlen_attention:avx512``,
    bf16 calls on AMX to ``varlen_attention:amx``."""
    lib = _library()
    if window is not None or bias is not None or batch.key_lens is not None or lib is None or not _c_takes(16, (torch.float32, torch.bfloat16), q, k, v):
        return avx512_varlen_attention(q, k, v, batch, causal, scale, window, bias)
    bf16 = q.dtype == torch.bfloat16
    if bf16 and _amx_available():
        return amx_varlen_attention(q, k, v, batch, causal, scale, window, bias)
    return _call(lib.poolkit_varlen_attention_int8, q, k, v, batch, batch.max_len, scale, int(causal), int(bf16))


#: The stream dtypes whose calls it runs in integers (calibration tries the op only there).
vnni_varlen_attention_int8.dtypes = _RunsInIntegers()


@hookimpl
def poolkit_register_kernels(register):
    reference = varlen_attention
    register("varlen_attention_int8:torch", Kernel(fn=reference, reference=reference, device="any", priority=KernelPriority.REFERENCE))
    register(
        "varlen_attention_int8:vnni",
        Kernel(fn=vnni_varlen_attention_int8, reference=reference, device="cpu", priority=KernelPriority.COMPILED,
               is_available=lambda: _library() is not None),
    )
