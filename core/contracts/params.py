"""Pooling configuration (per model) and pooling parameters (per request), with vLLM's names.

Both validate on construction and raise :class:`poolkit.InvalidRequest` with a one-line message.
The removed vLLM fields ``normalize`` and ``softmax`` are accepted as deprecated aliases of
``use_activation``.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import InvalidRequest

_ACTIVATION_ALIASES = ("normalize", "softmax", "activation")


@dataclass(frozen=True)
class Setting:
    """A resolved value and where it came from (``"pooler_config"``, ``"sentence-transformers
    modules.json (Normalize)"``, ``"task default (embed)"``, ...), as ``poolkit info`` shows it."""

    value: Any
    source: str


def _one_line(exc: ValidationError, what: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or what
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if err["loc"] else msg)
    return f"invalid {what}: " + "; ".join(parts)


def _fold_activation_aliases(data: Any, what: str) -> Any:
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for alias in _ACTIVATION_ALIASES:
        if alias not in data:
            continue
        value = data.pop(alias)
        warnings.warn(
            f"{what} field '{alias}' is deprecated; use 'use_activation' instead",
            DeprecationWarning,
            stacklevel=5,
        )
        if data.get("use_activation") is not None and value is not None and data["use_activation"] != value:
            raise ValueError(f"'{alias}' and 'use_activation' disagree; set only 'use_activation'")
        if value is not None:
            data["use_activation"] = value
    return data


def _fold_task_alias(data: dict[str, Any]) -> dict[str, Any]:
    """vLLM spells the task ``pooling_task`` in some places and ``task`` in others: accept both."""
    if "pooling_task" not in data:
        return data
    data = dict(data)
    value = data.pop("pooling_task")
    if data.get("task") is not None and value is not None and data["task"] != value:
        raise ValueError("'pooling_task' and 'task' disagree; set only one")
    if value is not None:
        data["task"] = value
    return data


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    _what: ClassVar[str] = "configuration"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidRequest(_one_line(exc, self._what)) from None

    @classmethod
    def coerce(cls, value: Any) -> Any:
        """Accept an instance, a dict, a JSON string or ``None``."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"{cls._what} is not valid JSON: {exc.msg} at position {exc.pos}") from None
        if not isinstance(value, dict):
            raise InvalidRequest(f"{cls._what} must be a {cls.__name__}, a dict or a JSON object, got {type(value).__name__}")
        return cls(**value)


class PoolerConfig(_Strict):
    """How a model pools, for every request (``LLM(pooler_config=...)``, ``--pooler-config``).

    Fields left ``None`` are filled, in order, from the model's sentence-transformers files, the
    architecture's default and the task's default.

    Example:
        >>> PoolerConfig(pooling_type="MEAN", use_activation=True)
    """

    _what: ClassVar[str] = "pooler_config"

    task: Optional[str] = None
    pooling_type: Optional[str] = None
    seq_pooling_type: Optional[str] = None
    tok_pooling_type: Optional[str] = None
    use_activation: Optional[bool] = None
    #: poolkit extension: the name of a registered activation replacing the task's own
    #: (``normalize`` for embeddings).
    activation_fn: Optional[str] = None
    dimensions: Optional[int] = None
    enable_chunked_processing: bool = False
    max_embed_len: Optional[int] = None
    #: poolkit extension: L2-normalise the token-weighted mean of chunk embeddings (vLLM does not).
    renormalize_chunked_mean: bool = False
    logit_mean: Optional[float] = None
    logit_sigma: Optional[float] = None
    step_tag_id: Optional[int] = None
    returned_token_ids: Optional[list[int]] = None
    #: poolkit extension: pool documents' token vectors (``token_embed`` inputs encoded as
    #: documents) by this factor when a request sets none (``--token-pool-factor``); queries never.
    token_pool_factor: Optional[float] = None

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        data = _fold_activation_aliases(data, "PoolerConfig")
        if not isinstance(data, dict):
            return data
        data = _fold_task_alias(data)
        if "logit_bias" in data:
            warnings.warn("PoolerConfig field 'logit_bias' is deprecated; use 'logit_mean'", DeprecationWarning, stacklevel=5)
            if data.get("logit_mean") is not None:
                raise ValueError("Cannot set both 'logit_bias' and 'logit_mean'")
            data["logit_mean"] = data.pop("logit_bias")
        if "logit_scale" in data:
            warnings.warn("PoolerConfig field 'logit_scale' is deprecated; use 'logit_sigma'", DeprecationWarning, stacklevel=5)
            scale = data.pop("logit_scale")
            if scale == 0:
                raise ValueError("logit_scale cannot be 0 (division by zero)")
            if data.get("logit_sigma") is not None:
                raise ValueError("Cannot set both 'logit_scale' and 'logit_sigma'")
            data["logit_sigma"] = None if scale is None else 1.0 / scale
        return data

    @model_validator(mode="after")
    def _check(self) -> "PoolerConfig":
        if self.pooling_type is not None and (self.seq_pooling_type is not None or self.tok_pooling_type is not None):
            raise ValueError("Cannot set both `pooling_type` and `seq_pooling_type`/`tok_pooling_type`")
        if self.logit_sigma == 0:
            raise ValueError("logit_sigma cannot be 0 (division by zero)")
        if self.dimensions is not None and self.dimensions < 1:
            raise ValueError("Dimensions must be greater than 0")
        if self.max_embed_len is not None and self.max_embed_len < 1:
            raise ValueError("max_embed_len must be greater than 0")
        if self.token_pool_factor is not None and not (math.isfinite(self.token_pool_factor) and self.token_pool_factor >= 1):
            raise ValueError(f"token_pool_factor must be >= 1, got {self.token_pool_factor}")
        return self


class LateChunkingParams:
    """Late chunking of a ``token_embed`` request (vLLM's ``LateChunkingParams``).

    The whole input runs through the model once; its token vectors are then averaged over
    consecutive chunks of ``chunk_size`` tokens (the last may be shorter), and each chunk mean is
    normalised like a token vector. The output has one row per chunk, and the request output's
    ``late_chunking`` says which tokens and characters each chunk covers.

    The chunks must cover the input as given, so, as in vLLM, late chunking refuses truncation,
    padding and lower-casing (``TEXT_CHANGES``), and empty or image prompts (``NEEDS_TEXT``).
    Token-id prompts are accepted: their chunks have no ``char_range``.

    Example:
        >>> PoolingParams(late_chunking_params=LateChunkingParams(chunk_size=64))
    """

    #: vLLM's refusal of options that would make the chunks describe another text than the input.
    TEXT_CHANGES: ClassVar[str] = "Late chunking does not support input padding, truncation or text normalization"
    #: Options (``truncate_prompt_tokens`` and vLLM's tokenization kwargs) that ``TEXT_CHANGES`` refuses.
    TEXT_CHANGING_KWARGS: ClassVar[frozenset[str]] = frozenset(
        {"truncate_prompt_tokens", "truncation", "pad_prompt_tokens", "padding", "do_lower_case"}
    )
    #: vLLM's refusal of prompts with no text to chunk (poolkit also takes token ids).
    NEEDS_TEXT: ClassVar[str] = "late chunking requires nonempty plain-text input or token ids"

    def __init__(self, chunk_size: int) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise InvalidRequest(f"late chunking chunk_size must be a positive integer, got {chunk_size!r}")
        self.chunk_size = chunk_size

    @classmethod
    def coerce(cls, value: Any) -> "LateChunkingParams | None":
        """Accept an instance, ``{"chunk_size": N}`` or ``None``."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, dict) and set(value) == {"chunk_size"}:
            return cls(value["chunk_size"])
        raise InvalidRequest('late_chunking_params must be {"chunk_size": N}')

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LateChunkingParams) and other.chunk_size == self.chunk_size

    def __repr__(self) -> str:
        return f"LateChunkingParams(chunk_size={self.chunk_size})"


#: PoolingParams fields that are no task parameter: ``extra_kwargs`` is read by the API that
#: knows its keys, ``skip_reading_prefix_cache`` is vLLM's (poolkit has no prefix cache).
_NOT_TASK_PARAMS = frozenset({"task", "extra_kwargs", "skip_reading_prefix_cache"})


class PoolingParams(_Strict):
    """Per-request pooling parameters (``llm.embed(..., pooling_params=PoolingParams(...))``).

    ``extra_kwargs`` carries options for the API that reads them, as in vLLM:
    ``{"max_tokens_per_query": N, "max_tokens_per_doc": N}`` for :meth:`poolkit.LLM.score`.
    ``skip_reading_prefix_cache`` is accepted for vLLM code and has no effect (no prefix cache).
    ``token_pool_factor`` (``token_embed``, poolkit's own) pools each input's token vectors into
    about ``1 / factor`` as many, by hierarchical clustering as sentence-transformers 6's
    ``HierarchicalTokenPooling`` does (``docs/colbert.md``).

    Example:
        >>> PoolingParams(dimensions=32, truncate_prompt_tokens=128)
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)
    _what: ClassVar[str] = "pooling_params"

    task: Optional[str] = None
    dimensions: Optional[int] = None
    use_activation: Optional[bool] = None
    truncate_prompt_tokens: Optional[int] = None
    truncation_side: Optional[Literal["left", "right"]] = None
    step_tag_id: Optional[int] = None
    returned_token_ids: Optional[list[int]] = None
    late_chunking_params: Optional[LateChunkingParams] = None
    token_pool_factor: Optional[float] = None
    extra_kwargs: Optional[dict[str, Any]] = None
    skip_reading_prefix_cache: Optional[bool] = None
    #: The LoRA adapter the prompt runs with (``lora_request=`` of the call that prepared it).
    _lora: Any = PrivateAttr(default=None)
    #: Which loaded weights that adapter is (:meth:`poolkit.lora.manager.Adapters.identity`).
    _lora_identity: Any = PrivateAttr(default=None)
    #: The request's ``cache_salt`` (:attr:`cache_salt`).
    _salt: Any = PrivateAttr(default=None)
    #: The retrieval side the prompt is encoded in (:attr:`side`).
    _side: Any = PrivateAttr(default=None)

    @property
    def lora_request(self) -> Any:
        """The :class:`~poolkit.lora.request.LoRARequest` the prompt runs with, ``None`` for the base model."""
        return self._lora

    @property
    def lora_identity(self) -> Any:
        """Which loaded weights :attr:`lora_request` names (a number each load of an adapter gets):
        what cached results of the prompt are kept apart by, never the adapter's name."""
        return self._lora_identity

    def with_lora(self, request: Any, identity: Any = None) -> "PoolingParams":
        """A copy that runs with the LoRA adapter ``request`` (``None``: the base model), whose
        loaded weights are ``identity``."""
        copy = self.model_copy()
        copy._lora, copy._lora_identity = request, identity
        return copy

    @property
    def cache_salt(self) -> str | None:
        """The request's ``cache_salt`` (vLLM's): prompts share prefix states only with prompts of the same salt."""
        return self._salt

    def with_salt(self, salt: str | None) -> "PoolingParams":
        """A copy whose prompts share prefix states only under ``salt`` (``None``: the copy is this object)."""
        if salt is None:
            return self
        copy = self.model_copy()
        copy._salt = salt
        return copy

    @property
    def side(self) -> str | None:
        """The retrieval side (``"query"`` / ``"document"``, the request's) the prompt was encoded
        in, set when its parameters are checked; ``None``: the text as given. Token pooling reads it
        (a document's skiplist tokens are left out before pooling)."""
        return self._side

    def on_side(self, side: str | None) -> "PoolingParams":
        """A copy for a prompt encoded in the retrieval ``side`` (this object when it says so already)."""
        if side == self._side:
            return self
        copy = self.model_copy()
        copy._side = side
        return copy

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        data = _fold_activation_aliases(data, "PoolingParams")
        return _fold_task_alias(data) if isinstance(data, dict) else data

    @field_validator("late_chunking_params", mode="before")
    @classmethod
    def _late_chunking(cls, value: Any) -> Optional[LateChunkingParams]:
        try:
            return LateChunkingParams.coerce(value)
        except InvalidRequest as exc:
            raise ValueError(str(exc)) from None

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _truncate(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and value < -1:
            raise ValueError("truncate_prompt_tokens must be -1 (the model's limit) or a positive number of tokens")
        if value == 0:
            raise ValueError("truncate_prompt_tokens must be -1 (the model's limit) or a positive number of tokens")
        return value

    def set_fields(self) -> set[str]:
        """Names of the task parameters the caller set (``task``, ``extra_kwargs`` excluded)."""
        return {name for name in self.model_fields_set if name not in _NOT_TASK_PARAMS and getattr(self, name) is not None}
