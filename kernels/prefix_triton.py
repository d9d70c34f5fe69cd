"""The Triton program of ``prefix_attention:triton`` (:mod:`poolkit.kernels.prefix`, which imports
this module on its first launch, so that Triton loads only where it runs): the prefix's keys, then
the sequence's own, each block of them through :func:`attend_block`'s online softmax. Functions of
the module, not closures, because Triton's interpreter (the tests run it) finds a jitted function's
callees among its module's names only.
"""

import triton
import triton.language as tl


@triton.jit
def attend_block(acc, m_i, l_i, q, k_ptr, v_ptr, stride_kt, stride_vt, tokens, in_cols, visible, d, in_d, scale):
    """The online softmax over one block of keys (rows ``tokens`` of the head at ``k_ptr`` /
    ``v_ptr``): the weighted values, running maximum and sum after it."""
    keys = tl.load(k_ptr + tokens[None, :] * stride_kt + d[:, None],
                   mask=in_cols[None, :] & in_d[:, None], other=0.0).to(tl.float32)
    values = tl.load(v_ptr + tokens[:, None] * stride_vt + d[None, :],
                     mask=in_cols[:, None] & in_d[None, :], other=0.0).to(tl.float32)
    s = tl.where(visible, tl.dot(q, keys, input_precision="ieee") * scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(s - m_new[:, None])
    return acc * alpha[:, None] + tl.dot(p, values, input_precision="ieee"), m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def prefix_attention_kernel(
    q_ptr, k_ptr, v_ptr, pk_ptr, pv_ptr, o_ptr, cu_ptr, starts_ptr, offsets_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_pkt, stride_pkh, stride_pvt, stride_pvh, stride_ot, stride_oh,
    group, dim, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    first = tl.program_id(2) * BLOCK_M
    begin = tl.load(cu_ptr + seq)
    length = tl.load(cu_ptr + seq + 1) - begin
    if first < length:
        prefix = tl.load(starts_ptr + seq)
        offset = tl.load(offsets_ptr + seq)
        kv = head // group
        rows = first + tl.arange(0, BLOCK_M)
        in_rows = rows < length
        d = tl.arange(0, BLOCK_D)
        in_d = d < dim
        q = tl.load(q_ptr + (begin + rows)[:, None] * stride_qt + head * stride_qh + d[None, :],
                    mask=in_rows[:, None] & in_d[None, :], other=0.0).to(tl.float32)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        for n0 in range(0, prefix, BLOCK_N):  # the prefix: every key visible
            cols = n0 + tl.arange(0, BLOCK_N)
            in_cols = cols < prefix
            acc, m_i, l_i = attend_block(
                acc, m_i, l_i, q, pk_ptr + kv * stride_pkh, pv_ptr + kv * stride_pvh, stride_pkt, stride_pvt,
                offset + cols, in_cols, in_cols[None, :], d, in_d, scale,
            )
        for n0 in range(0, first + BLOCK_M, BLOCK_N):  # its own tokens, up to each query
            cols = n0 + tl.arange(0, BLOCK_N)
            in_cols = cols < length
            acc, m_i, l_i = attend_block(
                acc, m_i, l_i, q, k_ptr + kv * stride_kh, v_ptr + kv * stride_vh, stride_kt, stride_vt,
                begin + cols, in_cols, in_cols[None, :] & (cols[None, :] <= rows[:, None]), d, in_d, scale,
            )
        out = acc / l_i[:, None]
        tl.store(o_ptr + (begin + rows)[:, None] * stride_ot + head * stride_oh + d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=in_rows[:, None] & in_d[None, :])
