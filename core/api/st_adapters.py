"""sentence-transformers' adapter methods (its PEFT mixin: ``load_adapter``, ``set_adapter``,
``active_adapters``, ...) on poolkit's LoRA adapters (:mod:`poolkit.lora`).

sentence-transformers hands these to transformers' PEFT integration on its underlying model;
poolkit reads the same adapter directories and runs them as ``LLM(enable_lora=True)`` does.
Adapters are for inference here: ``add_adapter`` (a new, untrained adapter) is training.
"""

from __future__ import annotations

import contextvars
import json
from pathlib import Path
from typing import Any

from ..contracts.errors import InvalidRequest
from ..lora.manager import Adapters
from ..lora.request import LoRARequest

#: The rank an adapter may have at least, when the first one loaded sizes the model's adapter slots.
MIN_RANK = 16
#: Adapters kept loaded (the least recently used one is read again when it is set once more).
KEPT = 8
#: transformers' placement arguments of ``load_adapter``, which poolkit's engine decides itself.
_PLACEMENT = ("device_map", "max_memory", "offload_folder", "offload_index")


#: The prompt name of the call running in this context (set as its prompt is resolved).
PROMPT_NAME: contextvars.ContextVar[str | None] = contextvars.ContextVar("poolkit_st_prompt_name", default=None)
#: The task adapter the call running in this context names (``encode(..., task=...)``), if any.
TASK: contextvars.ContextVar[str | None] = contextvars.ContextVar("poolkit_st_task", default=None)


class AdapterMethods:
    """Mixed into the sentence-transformers classes: their PEFT adapter methods."""

    llm: Any

    def _loaded_adapters(self) -> dict[str, LoRARequest]:
        return self.__dict__.setdefault("_adapters", {})

    def load_adapter(self, peft_model_id: str, adapter_name: str | None = None, **kwargs: Any) -> None:
        """Load the PEFT LoRA adapter in directory ``peft_model_id`` as ``adapter_name``
        (``"default"``); the first one loaded becomes the active one, as in transformers.

        Raises:
            InvalidRequest: the name is taken, the adapter cannot be read or does not fit the
                model, or an argument poolkit does not take (a revision, a token, a state dict).
        """
        taken = sorted(k for k, v in kwargs.items() if v is not None and k not in _PLACEMENT)
        if taken:
            raise InvalidRequest(f"load_adapter: poolkit reads a local adapter directory; it takes no {', '.join(taken)}")
        name = adapter_name or "default"
        loaded = self._loaded_adapters()
        if name in loaded:
            raise InvalidRequest(f"Adapter with name {name} already exists. Please use a different name.")
        request = LoRARequest(name, len(loaded) + 1, str(peft_model_id))
        model = self.llm.model
        if model.adapters is None:
            model.adapters = Adapters(model, max(MIN_RANK, _rank(Path(peft_model_id))), 1, KEPT)
        model.adapters.slot(request)  # read and checked now
        loaded[name] = request
        if self.__dict__.get("_active") is None and not self.__dict__.get("_disabled"):
            self._active = name

    def add_adapter(self, *args: Any, **kwargs: Any) -> None:
        raise InvalidRequest("add_adapter makes a new adapter to train; poolkit runs trained ones: save it with PEFT, then load_adapter")

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        """Run every input with adapter ``adapter_name`` from now on (one adapter at a time)."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        loaded = self._loaded_adapters()
        if len(names) != 1:
            raise InvalidRequest("set_adapter: poolkit runs one adapter at a time; name one")
        if names[0] not in loaded:
            raise InvalidRequest(f"Adapter with name {names[0]} not found. Please pass the correct adapter name among {list(loaded)}")
        self._active = names[0]
        self._disabled = False

    def active_adapters(self) -> list[str]:
        """The names of the active adapters (one at most)."""
        if not self._loaded_adapters():
            raise InvalidRequest("No adapter loaded. Please load an adapter first.")
        active = self.__dict__.get("_active")
        return [active] if active is not None and not self.__dict__.get("_disabled") else []

    def disable_adapters(self) -> None:
        """Run the base model until :meth:`enable_adapters`."""
        if not self._loaded_adapters():
            raise InvalidRequest("No adapter loaded. Please load an adapter first.")
        self._disabled = True

    def enable_adapters(self) -> None:
        """Run the active adapter again."""
        if not self._loaded_adapters():
            raise InvalidRequest("No adapter loaded. Please load an adapter first.")
        self._disabled = False

    def has_peft_compatible_model(self) -> bool:
        return bool(self.llm.model.architecture.takes_adapters)

    def _lora_request(self) -> LoRARequest | None:
        """The active adapter's request; else the model's own adapter of this call's task
        (:data:`TASK`) or prompt name (:data:`PROMPT_NAME`): jina-embeddings-v3's and v5's tasks;
        ``None``: the base model."""
        active = self.__dict__.get("_active")
        if active is None or self.__dict__.get("_disabled"):
            adapters = self.llm.model.adapters
            return adapters.own(TASK.get() or PROMPT_NAME.get()) if adapters is not None else None
        return self._loaded_adapters()[active]

    def _task(self, task: str | None) -> str | None:
        """``encode``'s ``task`` when the model carries task adapters (Jina's modules take it):
        one of them; else ``None`` (a Router's task is left to it).

        Raises:
            InvalidRequest: a task the model has no adapter for (the wording of Jina's modules).
        """
        adapters = self.llm.model.adapters
        tasks = adapters.own_names() if adapters is not None else []
        if task is None or not tasks:
            return None
        if task not in tasks:
            raise InvalidRequest(f"Invalid task: {task}. Must be one of {tasks}.")
        return task


def _rank(folder: Path) -> int:
    """The adapter's ``r`` (0 when its config cannot say; reading it checks it properly)."""
    try:
        return int(json.loads((folder / "adapter_config.json").read_text()).get("r") or 0)
    except (OSError, ValueError, TypeError):
        return 0
