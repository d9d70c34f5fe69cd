"""The token-pooling kernel: hierarchical clustering of a document's token vectors (``token_pool``).

One implementation, on every device (the clustering runs on the CPU in scipy, as
sentence-transformers 6's ``HierarchicalTokenPooling`` does; the vectors go back to their device):
Ward linkage over the cosine distances of the tokens after the protected leading ones, cut into
``n // pool_factor`` clusters, each replaced by its mean, every output row L2-normalised. The token
heads (``token_pool_factor``) and ``MultiVectorEncoder`` (a checkpoint's pooling module) call it
through the kernel registry.

The contract (``token_pool``): ``fn(tokens, pool_factor, protected=1, normalize=True)`` takes one
document's ``[n, d]`` token vectors and returns ``[protected + clusters, d]`` in their dtype and
device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.kernel import Kernel

#: Leading tokens kept out of the clustering: a BERT-style model's [CLS] (sentence-transformers' default).
PROTECTED_TOKENS = 1


#: How far from 1 a row's length may be for the rows to count as unit vectors (a model's normalised
#: token vectors, in any float dtype, are within it).
_UNIT = 1e-2


def _ward_labels(vectors: torch.Tensor, clusters: int) -> np.ndarray:
    """Each row's cluster (0-based, in ``fcluster``'s numbering) of Ward's linkage over the cosine
    distances of ``vectors`` (``[n, d]`` float32), cut into at most ``clusters``.

    Unit rows (what a late-interaction model returns) are used as they are, so the distances are
    sentence-transformers' to the bit; raw rows (TEI's un-normalised ``/embed_all``) are normalised
    first, where ``1 - dot`` would not be a cosine distance.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if (vectors.norm(dim=-1) - 1).abs().max() > _UNIT:
        vectors = F.normalize(vectors, dim=-1)
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


@hookimpl
def poolkit_register_kernels(register):
    register("token_pool:scipy", Kernel(fn=hierarchical_pool, reference=hierarchical_pool, device="any"))
