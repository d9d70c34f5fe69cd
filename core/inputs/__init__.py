"""Inputs: the one home of everything that turns a request's inputs into a model's prompts.

``renderer`` is a loaded model's :class:`~poolkit.inputs.renderer.Renderer`: every surface (``LLM``,
the CLI, the server's routes, corpus jobs, the sentence-transformers classes, Ray) converts its own
schema into inputs and hands them to it. What it applies has a module each: ``chat`` (chat messages
checked and rendered with the chat template), ``media`` (media URLs, their policy and their
fetching) and ``pairs`` (a score request's two sides checked, paired and cut). The family's media
processor (an IO processor) and the text IO processor do the model-specific work.

May import: ``contracts/``, ``plugins/``, ``config/``, ``loading/``, ``lora/``, ``runtime/``.
"""

from .chat import Chat, conversations
from .renderer import Renderer

__all__ = ["Chat", "Renderer", "conversations"]
