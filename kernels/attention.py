"""Attention over packed sequences: each token sees only the tokens of its own sequence.

The contracts of the three ops registered here and of ``varlen_attention_int8``, which shares the
first's, which every kernel of the op keeps (same arguments and defaults as the reference, which is
what ``poolkit.kernel_reference(op)`` returns) and models rely on without importing this module:

``varlen_attention``: ``fn(q, k, v, batch, causal=False, scale=None, window=None, bias=None) -> out``

- ``q``: ``[T, heads, head_dim]``, ``k``, ``v``: ``[T, kv_heads, head_dim]``, of one float dtype
  on one device, the ``T`` packed tokens of ``batch`` in order; ``kv_heads`` divides ``heads``
  (grouped-query attention: query head ``i`` reads key/value head ``i // (heads // kv_heads)``,
  as transformers' ``repeat_kv``).
- ``batch``: the :class:`poolkit.PackedBatch` whose ``seq_lens`` (``cu_seqlens``) say which
  consecutive tokens form a sequence; no token attends outside its sequence. When its
  ``key_lens`` is set, no token attends to the tokens of its sequence past the first
  ``key_lens[i]`` (they still attend, and have outputs).
- ``causal``: attend only to the token itself and earlier tokens of its sequence.
- ``scale``: factor on ``q @ k^T``; ``None`` is ``head_dim ** -0.5``.
- ``window``: attend only to tokens at most ``window`` positions away (``None``: no limit).
- ``bias``: ``[heads, N, N]`` additive bias by (query, key) position inside a sequence, ``N`` at
  least the longest sequence, in any float dtype (cast to ``q``'s); ``None`` is none.
- returns ``[T, heads, head_dim]`` in ``q``'s dtype and device. A kernel without a fast path for
  ``window``, ``bias`` or ``key_lens`` hands such calls to the reference.

``varlen_attention_int8``: ``fn(q, k, v, batch, causal=False, scale=None, window=None, bias=None)
-> out``, ``varlen_attention``'s contract and reference, its kernels free to round the operands of
the two products to integers (:mod:`poolkit.kernels.attention_int8`, where int8 calibration uses it).

``varlen_attention_softcap``: ``fn(q, k, v, batch, causal=False, scale=None, window=None,
softcap=None) -> out``, as ``varlen_attention`` without ``bias``, each scaled score ``s``
replaced by ``softcap * tanh(s / softcap)`` before a float32 softmax (Gemma 2); ``softcap=None``
is plain ``varlen_attention``.

``prefix_attention``: ``fn(q, k, v, batch, prefix_k, prefix_v, offsets, scale=None) -> out``: causal
attention of sequences that continue shared prefixes (:mod:`poolkit.runtime.prefix`); sequence
``i`` holds the tokens after its first ``batch.starts[i]`` positions, whose keys and values are
rows ``offsets[i] : offsets[i] + batch.starts[i]`` of ``prefix_k`` / ``prefix_v``; each token
attends to its whole prefix and causally to its own sequence. ``prefix_attention:avx512`` runs it
in one call of attention.c's AVX-512 build (below): each sequence's queries at the positions after
its prefix, the prefix's keys read in place and its values packed once for the sequences that
continue it; the CPU flash and Triton variants are in :mod:`poolkit.kernels.prefix`.

On CPUs with AMX (Intel Sapphire Rapids and later), ``varlen_attention:amx`` and
``varlen_attention_softcap:amx`` run the whole packed batch in one call of a C kernel
(``attention.c``, built for the machine on first use by :mod:`poolkit.kernels.compiler`): bf16
products on the AMX tiles, a float32 softmax per query, no padding, no grouping by length, no
mask tensors; float32 and other calls it has no fast path for (a ``bias``, head sizes that are not
a multiple of 32 up to 256, gradients) go to the reference.

On CUDA, ``varlen_attention:flash`` runs the whole packed batch in one FlashAttention varlen call
(``cu_seqlens``, no padding, no per-length grouping, shared key/value heads read in place); calls it
has no fast path for (float32, a ``bias``, head sizes FlashAttention does not take) go to the
reference, which attends each group of equal-length sequences with SDPA.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from poolkit.config import cpu
from poolkit.contracts.batch import PackedBatch, device_tensor
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.kernel import Kernel, KernelPriority, implements

from .compiler import load_typed_library, workers

SOURCE = Path(__file__).with_name("attention.c")


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    causal: bool = False,
    scale: float | None = None,
    window: int | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention restricted to the sequences of a packed batch.

    Sequences of equal length are attended together in one dense call, so no padding is ever
    computed, and no mask either unless a ``window`` is shorter than the sequences; the result
    is the same as attending to each sequence alone.

    Args:
        q: ``[T, heads, head_dim]`` queries of the packed tokens.
        k: ``[T, kv_heads, head_dim]`` keys, ``kv_heads`` a divisor of ``heads`` (grouped-query
            attention: query head ``i`` reads key/value head ``i // (heads // kv_heads)``).
        v: ``[T, kv_heads, head_dim]`` values.
        batch: the packed batch that says where each sequence starts and ends.
        causal: each token attends only to itself and earlier tokens of its sequence.
        scale: factor applied to ``q @ k^T``; ``None`` is ``head_dim ** -0.5``.
        window: each token attends only to tokens at most ``window`` positions away from it in
            its sequence (a sliding window, such as ModernBERT's local attention); ``None`` is
            no limit.
        bias: ``[heads, N, N]`` additive bias by position pair, ``N`` at least the longest
            sequence: the scaled score of the query at position ``i`` and the key at position
            ``j`` of a sequence gets ``bias[h, i, j]`` added, in every sequence alike (a
            relative position bias such as MPNet's or T5's, or ALiBi); ``None`` is none.

    Returns:
        ``[T, heads, head_dim]`` attention outputs, in token order.
    """
    runs = batch.length_runs
    keys = batch.key_mask
    if len(runs) == len(set(batch.seq_lens)):
        # Each length is one run of consecutive sequences (length-sorted batches): every run is
        # a contiguous slice that already forms a dense [count, length] grid, so nothing is gathered.
        outs = []
        for length, start, count in runs:
            span = slice(start, start + count * length)
            grid = (t[span].unflatten(0, (count, length)) for t in (q, k, v))
            seen = None if keys is None else keys[span].view(count, length)
            outs.append(_dense(*grid, causal, scale, window, bias, seen).flatten(0, 1))
        return outs[0] if len(outs) == 1 else torch.cat(outs)
    groups = batch.length_groups
    out = q.new_empty(q.shape)
    for _, tokens in groups:
        flat = tokens.reshape(-1)
        o = _dense(q[tokens], k[tokens], v[tokens], causal, scale, window, bias, None if keys is None else keys[tokens])
        out.index_copy_(0, flat, o.reshape(flat.shape[0], *q.shape[1:]))
    return out


def _dense(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None, window: int | None,
    bias: torch.Tensor | None = None, seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention on ``[n, L, heads, d]`` inputs, returning ``[n, L, heads, d]``; ``seen``:
    ``[n, L]`` bool, False for keys no query may see."""
    length = q.shape[1]
    mask = None
    if window is not None and window < length - 1:
        mask = _band(length, window, causal, q.device)
        causal = False
    if seen is not None:
        if causal:
            mask, causal = _band(length, length, True, q.device), False
        hidden = seen[:, None, None, :]  # [n, 1, 1, L]: the same keys hidden from every query and head
        mask = hidden if mask is None else mask & hidden
    if bias is not None:
        # One [heads, L, L] float mask for every sequence of the group: the bias, -inf where hidden.
        if causal:
            mask, causal = _band(length, length, True, q.device), False
        added = bias[:, :length, :length].to(q.dtype).unsqueeze(0)  # 4-D: a 3-D float mask keeps CPU attention off its fused path
        mask = added if mask is None else added.masked_fill(~mask, float("-inf"))
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        is_causal=causal,
        scale=scale,
        enable_gqa=k.shape[2] != q.shape[2],  # the CPU flash kernel reads shared key/value heads in place
    )
    return o.transpose(1, 2)


def prefix_groups(batch: PackedBatch, offsets: list[int]) -> list[tuple[int, int, int, int, torch.Tensor]]:
    """The sequences of ``batch`` that continue one prefix with one length, together: per group its
    prefix's ``(offset, start)``, the sequences' ``length`` and count ``n``, and their ``[n * length]``
    token rows, sequence after sequence (``prefix_attention``'s variants attend a group at once)."""
    starts = batch.starts or [0] * batch.num_seqs
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i, (length, start) in enumerate(zip(batch.seq_lens, starts)):
        groups.setdefault((offsets[i] if start else 0, start, length), []).append(i)
    first = batch.cu_seqlens[:-1]
    out = []
    for (offset, start, length), members in groups.items():
        idx = device_tensor(members, torch.long, batch.device)
        rows = (first[idx].unsqueeze(1) + torch.arange(length, device=batch.device)).reshape(-1)
        out.append((offset, start, length, len(members), rows))
    return out


def prefix_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    prefix_k: torch.Tensor,
    prefix_v: torch.Tensor,
    offsets: list[int],
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention of packed sequences that continue shared prefixes whose keys and values
    are computed already.

    Sequence ``i`` of ``batch`` holds the tokens after its first ``batch.starts[i]`` positions;
    those positions' keys and values are rows ``offsets[i] : offsets[i] + batch.starts[i]`` of
    ``prefix_k`` / ``prefix_v``. Each token attends to its whole prefix and to the tokens of its
    own sequence up to itself, as it would in the whole sequence. Sequences with one prefix and
    one length are attended together in one dense call.

    Args:
        q: ``[T, heads, head_dim]`` queries of the packed suffix tokens.
        k, v: ``[T, kv_heads, head_dim]`` their keys and values (``kv_heads`` divides ``heads``).
        batch: the packed suffixes, with :attr:`~poolkit.PackedBatch.starts`.
        prefix_k, prefix_v: ``[P, kv_heads, head_dim]`` the prefixes' keys and values, packed.
        offsets: per sequence, where its prefix starts in ``prefix_k`` (any value when its start is 0).
        scale: factor on ``q @ k^T``; ``None`` is ``head_dim ** -0.5``.

    Returns:
        ``[T, heads, head_dim]`` in ``q``'s dtype.
    """
    out = q.new_empty(q.shape)
    for offset, start, length, n, rows in prefix_groups(batch, offsets):
        qq, kk, vv = (t[rows].unflatten(0, (n, length)) for t in (q, k, v))
        mask = None
        if start:
            shape = (n, start, *k.shape[1:])
            kk = torch.cat((prefix_k[offset : offset + start].expand(shape), kk), dim=1)
            vv = torch.cat((prefix_v[offset : offset + start].expand(shape), vv), dim=1)
            position = torch.arange(length, device=q.device).unsqueeze(1) + start
            mask = position >= torch.arange(start + length, device=q.device).unsqueeze(0)
        o = F.scaled_dot_product_attention(
            qq.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2), attn_mask=mask, is_causal=mask is None,
            scale=scale, enable_gqa=k.shape[1] != q.shape[1],
        )
        out.index_copy_(0, rows, o.transpose(1, 2).reshape(rows.shape[0], *q.shape[1:]))
    return out


def _band(length: int, window: int, causal: bool, device: torch.device) -> torch.Tensor:
    """``[L, L]`` mask, true where query ``i`` may see key ``j``: ``|i - j| <= window`` (and ``j <= i``)."""
    position = torch.arange(length, device=device)
    offset = position.unsqueeze(1) - position.unsqueeze(0)
    return (offset <= window) & (offset >= (0 if causal else -window))


def softcap_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    causal: bool = False,
    scale: float | None = None,
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """:func:`varlen_attention` whose scores are soft-capped before the softmax (Gemma 2).

    Each score ``s = scale * q . k`` becomes ``softcap * tanh(s / softcap)``, as transformers'
    eager attention does; the softmax runs in float32 (or float64). ``softcap=None`` is plain attention.

    Args:
        q, k, v, batch, causal, scale, window: as :func:`varlen_attention`.
        softcap: the cap of the attention scores.

    Returns:
        ``[T, heads, head_dim]`` attention outputs, in token order.
    """
    if softcap is None:
        return varlen_attention(q, k, v, batch, causal=causal, scale=scale, window=window)
    out = q.new_empty(q.shape)
    keys = batch.key_mask
    for length, start, count in batch.length_runs:
        tokens = slice(start, start + count * length)
        grid = [t[tokens].unflatten(0, (count, length)).transpose(1, 2) for t in (q, k, v)]
        seen = None if keys is None else keys[tokens].view(count, length)
        out[tokens] = _softcapped(*grid, causal, scale, window, softcap, seen).transpose(1, 2).flatten(0, 1)
    return out


def _softcapped(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None, window: int | None,
    cap: float, seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-capped attention on ``[n, heads, L, d]`` inputs (``[n, kv_heads, L, d]`` keys and values);
    ``seen`` as :func:`_dense`'s."""
    length = q.shape[2]
    if k.shape[1] != q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    scores = torch.tanh(scores / cap) * cap
    keep = _band(length, length if window is None else window, causal, q.device)
    if seen is not None:
        keep = keep & seen[:, None, None, :]
    scores = scores.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(v.dtype)
    return torch.matmul(weights, v)


_FLASH_DTYPES = (torch.float16, torch.bfloat16)


@implements(varlen_attention)
def flash_varlen_attention(q, k, v, batch, causal=False, scale=None, window=None, bias=None) -> torch.Tensor:
    """:func:`varlen_attention` as one FlashAttention varlen call over the packed tokens (CUDA).

    The sequences' offsets go to the kernel as ``cu_seqlens``: nothing is padded, grouped or
    gathered, and no host synchronisation is needed (the longest length is known on the host).
    fp16/bf16 only, head sizes up to 256 in multiples of 8, no ``bias``: other calls go to
    :func:`varlen_attention`.
    """
    head_dim = q.shape[-1]
    if (
        bias is not None
        or batch.key_lens is not None
        or q.dtype not in _FLASH_DTYPES
        or head_dim % 8
        or head_dim > 256
        or q.shape[1] % k.shape[1]
        or torch.is_grad_enabled()
    ):
        return varlen_attention(q, k, v, batch, causal, scale, window, bias)
    cu = batch.cu_seqlens_int32
    left = -1 if window is None else window
    right = 0 if causal else (-1 if window is None else window)
    return torch.ops.aten._flash_attention_forward(
        q, k, v, cu, cu, batch.max_len, batch.max_len, 0.0, causal, False,
        scale=scale, window_size_left=left, window_size_right=right,
    )[0]


_P, _I = ctypes.c_void_p, ctypes.c_int64
_ATTENTION = (_P, _I, _P, _I, _P, _I, _P, _P, _I, _I, _I, _I, _I, ctypes.c_float, ctypes.c_int, _I, ctypes.c_float, _I)
_PREFIX = (_P, _I, _P, _I, _P, _I, _P, _P, _I, _I, _I, _I, _I, ctypes.c_float, _P, _I, _P, _I, _P, _P, _I)
_SIGNATURES = {
    "poolkit_attention_available": (),
    "poolkit_attention_avx512_available": (),
    "poolkit_attention_f32_available": (),
    "poolkit_varlen_attention": _ATTENTION,
    "poolkit_varlen_attention_avx512": _ATTENTION,
    "poolkit_varlen_attention_f32": _ATTENTION,
    "poolkit_prefix_attention_avx512": _PREFIX,
    "poolkit_prefix_attention_f32": _PREFIX,
}


@functools.cache
def _library() -> ctypes.CDLL | None:
    """attention.c built for this machine (``None`` without a compiler or with compiled kernels off)."""
    return load_typed_library(SOURCE, _SIGNATURES)


@functools.cache
def _amx_available() -> bool:
    """The CPU has AMX-BF16 (:mod:`poolkit.config.cpu`), the build has the AMX kernel and the Linux
    kernel grants this process the tiles."""
    lib = _library() if cpu.cpu_features().amx_bf16 else None
    return lib is not None and bool(lib.poolkit_attention_available())


@functools.cache
def _avx512_available() -> bool:
    """The CPU has AVX512-BF16 and the build targets it (the compiler's ``-march`` has it): the bf16
    AVX-512 build."""
    lib = _library() if cpu.cpu_features().avx512_bf16 else None
    return lib is not None and bool(lib.poolkit_attention_avx512_available())


@functools.cache
def _f32_available() -> bool:
    """The CPU has AVX-512 and the build targets it (with or without AVX512-BF16): the float32 AVX-512
    build, the ``avx512`` kernels' calls every AVX-512 CPU runs."""
    lib = _library() if cpu.cpu_features().avx512f else None
    return lib is not None and bool(lib.poolkit_attention_f32_available())


def _c_takes(multiple: int, dtypes: tuple[torch.dtype, ...], *tensors: torch.Tensor) -> bool:
    """CPU ``[T, heads, d]`` tensors of one of ``dtypes`` with contiguous heads, ``d`` a multiple of
    ``multiple`` up to 256."""
    d = tensors[0].shape[-1]
    return (
        tensors[0].dtype in dtypes
        and d % multiple == 0
        and 0 < d <= 256
        and tensors[0].shape[1] % tensors[1].shape[1] == 0
        and all(
            t.dim() == 3
            and t.dtype == tensors[0].dtype
            and t.device.type == "cpu"
            and t.shape[-1] == d
            and t.stride(2) == 1
            and (t.stride(1) == d or t.shape[1] == 1)
            and not (torch.is_grad_enabled() and t.requires_grad)
            for t in tensors
        )
    )


def _c_build(kind: str, q: torch.Tensor, *tensors: torch.Tensor, op: str = "varlen_attention"):
    """The build of attention.c that runs these tensors (``q``, then the keys and values) for the
    ``"amx"`` or ``"avx512"`` kernel of ``op`` (``varlen_attention``; ``prefix_attention``: AVX-512
    only), ``None`` when they are not its calls or this machine has no such build. AMX: bf16, head
    sizes in steps of 32; AVX-512: bf16 (``vdpbf16ps``, AVX512-BF16) and float32 (FMAs, any AVX-512),
    head sizes in steps of 16, for its own kernel and for the AMX kernel's other calls (an AMX CPU
    has AVX-512 too: float32, and head sizes of 16 such as 48 or 80, stay compiled)."""
    if kind == "amx" and op == "varlen_attention" and _c_takes(32, (torch.bfloat16,), q, *tensors) and _amx_available():
        return _library().poolkit_varlen_attention
    if _c_takes(16, (torch.bfloat16, torch.float32), q, *tensors):
        if q.dtype == torch.bfloat16 and _avx512_available():
            return getattr(_library(), f"poolkit_{op}_avx512")
        if q.dtype == torch.float32 and _f32_available():
            return getattr(_library(), f"poolkit_{op}_f32")
    return None


def _call(fn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch, longest: int, scale: float | None,
          *rest: object) -> torch.Tensor:
    """One call of a build of attention.c (``fn``) over the packed batch (``longest``: its longest
    sequence, with its prefix), the arguments past the scale its op's own (``rest``), its heads split
    over torch's threads (OpenMP's, in the C code) when the batch is large enough to pay for it."""
    tokens, heads, d = q.shape
    out = torch.empty((tokens, heads, d), dtype=q.dtype)
    cu = batch.cu_seqlens.to(device="cpu", dtype=torch.int64).contiguous()
    code = fn(
        q.data_ptr(), q.stride(0), k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0), out.data_ptr(),
        cu.data_ptr(), cu.numel() - 1, longest, heads, k.shape[1], d, d**-0.5 if scale is None else scale,
        *rest, workers(tokens * longest >= 1 << 14),
    )
    if code:
        raise MemoryError("poolkit attention kernel: out of memory for its scratch buffers")
    return out


def _compiled(fn, q, k, v, batch, causal, scale, window, softcap) -> torch.Tensor:
    """:func:`_call` of a ``varlen_attention`` build."""
    return _call(
        fn, q, k, v, batch, batch.max_len, scale,
        int(causal), -1 if window is None else int(window), 0.0 if softcap is None else float(softcap),
    )


def _cpu_varlen_attention(
    kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch, causal: bool = False,
    scale: float | None = None, window: int | None = None, bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`varlen_attention` as one call of the ``kind`` build of attention.c over the packed tokens.

    ``"amx"``: bf16 products on the AMX tiles (CPU, bf16). ``"avx512"``: in bf16 (CPUs with
    AVX512-BF16), the AMX kernel's arithmetic with ``vdpbf16ps`` products, for CPUs without AMX; in
    float32 (every AVX-512 CPU), FMA products and a float32 softmax and probabilities (torch's float32
    arithmetic, another summation order). Calls it has no fast path for (a ``bias``, other dtypes, head sizes off the
    build's grid of 32 or 16, gradients) go to :func:`varlen_attention`.
    """
    fn = _c_build(kind, q, k, v)
    if bias is not None or batch.key_lens is not None or fn is None:
        return varlen_attention(q, k, v, batch, causal, scale, window, bias)
    return _compiled(fn, q, k, v, batch, causal, scale, window, None)


def _cpu_softcap_varlen_attention(
    kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch, causal: bool = False,
    scale: float | None = None, window: int | None = None, softcap: float | None = None,
) -> torch.Tensor:
    """:func:`softcap_varlen_attention` as one call of the ``kind`` build of attention.c (as
    :func:`_cpu_varlen_attention`'s), the capping computed in float32 on the float32 scores; other
    calls go to the reference."""
    fn = _c_build(kind, q, k, v)
    if fn is None or batch.key_lens is not None:
        return softcap_varlen_attention(q, k, v, batch, causal, scale, window, softcap)
    return _compiled(fn, q, k, v, batch, causal, scale, window, softcap)


@implements(prefix_attention)
def avx512_prefix_attention(q, k, v, batch, prefix_k, prefix_v, offsets, scale=None) -> torch.Tensor:
    """:func:`prefix_attention` as one call of attention.c's AVX-512 build over the packed suffixes.

    Each sequence's queries attend from the positions after its prefix: the prefix's keys are read in
    place from ``prefix_k``, its values packed once for the sequences that continue it one after
    another (bf16), the sequence's own keys and values as :func:`avx512_varlen_attention` reads them;
    the arithmetic is that kernel's (bf16 products, float32 scores and softmax; float32 inputs with
    FMAs), in the same order but for the keys' grouping by eight. Calls it has no fast path for go to
    the reference.
    """
    fn = _c_build("avx512", q, k, v, prefix_k, prefix_v, op="prefix_attention")
    if fn is None or batch.key_lens is not None:
        return prefix_attention(q, k, v, batch, prefix_k, prefix_v, offsets, scale)
    starts = batch.starts or [0] * batch.num_seqs
    given = torch.tensor([starts, offsets], dtype=torch.int64)
    return _call(
        fn, q, k, v, batch, max(n + s for n, s in zip(batch.seq_lens, starts)), scale,
        prefix_k.data_ptr(), prefix_k.stride(0), prefix_v.data_ptr(), prefix_v.stride(0), given[0].data_ptr(), given[1].data_ptr(),
    )


#: The kernels of the two ops on each build of attention.c.
amx_varlen_attention = functools.partial(_cpu_varlen_attention, "amx")
amx_softcap_varlen_attention = functools.partial(_cpu_softcap_varlen_attention, "amx")
avx512_varlen_attention = functools.partial(_cpu_varlen_attention, "avx512")
avx512_softcap_varlen_attention = functools.partial(_cpu_softcap_varlen_attention, "avx512")


def _flash_available() -> bool:
    return torch.cuda.is_available() and hasattr(torch.ops.aten, "_flash_attention_forward")


@hookimpl
def poolkit_register_kernels(register):
    for op, reference in (
        ("varlen_attention", varlen_attention),
        ("varlen_attention_softcap", softcap_varlen_attention),
        ("prefix_attention", prefix_attention),
    ):
        register(f"{op}:torch", Kernel(fn=reference, reference=reference, device="any", priority=KernelPriority.REFERENCE))
    register(
        "varlen_attention:flash",
        Kernel(fn=flash_varlen_attention, device="cuda", priority=KernelPriority.COMPILED, is_available=_flash_available),
    )
    # attention.c's builds: AMX ahead of AVX-512 where both run; prefix_attention's ahead of its CPU flash variant
    for name, fn, reference, priority, available in (
        ("varlen_attention:amx", amx_varlen_attention, varlen_attention, KernelPriority.COMPILED, _amx_available),
        ("varlen_attention:avx512", avx512_varlen_attention, varlen_attention, KernelPriority.FAST_PATH, _f32_available),
        ("varlen_attention_softcap:amx", amx_softcap_varlen_attention, softcap_varlen_attention,
         KernelPriority.COMPILED, _amx_available),
        ("varlen_attention_softcap:avx512", avx512_softcap_varlen_attention, softcap_varlen_attention,
         KernelPriority.FAST_PATH, _f32_available),
        ("prefix_attention:avx512", avx512_prefix_attention, prefix_attention, KernelPriority.COMPILED, _f32_available),
    ):
        register(name, Kernel(fn=fn, reference=reference, device="cpu", priority=priority, is_available=available))
