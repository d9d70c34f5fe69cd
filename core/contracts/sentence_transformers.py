"""What a sentence-transformers model directory says: :class:`STConfig` and its Dense modules.

The data a loaded model carries (``model.st``) for the tasks, scorers and IO processors that
honour sentence-transformers' modules; :mod:`poolkit.loading.st_config` reads it from the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError

#: ``processing_kwargs`` keys that size the tokenization (sentence-transformers hoists them out of
#: the chat-template kwargs) and its own flag for writing a truncated template's tail back.
_SIZE_KWARGS = frozenset({"padding", "truncation", "max_length", "return_tensors"})
_RESTORE_SUFFIX = "restore_suffix"


@dataclass
class DenseSpec:
    """One sentence-transformers Dense module: a linear layer and its activation."""

    path: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    activation: str

    def build(self) -> torch.nn.Sequential:
        linear = torch.nn.Linear(self.weight.shape[1], self.weight.shape[0], bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return torch.nn.Sequential(linear, _torch_activation(self.activation))


@dataclass(frozen=True)
class TokenPoolingSpec:
    """How a multi-vector model pools its documents' token vectors by default: a
    sentence-transformers ``HierarchicalTokenPooling`` module, or ``--token-pool-factor``.

    Attributes:
        pool_factor: keep about ``1 / pool_factor`` of each input's token vectors (at least 1).
        protected: leading tokens kept out of the clustering (the ``[CLS]``).
        normalize: L2-normalise every output vector.
        tasks: the sides it applies to (``"document"``: inputs encoded as documents).
    """

    pool_factor: float
    protected: int = 1
    normalize: bool = True
    tasks: tuple[str, ...] = ("document",)


@dataclass(frozen=True)
class RouterSpec:
    """A sparse encoder's sentence-transformers ``Router`` (``router_config.json``), as poolkit serves
    one: an inference-free ``query`` route (``SparseStaticEmbedding``: a weight per token, no forward
    pass) and a ``document`` route (``MLMTransformer`` + ``SpladePooling``).

    Attributes:
        path: the Router module's folder (``modules.json``'s ``path``; ``""``: the model folder).
        default_route: the route of inputs sent with no side (``parameters.default_route``).
        query: the ``SparseStaticEmbedding``'s folder, relative to the Router's.
        document: the masked LM's folder, relative to the Router's (``""``: the Router's own, as
            the published checkpoints keep it).
        document_type: the masked LM's module class (``MLMTransformer``, or ``Transformer`` with
            ``transformer_task="fill-mask"``).
        pooling: the ``SpladePooling``'s folder, relative to the Router's.
    """

    path: str
    default_route: str
    query: str
    document: str
    document_type: str
    pooling: str

    def folder(self, model_dir: Path, module: str) -> Path:
        """Where ``module`` (one of this Router's folders) is under the model folder ``model_dir``."""
        return model_dir / self.path / module


@dataclass
class STConfig:
    """What a sentence-transformers directory says about pooling, length and prompts."""

    pooling_modes: tuple[str, ...] | None = None
    pooling_path: str | None = None
    include_prompt: bool = True
    normalize: bool = False
    dense: list[DenseSpec] = field(default_factory=list)
    max_seq_length: int | None = None
    do_lower_case: bool = False
    tokenizer_config_file: str | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None
    #: ``SentenceTransformer``, ``CrossEncoder``, ``SparseEncoder``, ... (None for old models)
    model_type: str | None = None
    #: A CrossEncoder's activation, as a ``torch.nn`` class path.
    activation_fn: str | None = None
    #: A SparseEncoder's ``SpladePooling``: ``{"strategy": "max"|"sum", "activation":
    #: "relu"|"log1p_relu", "path": "<module>/config.json"}``; ``None`` without one.
    splade: dict[str, str] | None = None
    #: A multi-vector (ColBERT / PyLate) model: query and document settings are present.
    late_interaction: bool = False
    #: The Transformer module's "message" modality ``format`` (``"flat"``, ``"structured"`` or
    #: ``"auto"``); ``None`` when it declares no "message" modality.
    message_format: str | None = None
    #: The Transformer module's ``processing_kwargs`` (``chat_template``, ``text``, ``common``).
    processing_kwargs: dict[str, Any] = field(default_factory=dict)
    #: A CrossEncoder's ``LogitScore``: ``{"true_token_id": int, "false_token_id": int | None,
    #: "path": "<module>/config.json"}``; ``None`` without one.
    logit_score: dict[str, Any] | None = None
    #: A MultiVectorEncoder's ``HierarchicalTokenPooling`` module; ``None`` without one.
    token_pooling: TokenPoolingSpec | None = None
    #: A SparseEncoder's ``Router`` (an inference-free query route); ``None`` without one.
    router: RouterSpec | None = None

    @property
    def is_cross_encoder(self) -> bool:
        """A sentence-transformers ``CrossEncoder`` export."""
        return self.model_type == "CrossEncoder"

    @property
    def score_outputs(self) -> int | None:
        """Outputs of a CrossEncoder's own score modules (``LogitScore``: one; Pooling then Dense:
        the last Dense's), or ``None`` when the export scores with its transformer's classifier."""
        if not self.is_cross_encoder:
            return None
        if self.logit_score is not None:
            return 1
        if self.pooling_modes and self.dense:
            return int(self.dense[-1].weight.shape[0])
        return None

    @property
    def renders_pairs(self) -> bool:
        """A CrossEncoder whose Transformer declares the "message" modality: sentence-transformers
        renders each (query, document) pair through the saved chat template."""
        return self.is_cross_encoder and self.message_format is not None

    @property
    def chat_template_kwargs(self) -> dict[str, Any]:
        """The ``apply_chat_template`` arguments of ``processing_kwargs["chat_template"]`` (size
        settings and sentence-transformers' ``restore_suffix`` flag left out)."""
        kwargs = self.processing_kwargs.get("chat_template") or {}
        return {k: v for k, v in kwargs.items() if k not in _SIZE_KWARGS and k != _RESTORE_SUFFIX}

    @property
    def restore_suffix(self) -> bool:
        """Whether a truncated chat render gets the template's closing tokens back (default on)."""
        return bool((self.processing_kwargs.get("chat_template") or {}).get(_RESTORE_SUFFIX, True))

    @property
    def pair_truncation(self) -> int | None:
        """How a CrossEncoder export truncates the pairs it scores, as sentence-transformers does.

        ``-1``: to the model's limit (its default, ``truncation="longest_first"``); a number of
        tokens when ``processing_kwargs`` set ``max_length``; ``None`` for other models, or when
        ``processing_kwargs`` turn truncation off.
        """
        if not self.is_cross_encoder:
            return None
        buckets = [self.processing_kwargs.get(k) or {} for k in ("chat_template", "text", "common")]
        truncation = next((b["truncation"] for b in buckets if "truncation" in b), True)
        max_length = next((b["max_length"] for b in buckets if b.get("max_length") is not None), None)
        if truncation is False or truncation == "do_not_truncate":
            return None
        return int(max_length) if max_length else -1


def _torch_activation(name: str | None) -> torch.nn.Module:
    """An activation named by its torch.nn class path; only ``torch.nn`` classes, for safety."""
    if not name:
        return torch.nn.Identity()
    prefix = "torch.nn.modules."
    cls_name = name.rsplit(".", 1)[-1]
    if not name.startswith(prefix) and name != cls_name:
        raise ModelLoadError(f"Dense activation '{name}' is not a torch.nn module; only torch.nn activations are loaded")
    cls = getattr(torch.nn, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ModelLoadError(f"unknown Dense activation '{name}'")
    return cls()
