"""The ColVision retrievers: ColQwen2 (:mod:`.colqwen2`, on Qwen2-VL), ColPali (:mod:`.colpali`,
PaliGemma on SigLIP's vision tower), ColQwen2.5 (:mod:`.colqwen2_5`, colpali-engine's, on Qwen2.5-VL)
and ColQwen3.5 (:mod:`.colqwen3_5`, on Qwen3.5, with its single-vector sibling BiQwen3.5),
multi-vector models of document pages and queries (:mod:`.retrieval`), with their media processors
(:mod:`.processor`)."""

from __future__ import annotations

from poolkit.contracts.hookspecs import hookimpl

from .colpali import ColPaliForRetrieval
from .colqwen2 import ColQwen2ForRetrieval
from .colqwen2_5 import ColQwen2_5
from .colqwen3 import ColQwen3, ColQwen3Processor
from .colqwen3_5 import BiQwen3_5, ColQwen3_5
from .processor import ColPaliProcessor, ColQwen2_5Processor, ColQwen2Processor, ColQwen3_5Processor

__all__ = ["BiQwen3_5", "ColPaliForRetrieval", "ColQwen2ForRetrieval", "ColQwen2_5", "ColQwen3", "ColQwen3_5"]


@hookimpl
def poolkit_register_architectures(register):
    register("ColQwen2ForRetrieval", ColQwen2ForRetrieval)
    register("ColPaliForRetrieval", ColPaliForRetrieval)
    register("ColQwen2_5", ColQwen2_5)
    register("ColQwen3", ColQwen3)
    register("ColQwen3_5", ColQwen3_5)
    register("BiQwen3_5", BiQwen3_5)


@hookimpl
def poolkit_register_io_processors(register):
    # The architectures hold their processors themselves; these names are for plugin data and tests.
    register("colpali", ColPaliProcessor)
    register("colqwen2", ColQwen2Processor)
    register("colqwen2_5", ColQwen2_5Processor)
    register("colqwen3", ColQwen3Processor)
    register("colqwen3_5", ColQwen3_5Processor)
