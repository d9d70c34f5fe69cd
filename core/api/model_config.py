"""``LLM.model_config``: what vLLM's ``llm.model_config`` tells about a loaded model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config.devices import head_dtype
from ..contracts.params import PoolerConfig
from ..loading.model import PoolingModel


@dataclass(frozen=True)
class ModelConfig:
    """What vLLM's ``llm.model_config`` tells about a loaded model (the fields its tests read)."""

    model: str
    served_model_name: str
    tokenizer: str
    architecture: str
    architectures: list[str]
    hf_config: Any
    dtype: torch.dtype
    head_dtype: torch.dtype
    max_model_len: int | None
    embedding_size: int
    hidden_size: int
    vocab_size: int | None
    pooler_config: PoolerConfig
    is_matryoshka: bool
    matryoshka_dimensions: list[int] | None
    convert_type: str
    trust_remote_code: bool
    runner_type: str = "pooling"

    def get_hidden_size(self) -> int:
        return self.hidden_size

    def get_vocab_size(self) -> int | None:
        return self.vocab_size


def model_config(model: PoolingModel) -> ModelConfig:
    """The vLLM-shaped summary of ``model``."""
    args = model.args
    vocab = getattr(model.hf_config, "vocab_size", None)
    return ModelConfig(
        model=model.name,
        served_model_name=model.name,
        tokenizer=(args.tokenizer if args is not None and args.tokenizer else model.name),
        architecture=model.architecture_name,
        architectures=list(getattr(model.hf_config, "architectures", None) or [model.architecture_name]),
        hf_config=model.hf_config,
        dtype=model.dtype,
        head_dtype=head_dtype(model.hf_config, model.dtype, bool(getattr(model.args, "enable_lora", False))),
        max_model_len=model.max_model_len.value,
        embedding_size=model.embedding_size,
        hidden_size=model.architecture.hidden_size,
        vocab_size=int(vocab) if vocab else None,
        pooler_config=model.pooler_config,
        is_matryoshka=model.is_matryoshka,
        matryoshka_dimensions=model.matryoshka_dimensions,
        convert_type=model.convert,
        trust_remote_code=bool(args is not None and args.trust_remote_code),
    )
