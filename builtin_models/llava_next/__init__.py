"""The LLaVA-NeXT family (E5-V): a CLIP vision tower feeding a Llama, Mistral or Qwen2 decoder
(:mod:`.model`), and the processor that tiles its images and expands their placeholders
(:mod:`.processor`, the architecture's ``media_processor``)."""

from __future__ import annotations

from poolkit.contracts.hookspecs import hookimpl

from .model import LlavaNextForConditionalGeneration

__all__ = ["LlavaNextForConditionalGeneration"]


@hookimpl
def poolkit_register_architectures(register):
    register("LlavaNextForConditionalGeneration", LlavaNextForConditionalGeneration)
