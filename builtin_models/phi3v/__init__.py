"""Phi-3-Vision (TIGER-Lab/VLM2Vec-Full, ``Phi3VForCausalLM``): a CLIP vision tower whose
HD-transformed features feed the Phi-3 decoder (:mod:`.model`, the decoder in :mod:`.text`, the
config's image settings in :mod:`.config`), and the processor that crops its images and expands
their ``<|image_N|>`` placeholders (:mod:`.processor`, the architecture's ``media_processor``)."""

from __future__ import annotations

from poolkit.contracts.hookspecs import hookimpl

from .model import Phi3VForCausalLM

__all__ = ["Phi3VForCausalLM"]


@hookimpl
def poolkit_register_architectures(register):
    register("Phi3VForCausalLM", Phi3VForCausalLM)
