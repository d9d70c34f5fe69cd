"""The packed pieces of a gated delta-net layer: the causal depthwise convolution over packed token
rows and the gated delta rule, each sequence of a :class:`PackedBatch` on its own.

A packed batch holds its sequences end to end, ``[T, ...]``. A recurrent layer run over those rows
as one stream would carry the state of one sequence into the next; here every sequence starts from
a zero state and a zero-padded convolution window, exactly as it would run alone:

- :func:`packed_causal_conv`: ``out[t] = sum_j w[:, K-1-j] * x[t-j]`` over the ``j`` that stay inside
  ``t``'s own sequence (the window's earlier rows are zeros at each sequence start);
- the gated delta rule, per head with state ``S`` (``[dk, dv]``) from zero
  at each sequence start: ``S <- exp(g_t) S``, ``u_t = beta_t (v_t - S^T k_t)``,
  ``S <- S + k_t u_t^T``, ``o_t = S^T q_t``. :func:`gated_delta_rule_recurrent` is that recurrence,
  token by token, the reference; :func:`gated_delta_rule_chunked`, what the model runs, the same in chunks
  of tokens (the within-chunk updates solved as one unit-lower-triangular system, the state carried
  from chunk to chunk), a few matmuls per chunk instead of one small step per token.

Both run on any device in plain torch, in float32 whatever the inputs' dtype. The recurrence steps
through a ``[B, L]`` grid of the sequences; the chunked form cuts each sequence into chunks of its
own, so a short sequence beside a long one costs only its own chunks. Padding rows have
``beta = 0`` and ``g = 0``: they change no state, and their outputs are dropped.
"""

from __future__ import annotations

import torch

from poolkit.contracts.batch import PackedBatch

#: Tokens per chunk of :func:`gated_delta_rule_chunked` (transformers' and FLA's torch paths use 64).
CHUNK = 64


def sequence_offsets(batch: PackedBatch) -> torch.Tensor:
    """``[T]`` each token's index inside its own sequence, from 0 (whatever :attr:`PackedBatch.starts` says)."""
    return torch.arange(batch.num_tokens, device=batch.device) - batch.cu_seqlens[:-1][batch.seq_ids]


def packed_causal_conv(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Causal depthwise convolution of packed rows, each sequence zero-padded at its start, in float32.

    Args:
        x: ``[T, C]`` packed rows.
        weight: ``[C, K]`` one kernel per channel (``nn.Conv1d(C, C, K, groups=C)``'s weight, squeezed),
            ``weight[:, K - 1]`` on the current row.
        offsets: ``[T]`` each row's index inside its sequence (:func:`sequence_offsets`).

    Returns:
        ``[T, C]`` float32: what ``Conv1d(padding=K-1)`` cut to the first ``T`` outputs gives each
        sequence run alone.
    """
    width = weight.shape[-1]
    rows = x.float()
    w = weight.float()
    out = rows * w[:, width - 1]
    for back in range(1, min(width, rows.shape[0])):
        earlier = torch.cat((rows.new_zeros(back, rows.shape[1]), rows[:-back]))
        # A row `back` steps earlier belongs to the same sequence only when the offset allows it.
        keep = (offsets >= back).unsqueeze(-1)
        out = out + torch.where(keep, earlier, 0.0) * w[:, width - 1 - back]
    return out


def _to_grid(batch: PackedBatch, offsets: torch.Tensor, length: int, *rows: torch.Tensor) -> list[torch.Tensor]:
    """Packed ``[T, ...]`` tensors as ``[B, length, ...]`` float32 grids, zeros past each sequence's end."""
    grids = []
    for t in rows:
        grid = t.new_zeros((batch.num_seqs, length, *t.shape[1:]), dtype=torch.float32)
        grid[batch.seq_ids, offsets] = t.float()
        grids.append(grid)
    return grids


def gated_delta_rule_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, batch: PackedBatch
) -> torch.Tensor:
    """The gated delta rule over each sequence of a packed batch, token by token (the reference).

    Args:
        q: ``[T, H, dk]`` queries (normalised and scaled as the layer wants them).
        k: ``[T, H, dk]`` keys.
        v: ``[T, H, dv]`` values.
        g: ``[T, H]`` log decays (``<= 0``): the state is multiplied by ``exp(g)`` before each update.
        beta: ``[T, H]`` update strengths.
        batch: the packed batch whose sequences each start from a zero state.

    Returns:
        ``[T, H, dv]`` float32 outputs ``S_t^T q_t``.
    """
    offsets = sequence_offsets(batch)
    qg, kg, vg, gg, bg = _to_grid(batch, offsets, batch.max_len, q, k, v, g, beta)
    state = qg.new_zeros(batch.num_seqs, q.shape[1], q.shape[2], v.shape[2])
    out = torch.empty_like(vg)
    for t in range(batch.max_len):
        state = state * gg[:, t].exp()[..., None, None]
        remembered = torch.einsum("bhkv,bhk->bhv", state, kg[:, t])
        update = (vg[:, t] - remembered) * bg[:, t, :, None]
        state = state + kg[:, t, :, :, None] * update[:, :, None, :]
        out[:, t] = torch.einsum("bhkv,bhk->bhv", state, qg[:, t])
    return out[batch.seq_ids, offsets]


def gated_delta_rule_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    batch: PackedBatch,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """:func:`gated_delta_rule_recurrent` computed ``chunk`` tokens at a time (same arguments and result).

    Within a chunk, with ``c_t`` the decay accumulated from the chunk's start to token ``t``
    (``log c_t = g_1 + ... + g_t``) and ``S_0`` the state at its start, the updates ``u`` solve
    ``u_t + beta_t sum_{i<t} (c_t / c_i) (k_t . k_i) u_i = beta_t (v_t - c_t S_0^T k_t)``, a
    unit-lower-triangular system; then ``o_t = c_t S_0^T q_t + sum_{i<=t} (c_t / c_i) (q_t . k_i) u_i``
    and the chunk leaves ``c_C S_0 + sum_i (c_C / c_i) k_i u_i^T``. Ratios ``c_t / c_i`` are taken as
    ``exp(log c_t - log c_i)`` for ``i <= t`` only, so nothing overflows however fast the decay.
    """
    # Each sequence is cut into its own chunks (its last one padded with rows of beta = g = 0), so a
    # short sequence beside a long one costs its own chunks only.
    counts = [-(-n // chunk) for n in batch.seq_lens]
    firsts = [sum(counts[:i]) for i in range(len(counts))]
    offsets = sequence_offsets(batch)
    rows = torch.tensor(firsts, device=q.device)[batch.seq_ids] * chunk + offsets
    total, heads, dk, dv = sum(counts), q.shape[1], q.shape[2], v.shape[2]

    def chunked(x: torch.Tensor) -> torch.Tensor:  # [T, H, ...] -> [chunks, H, chunk, ...], float32
        out = x.new_zeros((total * chunk, *x.shape[1:]), dtype=torch.float32)
        out[rows] = x.float()
        return out.unflatten(0, (total, chunk)).movedim(2, 1)

    qc, kc, vc = chunked(q), chunked(k), chunked(v)
    log_decay = chunked(g).cumsum(-1)  # [chunks, H, chunk]
    bc = chunked(beta).unsqueeze(-1)
    lower = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    ratio = torch.where(lower, log_decay.unsqueeze(-1) - log_decay.unsqueeze(-2), float("-inf")).exp()
    system = torch.eye(chunk, device=q.device) + bc * (kc @ kc.transpose(-1, -2)) * ratio.tril(-1)
    decay = log_decay.exp().unsqueeze(-1)
    # u = system^-1 (beta v) - system^-1 (beta c k) S_0: both solved once for every chunk.
    fresh = torch.linalg.solve_triangular(system, bc * vc, upper=False, unitriangular=True)
    reads = torch.linalg.solve_triangular(system, bc * decay * kc, upper=False, unitriangular=True)
    attend = (qc @ kc.transpose(-1, -2)) * ratio
    q_decayed = qc * decay
    k_to_end = kc * (log_decay[..., -1:] - log_decay).exp().unsqueeze(-1)
    chunk_decay = log_decay[..., -1].exp()[..., None, None]
    state = qc.new_zeros(len(counts), heads, dk, dv)
    out = torch.empty_like(vc)
    # The j-th chunk of every sequence that has one, all at once; the state carried per sequence.
    for j in range(max(counts, default=0)):
        seqs = [s for s, n in enumerate(counts) if n > j]
        at = torch.tensor([firsts[s] + j for s in seqs], device=q.device)
        which = torch.tensor(seqs, device=q.device)
        before = state[which]
        u = fresh[at] - reads[at] @ before
        out[at] = q_decayed[at] @ before + attend[at] @ u
        state[which] = before * chunk_decay[at] + k_to_end[at].transpose(-1, -2) @ u
    return out.movedim(1, 2).flatten(0, 1)[rows]
