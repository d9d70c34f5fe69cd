"""The load settings: one typed object that every surface builds and every engine honours.

:class:`EngineArgs` declares each setting that decides how a model is loaded and run — once,
with its type, default, validation and help text (the way vLLM has ``EngineArgs``). ``LLM(...)``
builds one from its keyword arguments and keeps it as ``llm.args``; the CLI derives its load
options from the fields; the server, corpus jobs, the Ray integration and the bench pass the
same object on, so a setting given on any surface reaches the model on every engine.

Example:
    >>> args = EngineArgs(model="./my-model", pooler_config='{"pooling_type": "CLS"}', dtype="float32")
    >>> llm = LLM.from_args(args)
    >>> llm.args.pooler_config.pooling_type
    'CLS'
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..contracts.errors import InvalidRequest
from ..contracts.params import PoolerConfig
from .conversion import CONVERSIONS
from .devices import DTYPES
from .model_impl import MODEL_IMPLS

#: The embedded default model, carried by the PyPI package that the ``minilm`` extra installs.
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
RUNNERS = ("auto", "pooling")
#: Values of the ``quantization`` setting (vLLM's name for it).
QUANTIZATIONS = ("int8",)
#: The media kinds ``limit_mm_per_prompt`` bounds (vLLM's ``multi_modal_data`` keys poolkit reads).
MEDIA_KINDS = ("image", "video")
#: The ``mm_processor_kwargs`` keys of a pixel budget, checked here (others are the processor's own).
PIXEL_BUDGET = ("min_pixels", "max_pixels")

#: The settings that take one of a few names: the names, and what an error says of another value.
_CHOICES = {
    "runner": (RUNNERS, "is not supported: poolkit runs pooling models (runner 'auto' or 'pooling')"),
    "convert": (CONVERSIONS, f"is not one of {', '.join(CONVERSIONS)}"),
    "model_impl": (MODEL_IMPLS, f"is not one of {', '.join(MODEL_IMPLS)}"),
}

#: vLLM engine arguments that mean nothing for poolkit; accepted so vLLM code runs unchanged.
IGNORED_ENGINE_ARGS = frozenset(
    {
        "enforce_eager",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "gpu_memory_utilization",
        "max_num_seqs",
        "max_num_batched_tokens",
        "enable_chunked_prefill",
        "disable_log_stats",
        "swap_space",
        "kv_cache_dtype",
        "distributed_executor_backend",
        "tokenizer_mode",
        "seed",
        "task",
        "load_format",
    }
)


class EngineArgs(BaseModel):
    """Every setting that decides how a model loads and runs.

    Values arrive as Python objects or as the strings a command line gives (JSON for
    ``pooler_config``, ``hf_overrides``, ``limit_mm_per_prompt`` and ``mm_processor_kwargs``) and are validated on construction: a bad value
    raises :class:`poolkit.InvalidRequest` with a one-line message naming the setting.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True, arbitrary_types_allowed=True)
    #: Settings the CLI shows with a short flag as well.
    short_flags: ClassVar[dict[str, str]] = {"model": "-m"}

    model: str = Field(
        DEFAULT_MODEL,
        description="Model directory, Hugging Face id or packaged model (default: all-MiniLM-L6-v2).",
    )
    tokenizer: Optional[str] = Field(None, description="Directory of the tokenizer, if not the model's.")
    runner: str = Field("auto", description="auto or pooling (poolkit runs pooling models).")
    convert: str = Field("auto", description="auto, none, embed or classify: how to adapt a checkpoint.")
    model_impl: str = Field(
        "auto",
        description="auto (poolkit's native code, else the transformers fallback), poolkit (native only; "
        "vLLM's 'vllm' too) or transformers (the transformers fallback, also for native families).",
    )
    pooler_config: Optional[PoolerConfig] = Field(None, description="PoolerConfig as JSON.")
    token_pool_factor: Optional[float] = Field(
        None,
        description="Pool documents' token vectors (token_embed inputs encoded as documents; on a model "
        "without query and document sides, every input) by this factor when a request sets none; never queries.",
    )
    hf_overrides: Optional[dict[str, Any]] = Field(None, description="config.json overrides as JSON.")
    dtype: str = Field("auto", description="auto (bf16 on bf16 hardware), float32, bfloat16, float16.")
    device: Optional[str] = Field(None, description="cpu, cuda, ... (default: GPU if present).")
    allow_pickle: bool = Field(False, description="Load pickle (pytorch_model.bin) weights, with weights_only.")
    allow_external_symlinks: bool = Field(
        False,
        description="Follow symlinks in the model (or tokenizer) directory that point outside it; "
        "refused by default (a Hugging Face cache snapshot's links into its blobs/ are inside).",
    )
    trust_remote_code: bool = Field(
        False, description="Accepted for compatibility; poolkit never runs code shipped with a model."
    )
    max_model_len: Optional[int] = Field(None, description="Cap the tokens per input below the model's own limit.")
    max_batch_tokens: Optional[int] = Field(None, description="Token budget of one packed batch.")
    io_processor_plugin: Optional[str] = Field(None, description="IO processor for the plugin task.")
    quantization: Optional[str] = Field(
        None,
        description="int8: linear layers in int8 (weights per channel, activations per token), "
        "calibrated as the model loads to stay within an error budget (native families).",
    )
    calibration: Optional[str] = Field(
        None, description="Text file (one text a line) to calibrate quantization on, instead of the built-in texts."
    )
    quantization_budget: Optional[float] = Field(
        None,
        description="The least cosine similarity to the float model, on the calibration texts, that quantization "
        "keeps (default 0.9995); a lower one (0.99, say) runs more of the model the fastest int8 way.",
    )
    limit_mm_per_prompt: Optional[dict[str, int]] = Field(
        None,
        description='Most media items one prompt may carry, as JSON: {"image": 4, "video": 1} (vLLM\'s; default 16 '
        "images, or POOLKIT_MAX_IMAGES_PER_PROMPT).",
    )
    mm_processor_kwargs: Optional[dict[str, Any]] = Field(
        None,
        description='Settings of the model\'s media processor over its preprocessor_config.json, as JSON: '
        '{"min_pixels": 3136, "max_pixels": 1003520} (vLLM\'s).',
    )
    max_image_pixels: Optional[int] = Field(
        None, gt=0,
        description="Most pixels (width x height) an image given to the model may have, read from its header "
        "before decoding (default 40,000,000, or POOLKIT_MAX_IMAGE_PIXELS).",
    )
    max_image_bytes: Optional[int] = Field(
        None, gt=0,
        description="Most bytes of an image given as bytes, a data URI or a fetched URL "
        "(default 20 MiB, or POOLKIT_MAX_IMAGE_BYTES).",
    )

    enable_prefix_caching: Optional[bool] = Field(
        None,
        description="Compute a prefix that prompts share once, within a batch and across calls (vLLM's automatic prefix "
        "caching): on by default for causal decoders, where it cannot change a result; false turns it off. Bidirectional "
        "models share nothing (a prefix's states depend on what follows).",
    )
    enable_lora: bool = Field(False, description="Serve LoRA adapters (PEFT) on the model, chosen per request (vLLM's).")
    max_lora_rank: int = Field(16, gt=0, description="The highest rank a LoRA adapter may have.")
    max_loras: int = Field(1, gt=0, description="The most LoRA adapters one batch mixes.")
    max_cpu_loras: Optional[int] = Field(
        None, gt=0, description="The most LoRA adapters kept loaded, least recently used out first (default --max-loras)."
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidRequest(_one_line(exc)) from None

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any) -> Any:
        if value is None:
            return DEFAULT_MODEL
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise ValueError(f"model must be a name or a path, got {value!r}")
        return value

    @field_validator("tokenizer", "calibration", mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value

    @field_validator(*_CHOICES)
    @classmethod
    def _choice(cls, value: str, info: Any) -> str:
        allowed, refusal = _CHOICES[info.field_name]
        if value not in allowed:
            raise ValueError(f"{info.field_name} '{value}' {refusal}")
        return value

    @field_validator("pooler_config", mode="before")
    @classmethod
    def _pooler_config(cls, value: Any) -> Any:
        try:
            return PoolerConfig.coerce(value)
        except InvalidRequest as exc:
            raise ValueError(str(exc)) from None

    @field_validator("hf_overrides", mode="before")
    @classmethod
    def _hf_overrides(cls, value: Any) -> Any:
        value = _json_text("hf_overrides", value)
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"hf_overrides must be a dict, got {type(value).__name__}")
        return value

    @field_validator("limit_mm_per_prompt", "mm_processor_kwargs", mode="before")
    @classmethod
    def _media_dict(cls, value: Any, info: Any) -> Any:
        value = _json_dict(info.field_name, value)
        if value is not None:
            _MEDIA_CHECKS[info.field_name](value)
        return value

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, value: Any) -> Any:
        if value is None:
            return "auto"
        if isinstance(value, torch.dtype):
            return str(value).removeprefix("torch.")
        if not isinstance(value, str) or (value != "auto" and value.lower() not in DTYPES):
            raise ValueError(f"unknown dtype '{value}'; use auto, {', '.join(DTYPES)}")
        return value

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> Any:
        if value is None or value == "auto":
            return None
        try:
            return str(torch.device(value))
        except (RuntimeError, TypeError):
            raise ValueError(f"unknown device '{value}'") from None

    @field_validator("quantization", mode="before")
    @classmethod
    def _quantization(cls, value: Any) -> Any:
        if value is None or value == "none":
            return None
        if not isinstance(value, str) or value.lower() not in QUANTIZATIONS:
            raise ValueError(f"quantization '{value}' is not supported; poolkit supports {', '.join(QUANTIZATIONS)}")
        return value.lower()

    @field_validator("quantization_budget")
    @classmethod
    def _budget(cls, value: Optional[float]) -> Optional[float]:
        if value is not None and not 0.0 < value < 1.0:
            raise ValueError(f"quantization_budget is a cosine similarity between 0 and 1 (exclusive), got {value}")
        return value

    @field_validator("max_model_len", "max_batch_tokens")
    @classmethod
    def _positive(cls, value: Optional[int], info: Any) -> Optional[int]:
        if value is not None and value < 1:
            raise ValueError(f"{info.field_name} must be positive, got {value}")
        return value

    @field_validator("token_pool_factor")
    @classmethod
    def _pool_factor(cls, value: Optional[float]) -> Optional[float]:
        if value is not None and not (math.isfinite(value) and value >= 1):
            raise ValueError(f"token_pool_factor must be >= 1, got {value}")
        return value

    @classmethod
    def build(cls, engine_kwargs: dict[str, Any] | None = None, /, **settings: Any) -> "EngineArgs":
        """Settings from keyword arguments, accepting vLLM's engine arguments that mean nothing here.

        Raises:
            InvalidRequest: an argument that is neither a setting nor a known vLLM engine argument.
        """
        extra = dict(engine_kwargs or {})
        if "override_pooler_config" in extra:  # vLLM's former name of pooler_config
            override = extra.pop("override_pooler_config")
            warnings.warn("override_pooler_config is deprecated; use pooler_config", DeprecationWarning, stacklevel=3)
            if settings.get("pooler_config") is not None and override is not None:
                raise InvalidRequest("pass pooler_config or override_pooler_config, not both")
            if override is not None:
                settings["pooler_config"] = override
        unknown = sorted(set(extra) - IGNORED_ENGINE_ARGS)
        if unknown:
            raise InvalidRequest(f"unknown LLM argument(s): {', '.join(unknown)}")
        return cls(**settings)

    def pooler_settings(self) -> PoolerConfig:
        """The pooler configuration the model loads with: ``pooler_config``, with ``token_pool_factor``
        (the pooler configuration's field of that name) where given.

        Raises:
            InvalidRequest: both give a token pool factor, and they differ; a factor below 1.
        """
        config = self.pooler_config or PoolerConfig()
        if self.token_pool_factor is None:
            return config
        if config.token_pool_factor not in (None, self.token_pool_factor):
            raise InvalidRequest(
                f"token_pool_factor {self.token_pool_factor} and pooler_config's {config.token_pool_factor} differ: give one"
            )
        return PoolerConfig(**{**config.model_dump(exclude_unset=True), "token_pool_factor": self.token_pool_factor})

    def identity(self) -> dict[str, Any]:
        """What makes two loads the same model, as JSON-ready data (corpus jobs' manifests)."""
        return self.model_dump(mode="json", exclude_defaults=True)


def _json_text(name: str, value: Any) -> Any:
    """A setting given as JSON text (the command line's form) parsed; any other value as given."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc.msg}") from None


def _json_dict(name: str, value: Any) -> dict[str, Any] | None:
    """A dict setting given as a dict or as JSON text (the command line's form)."""
    value = _json_text(name, value)
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict (a JSON object), got {type(value).__name__}")
    if value is not None and not all(isinstance(k, str) for k in value):
        raise ValueError(f"{name} must have string keys")
    return value


def _check_media_limits(value: dict[str, Any]) -> None:
    """``limit_mm_per_prompt``: a whole number of 0 or more per known media kind."""
    for kind, limit in value.items():
        if kind not in MEDIA_KINDS:
            raise ValueError(f"limit_mm_per_prompt: unknown media kind {str(kind)!r}; use {' or '.join(map(repr, MEDIA_KINDS))}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit_mm_per_prompt: the limit of {kind!r} must be a whole number of 0 or more, got {limit!r}")


def _check_pixel_budget(value: dict[str, Any]) -> None:
    """``mm_processor_kwargs``: its pixel budget, if any, positive whole numbers in order."""
    for key in PIXEL_BUDGET:
        given = value.get(key)
        if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < 1):
            raise ValueError(f"mm_processor_kwargs: {key} must be a positive whole number of pixels, got {given!r}")
    low, high = (value.get(key) for key in PIXEL_BUDGET)
    if low is not None and high is not None and low > high:
        raise ValueError(f"mm_processor_kwargs: min_pixels ({low}) is more than max_pixels ({high})")


#: The media settings given as JSON objects, and the check of each one's content.
_MEDIA_CHECKS = {"limit_mm_per_prompt": _check_media_limits, "mm_processor_kwargs": _check_pixel_budget}


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        field = ".".join(str(p) for p in err["loc"])
        parts.append(msg if err["type"] == "value_error" or not field else f"{field}: {msg}")
    return "; ".join(parts)
