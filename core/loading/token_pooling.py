"""How a loaded model pools its token vectors: the one rule every surface pools by.

sentence-transformers' pipeline and PyLate cluster a document's token vectors without those of its
skiplist tokens (punctuation, for colbert-ai and PyLate checkpoints): their ``MultiVectorMask``
(PyLate: its ``skiplist`` mask) drops them before the pooling module runs. :func:`pool_tokens` does
the same, then runs the ``token_pool`` kernel (Ward clustering, ``builtin_poolers/token_pooling.py``)
with the model's protected tokens and normalisation, for the task heads (``LLM``, ``/pooling``,
``/v1/multi-vector``, ``/embed_all``, a checkpoint's own ``HierarchicalTokenPooling``) and
``MultiVectorEncoder`` alike, so an index pooled by any of them holds the references' vectors.
Unpooled token vectors keep every token, as vLLM returns them.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from ..contracts.sentence_transformers import TokenPoolingSpec
from ..contracts.tasks import ROLES
from ..plugins.lookup import select_kernel
from ..plugins.manager import registry

if TYPE_CHECKING:
    from ..contracts.architecture import LoadedModel

__all__ = ["TokenPooling", "kept", "pool_tokens"]


def kept(token_ids: Any, skip: torch.Tensor | None) -> torch.Tensor:
    """``[n]`` bool: the tokens of ``token_ids`` that are not in ``skip`` (a skiplist's ids; ``None``: all)."""
    ids = torch.as_tensor(token_ids)
    if skip is None:
        return torch.ones(len(ids), dtype=torch.bool, device=ids.device)
    return ~torch.isin(ids, skip.to(ids.device))


def pool_tokens(
    vectors: torch.Tensor,
    pool_factor: float,
    spec: TokenPoolingSpec | None = None,
    token_ids: Any = None,
    skip: torch.Tensor | None = None,
) -> torch.Tensor:
    """One input's ``[n, d]`` token vectors (finished: truncated, normalised) pooled by ``pool_factor``
    as sentence-transformers pools them: the rows of its ``skip`` tokens left out first (given the
    ``token_ids`` the rows are of), then the ``token_pool`` kernel with ``spec``'s protected tokens
    and normalisation (sentence-transformers' defaults without one)."""
    if skip is not None and token_ids is not None and len(token_ids) == len(vectors):
        vectors = vectors[kept(token_ids, skip)]
    pool = select_kernel("token_pool", "cpu")
    if spec is None:
        return pool(vectors, pool_factor)
    return pool(vectors, pool_factor, protected=spec.protected, normalize=spec.normalize)


class TokenPooling:
    """How a model's task heads pool token vectors: its pooling ``spec`` and, per retrieval side,
    the skiplist a document (or the side its checkpoint names) leaves out before pooling.

    An input encoded without a side counts as a document, as sentence-transformers counts one.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    @property
    def spec(self) -> TokenPoolingSpec | None:
        return self.model.token_pooling

    @cached_property
    def skiplists(self) -> dict[str, torch.Tensor]:
        """The ids each side's inputs leave out (the model's ColBERT skiplist), read once when first pooling."""
        colbert = registry("io_processor").get("colbert")
        lists = {side: colbert.skipped(self.model, side) for side in ROLES}
        return {side: ids for side, ids in lists.items() if ids is not None}

    def __call__(self, vectors: torch.Tensor, pool_factor: float, token_ids: Any = None, side: str | None = None) -> torch.Tensor:
        """:func:`pool_tokens` of one input on ``side`` (``None``: a document)."""
        skip = self.skiplists.get(side or "document") if token_ids is not None else None
        return pool_tokens(vectors, pool_factor, self.spec, token_ids, skip)
