"""Hierarchical token pooling: fewer vectors per document for late-interaction retrieval.

A multi-vector model stores one vector per token; clustering a document's token vectors and keeping
each cluster's mean cuts what an index stores by about the pooling factor at a small cost in
retrieval quality (Clavié et al., "Reducing the footprint of multi-vector retrieval with minimal
performance impact via token pooling", 2024). The clustering is sentence-transformers 6's
``HierarchicalTokenPooling`` (and PyLate's after its condensed-Ward fix): Ward linkage over the
cosine distances of the tokens after the protected leading ones, cut into ``n // pool_factor``
clusters, each replaced by its mean, then every output vector L2-normalised. The same inputs give
the same clusters in the same order (scipy's linkage and ``fcluster``, which sentence-transformers
calls too), so an index pooled here and one pooled there hold the same vectors. The clustering
itself is the ``token_pool`` kernel (:func:`poolkit.kernels.token_pool.hierarchical_pool`).

What is clustered is what sentence-transformers' pipeline and PyLate cluster: a document's vectors
less those of its skiplist tokens. That rule is :func:`poolkit.loading.token_pooling.pool_tokens`,
which the task heads here and ``MultiVectorEncoder`` both call.
"""

from __future__ import annotations

import math

from poolkit.contracts.errors import InvalidRequest
from poolkit.loading.token_pooling import TokenPooling, kept, pool_tokens

from ..kernels.token_pool import PROTECTED_TOKENS, hierarchical_pool

__all__ = ["PROTECTED_TOKENS", "TokenPooling", "check_pool_factor", "hierarchical_pool", "kept", "pool_tokens"]


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


