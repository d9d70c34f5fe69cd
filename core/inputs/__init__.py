"""Inputs: the one home of everything that turns a request's inputs into a model's prompts.

``renderer`` is a loaded model's :class:`~poolkit.inputs.renderer.Renderer`: every surface (``LLM``,
the CLI, the server's routes, corpus jobs, the sentence-transformers classes, Ray) builds a
:class:`~poolkit.inputs.request.PoolRequest` of its own schema and hands it to the renderer's door
(:meth:`~poolkit.inputs.renderer.Renderer.render`: the prompts, and the pooling parameters checked
under their LoRA adapter and salt). What it applies has a module each: ``chat`` (chat messages
checked and rendered with the chat template, and the one parser of content parts), ``content`` (the
model's media rules: limits, URL policy, text and media as one prompt), ``media`` (media URLs, their
policy and their fetching), ``params`` (the pooling parameters checked for the task and side) and
``pairs`` (a score request's two sides checked, paired and cut, and the prompts of pairs read
together, which scorers get through their ``ScoreRunner``). The family's media processor (an IO
processor) and the text IO processor do the model-specific work.

May import: ``contracts/``, ``plugins/``, ``config/``, ``loading/``, ``lora/``, ``runtime/``.
"""

from .chat import Chat, conversations
from .renderer import Renderer

__all__ = ["Chat", "Renderer", "conversations"]
