"""LoRA: low-rank adapters on a loaded model, chosen per prompt and mixed in one batch.

``request`` is vLLM's :class:`~poolkit.lora.request.LoRARequest`, which names an adapter;
``checkpoint`` reads its PEFT checkpoint (``adapter_config.json`` and its tensors) and checks it;
``names`` maps the checkpoint's layer names to the model's layers; ``injection`` holds the slot
stacks the model's layers carry and attaches them; ``manager`` binds checkpoints into slots, keeps
an LRU of them and pins the slots of running batches (:class:`~poolkit.lora.manager.Adapters`).
Which tokens each adapter owns while a batch runs is planned by the runtime
(:mod:`poolkit.runtime.adapter_runs`).

May import: ``contracts/``, ``plugins/``, ``config/``, ``loading/``.
"""

from .request import LoRARequest

__all__ = ["LoRARequest"]
