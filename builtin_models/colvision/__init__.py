"""The ColVision retrievers: ColQwen2 (:mod:`.colqwen2`, on Qwen2-VL) and ColPali (:mod:`.colpali`,
PaliGemma on SigLIP's vision tower), multi-vector models of document pages and queries
(:mod:`.retrieval`), with their media processors (:mod:`.processor`)."""

from __future__ import annotations

from poolkit.contracts.hookspecs import hookimpl

from .colpali import ColPaliForRetrieval
from .colqwen2 import ColQwen2ForRetrieval
from .processor import ColPaliProcessor, ColQwen2Processor

__all__ = ["ColPaliForRetrieval", "ColQwen2ForRetrieval"]


@hookimpl
def poolkit_register_architectures(register):
    register("ColQwen2ForRetrieval", ColQwen2ForRetrieval)
    register("ColPaliForRetrieval", ColPaliForRetrieval)


@hookimpl
def poolkit_register_io_processors(register):
    # The architectures hold their processors themselves; these names are for plugin data and tests.
    register("colpali", ColPaliProcessor)
    register("colqwen2", ColQwen2Processor)
