"""Hierarchical token pooling: fewer vectors per document for late-interaction retrieval.

A multi-vector model stores one vector per token; clustering a document's token vectors and keeping
each cluster's mean cuts what an index stores by about the pooling factor at a small cost in
retrieval quality (Clavié et al., "Reducing the footprint of multi-vector retrieval with minimal
performance impact via token pooling", 2024). The clustering is sentence-transformers 6's
``HierarchicalTokenPooling`` (and PyLate's after its condensed-Ward fix): Ward linkage over the
cosine distances of the tokens after the protected leading ones, cut into ``n // pool_factor``
clusters, each replaced by its mean, then every output vector L2-normalised. The same inputs give
the same clusters in the same order (scipy's linkage and ``fcluster``, which sentence-transformers
calls too), so an index pooled here and one pooled there hold the same vectors.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from poolkit.contracts.errors import InvalidRequest

#: Leading tokens kept out of the clustering: a BERT-style model's [CLS] (sentence-transformers' default).
PROTECTED_TOKENS = 1


def check_pool_factor(pool_factor: float, max_tokens: int | None = None) -> None:
    """Refuse a factor below 1, not finite, or above the model's input limit (``max_tokens``), where
    every document would keep a single vector whatever it says.

    Raises:
        InvalidRequest: with a one-line message.
    """
    if isinstance(pool_factor, bool) or not isinstance(pool_factor, (int, float)) or not math.isfinite(pool_factor):
        raise InvalidRequest(f"token_pool_factor must be a number >= 1, got {pool_factor!r}")
    if pool_factor < 1:
        raise InvalidRequest(f"token_pool_factor must be >= 1, got {pool_factor}")
    if max_tokens is not None and pool_factor > max_tokens:
        raise InvalidRequest(
            f"token_pool_factor {pool_factor} is above the model's {max_tokens} tokens: every input would keep one vector"
        )


def _ward_labels(vectors: torch.Tensor, clusters: int) -> np.ndarray:
    """Each row's cluster (0-based, in ``fcluster``'s numbering) of Ward's linkage over the cosine
    distances of ``vectors`` (``[n, d]`` float32, unit rows), cut into at most ``clusters``."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    distances = (1 - vectors @ vectors.T).clamp_(0, 2).numpy()
    # The condensed upper triangle linkage takes; squareform copies it out 20x faster than an index gather.
    upper = squareform(distances, checks=False)
    return fcluster(linkage(upper, method="ward"), t=clusters, criterion="maxclust") - 1


def hierarchical_pool(
    tokens: torch.Tensor, pool_factor: float, protected: int = PROTECTED_TOKENS, normalize: bool = True
) -> torch.Tensor:
    """One document's token vectors pooled: the ``protected`` leading rows kept, the rest clustered
    into ``max(n // pool_factor, 1)`` groups and each replaced by its mean, in the clusters' order.

    Args:
        tokens: ``[n, d]`` token vectors (unit length, as a late-interaction model returns them).
        pool_factor: keep about ``1 / pool_factor`` of the tokens; ``1`` clusters nothing.
        protected: leading rows left as they are ([CLS]).
        normalize: L2-normalise every output row, the protected ones and the means alike.

    Returns:
        ``[protected + clusters, d]`` in ``tokens``' dtype and device.
    """
    kept, rest = tokens[:protected], tokens[protected:]
    clusters = max(int(len(rest) // pool_factor), 1)
    if clusters < len(rest):
        rest32 = rest.detach().float().cpu()
        labels, groups = np.unique(_ward_labels(rest32, clusters), return_inverse=True)
        index = torch.from_numpy(groups.astype(np.int64))
        sums = torch.zeros(len(labels), rest.shape[1]).index_add_(0, index, rest32)
        counts = torch.bincount(index, minlength=len(labels)).unsqueeze(1)
        tokens = torch.cat([kept, (sums / counts).to(device=tokens.device, dtype=tokens.dtype)])
    if not normalize:
        return tokens
    return F.normalize(tokens.float(), dim=-1).to(tokens.dtype)
