"""vLLM's ``LoRARequest``: which adapter a prompt runs with (``poolkit.lora.request``, as in vLLM)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..contracts.errors import InvalidRequest


@dataclass(eq=False)
class LoRARequest:
    """A LoRA adapter for a prompt, as vLLM's ``LoRARequest``.

    Args:
        lora_name: the adapter's name (requests over HTTP give it as their ``model``).
        lora_int_id: a positive id, unique per adapter.
        lora_path: the adapter's directory: PEFT's ``adapter_config.json`` and
            ``adapter_model.safetensors``.
        base_model_name: the served model the adapter belongs to (listed as its ``parent``).

    Two requests are the same adapter when their names are (vLLM's equality).

    Example:
        >>> llm = LLM(model, enable_lora=True)
        >>> llm.embed(["a query"], lora_request=LoRARequest("tenant-a", 1, "/adapters/tenant-a"))
    """

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    base_model_name: str | None = None
    tensorizer_config_dict: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.lora_int_id, int) or self.lora_int_id < 1:
            raise InvalidRequest(f"id must be > 0, got {self.lora_int_id}")
        if not self.lora_path:
            raise InvalidRequest("lora_path cannot be empty")
        if self.tensorizer_config_dict is not None:
            raise InvalidRequest("tensorizer adapters are not supported; give a PEFT adapter directory")
        self.lora_path = str(self.lora_path)

    @property
    def adapter_id(self) -> int:
        return self.lora_int_id

    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def path(self) -> str:
        return self.lora_path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoRARequest) and self.lora_name == other.lora_name

    def __hash__(self) -> int:
        return hash(self.lora_name)
