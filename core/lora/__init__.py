"""LoRA: low-rank adapters on a loaded model, chosen per prompt and mixed in one batch.

``request`` is vLLM's :class:`~poolkit.lora.request.LoRARequest`, which names an adapter;
``adapter`` reads a PEFT adapter directory (``adapter_config.json`` and its tensors) and checks it;
``manager`` binds adapters to the model's layers, keeps an LRU of them, and tells the layers which
tokens each adapter owns while a batch runs (:class:`~poolkit.lora.manager.Adapters`).

May import: ``contracts/``, ``plugins/``, ``config/``, ``loading/``.
"""

from .request import LoRARequest

__all__ = ["LoRARequest"]
