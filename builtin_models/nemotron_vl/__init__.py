"""Llama-Nemotron-VL embedders (nvidia/llama-nemotron-embed-vl-1b-v2): a SigLIP vision tower
feeding a bidirectional Llama (:mod:`.model`), and the processor that tiles its images and expands
their placeholders (:mod:`.processor`, the architecture's ``media_processor``)."""

from __future__ import annotations

from poolkit.contracts.hookspecs import hookimpl

from .model import LlamaNemotronVLModel

__all__ = ["LlamaNemotronVLModel"]


@hookimpl
def poolkit_register_architectures(register):
    register("LlamaNemotronVLModel", LlamaNemotronVLModel)
