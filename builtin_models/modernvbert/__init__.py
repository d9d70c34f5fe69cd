"""ModernVBERT (``ModernVBertModel``) and the ColModernVBERT retriever
(``ColModernVBertForRetrieval``, on the ColVision routes): SigLIP's vision tower, a pixel-shuffle
connector and a ModernBERT encoder (:mod:`.model`), with Idefics3's image tiles (:mod:`.processor`)."""

from __future__ import annotations

from poolkit.contracts.hookspecs import hookimpl

from .model import ColModernVBertForRetrieval, ModernVBertModel
from .processor import ColModernVBertProcessor, ModernVBertProcessor

__all__ = ["ColModernVBertForRetrieval", "ModernVBertModel"]


@hookimpl
def poolkit_register_architectures(register):
    register("ModernVBertModel", ModernVBertModel)
    register("ColModernVBertForRetrieval", ColModernVBertForRetrieval)


@hookimpl
def poolkit_register_io_processors(register):
    # The architectures hold their processors themselves; these names are for plugin data and tests.
    register("modernvbert", ModernVBertProcessor)
    register("colmodernvbert", ColModernVBertProcessor)
