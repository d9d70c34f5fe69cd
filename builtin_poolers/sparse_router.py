"""Inference-free sparse encoders: sentence-transformers' ``Router`` of a ``SparseEncoder`` whose
``query`` route is a ``SparseStaticEmbedding`` (a weight per token, no forward pass) and whose
``document`` route is a masked LM with ``SpladePooling`` (opensearch-neural-sparse-encoding-doc-v2/v3).

What is read of the publisher's folder (sentence-transformers 6.2's ``Router.load``,
``SparseStaticEmbedding.load``, ``SparseEncoder.encode_query`` / ``encode_document``):

- ``modules.json``: one ``Router`` module (``sentence_transformers.models.Router``), path ``""``;
- ``router_config.json``: ``types`` (module folder -> class), ``structure`` (route -> module folders)
  and ``parameters.default_route`` (:func:`poolkit.loading.st_config.read_router`); a module named
  ``""`` is the Router's own folder, where the published checkpoints keep the masked LM
  (``config.json``, ``model.safetensors``, the tokenizer, ``sentence_bert_config.json``);
- ``query_0_SparseStaticEmbedding/``: ``config.json`` (``frozen``) and ``model.safetensors``, whose
  ``weight`` is the ``[vocab]`` table (IDF weights); a query's vector is the weight of each token it
  holds, once, tokenized without special tokens;
- ``document_1_SpladePooling/config.json``: the document route's pooling and activation.

The OpenSearch files beside them (``idf.json``, ``query_token_weights.txt``) are not read, as
sentence-transformers does not read them. The model loads as :class:`InferenceFreeSpladeModel`
around the document route's masked LM (:func:`router_layout` says so through the layout); a request's
retrieval side (``"query"`` / ``"document"``, ``encode_query`` / ``encode_document``) picks the route
of each input, and inputs that name none take the Router's ``default_route``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Collection, Iterable, Mapping, Protocol, Sequence

import torch

from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.checkpoint import Layout
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.io import Prompt
from poolkit.contracts.params import PoolingParams
from poolkit.contracts.sentence_transformers import RouterSpec
from poolkit.loading.st_config import ROUTER_CONFIG, read_router
from poolkit.loading.weights import checkpoint_files, iter_tensors
from poolkit.plugins.manager import registry

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.architecture import LoadedModel, TaskSpec
    from poolkit.contracts.model import Tokenizer
    from poolkit.contracts.pooling import Head

#: The architecture name the layout gives such a model (its document route's architecture follows it).
ARCHITECTURE = "InferenceFreeSpladeModel"
QUERY, DOCUMENT = "query", "document"


def router_module(path: Path) -> str | None:
    """The folder of the ``Router`` module ``path``'s ``modules.json`` lists, or ``None`` (no
    ``modules.json``, no Router)."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {modules_file}: {exc}") from None
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and str(module.get("type", "")).rsplit(".", 1)[-1] == "Router":
            return str(module.get("path", ""))
    return None


def router_of(path: Path) -> RouterSpec | None:
    """The sparse ``Router`` of the model folder ``path`` (:func:`read_router`), or ``None``."""
    module = router_module(path)
    return read_router(path, module) if module is not None else None


def router_layout(path: Path) -> Layout | None:
    """The layout of a folder whose ``modules.json`` is a sparse ``Router``: config, weights and
    tokenizer of its document route's masked LM, read as :class:`InferenceFreeSpladeModel`.

    Raises:
        ModelLoadError: a Router poolkit does not serve, or a document route without ``config.json``.
    """
    router = router_of(path)
    if router is None:
        return None
    body = router.folder(path, router.document)
    config_file = body / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"the Router's document route ({router.document_type} in {body}) has no config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from None
    names = [n for n in config.get("architectures") or [] if n != ARCHITECTURE]
    return Layout(
        name=f"sentence-transformers Router (query: SparseStaticEmbedding, document: {router.document_type} + SpladePooling)",
        source=f"modules.json (Router) and {Path(router.path, ROUTER_CONFIG).as_posix()}",
        weights=body,
        tokenizer=body,
        config={**config, "architectures": [ARCHITECTURE, *names]},
        config_dir=body,
        st_dir=path,
    )


def read_query_weights(model_dir: Path, router: RouterSpec, allow_pickle: bool) -> torch.Tensor:
    """The query route's ``SparseStaticEmbedding`` table (``weight``, ``[vocab]``, float32), as
    sentence-transformers' ``SparseStaticEmbedding.load`` reads it from the module's weights.

    Raises:
        ModelLoadError: no weights, no ``weight`` tensor, not one weight per token, or a module that
            reads its table from a JSON file instead (``path`` in its ``config.json``).
    """
    folder = router.folder(model_dir, router.query)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if isinstance(config, dict) and config.get("path"):
        raise ModelLoadError(
            f"the SparseStaticEmbedding in {folder} reads its weights from {config['path']}; poolkit reads the module's saved weight"
        )
    tensors = dict(iter_tensors(checkpoint_files(folder, allow_pickle)))
    weight = tensors.get("weight")
    if weight is None or weight.ndim != 1:
        shown = "no 'weight'" if weight is None else f"a 'weight' of shape {tuple(weight.shape)}"
        raise ModelLoadError(f"the SparseStaticEmbedding in {folder} has {shown}; it needs one weight per token")
    return weight.float()


class InferenceFreeSpladeModel(Architecture):
    """A sparse ``Router``: the document route's masked LM (the architecture ``config.json`` names
    after this one: ``BertForMaskedLM``, ``RobertaForMaskedLM``, ...) and the query route's table.

    Serves ``embed`` and ``sparse_embed`` with :class:`InferenceFreeHead`, which encodes each input
    on its side's route: the masked LM runs for documents only, in the head, so a batch of queries
    runs no forward pass at all (:meth:`forward` computes nothing).
    """

    pooling_tasks: ClassVar[frozenset[str] | None] = frozenset({"embed", "sparse_embed"})
    #: The engine pads nothing for a forward pass that computes nothing.
    accepts_filler: ClassVar[bool] = False

    @staticmethod
    def document_class(config: PretrainedConfig) -> type[Architecture]:
        """The document route's masked-LM architecture: the first of ``config.architectures`` after
        this one that poolkit registers with an MLM head.

        Raises:
            ModelLoadError: none is (a bare ``DistilBertModel``, say).
        """
        names = [n for n in getattr(config, "architectures", None) or [] if n != ARCHITECTURE]
        archs = registry("architecture")
        for name in names:
            cls = archs.get(name) if name in archs else None
            if cls is not None and getattr(cls, "masked_lm_head", False):
                return cls
        raise ModelLoadError(
            f"the Router's document route is {', '.join(names) or 'no architecture'} (its config.json), which poolkit "
            "runs with no masked-LM head (BertForMaskedLM, DistilBertForMaskedLM, RobertaForMaskedLM and XLMRobertaForMaskedLM have one)"
        )

    @classmethod
    def load_tokenizer(cls, path: Path, config: PretrainedConfig) -> Tokenizer | None:
        return cls.document_class(config).load_tokenizer(path, config)

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        cls.document_class(config).configure(config, tokenizer)

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        cls.document_class(config).check_config(config, shapes, overridden)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.document = self.document_class(config)(config)
        #: The query route's weight per token (float32, kept out of the cast to the model's dtype).
        self.query_weights = torch.zeros(0)

    @property
    def max_positions(self) -> int | None:
        return self.document.max_positions

    def describe(self) -> dict[str, Any]:
        return {"document_architecture": {"value": type(self.document).__name__, "source": "config.json architectures (document route)"}}

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.document.load_weights(weights)

    def load_companion_files(self, model_dir: Path, allow_pickle: bool) -> None:
        router = router_of(Path(model_dir))
        if router is None:
            raise ModelLoadError(f"{ARCHITECTURE} needs a sentence-transformers Router (modules.json) in {model_dir}")
        weights = read_query_weights(Path(model_dir), router, allow_pickle)
        vocab = int(self.config.vocab_size)
        if weights.numel() != vocab:
            raise ModelLoadError(
                f"the Router's SparseStaticEmbedding weighs {weights.numel()} tokens, its document route's vocabulary has {vocab}"
            )
        self.query_weights = weights

    def quantize(self, method: str, batches: Callable[[], Iterable[PackedBatch]], budget: float | None = None) -> dict[str, Any]:
        return self.document.quantize(method, batches, budget)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Nothing: the head runs the document route for the documents of the batch."""
        return torch.empty((batch.num_tokens, 0), device=batch.device)

    def lm_head(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return self.document.lm_head()

    def role_prompts(self, texts: list[str], side: str, model: LoadedModel) -> list[Prompt]:
        """Queries tokenized without special tokens, as ``SparseStaticEmbedding.preprocess`` does;
        documents as the masked LM reads them."""
        return [Prompt(text=text, add_special_tokens=side != QUERY) for text in texts]

    def task_head(self, task: TaskSpec, model: LoadedModel) -> Head | None:
        """``embed`` and ``sparse_embed``: :class:`InferenceFreeHead` around the ``sparse_embed``
        task's SPLADE head of the document route."""
        if task.name not in ("embed", "sparse_embed") or model.st is None or model.st.router is None:
            return None
        splade = registry("task").get("sparse_embed").build(model)
        return InferenceFreeHead(self.document, splade, self.query_weights, model.st.router.default_route) if splade is not None else None

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Refuse a query table that does not weigh the tokenizer's every token.

        Raises:
            ModelLoadError: the table and the tokenizer disagree in size.
        """
        if len(tokenizer) != self.query_weights.numel():
            raise ModelLoadError(
                f"the Router's SparseStaticEmbedding weighs {self.query_weights.numel()} tokens, its tokenizer has {len(tokenizer)}"
            )


class SpladeRows(Protocol):
    """What the router needs of the ``sparse_embed`` task's head (:class:`~.sparse.SpladeHead`): its
    rows for a batch, their width and its pooling's name."""

    @property
    def output_size(self) -> int: ...

    @property
    def pooling_name(self) -> str: ...

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence[PoolingParams]) -> list[torch.Tensor]: ...


class InferenceFreeHead:
    """Each input on its side's route (its :attr:`PoolingParams.side`, else the Router's default):
    a query's vector is the table's weight at each token it holds (sentence-transformers'
    ``SparseStaticEmbedding.forward``: presence times weight); a document's is ``splade`` over the
    masked LM's states, which run for the batch's documents only."""

    def __init__(self, document: Architecture, splade: SpladeRows, query_weights: torch.Tensor, default_side: str) -> None:
        self.document = document
        self.splade = splade
        self.query_weights = query_weights
        self.default_side = default_side

    @property
    def output_size(self) -> int:
        return self.splade.output_size

    @property
    def pooling_name(self) -> str:
        return f"query: SparseStaticEmbedding, document: {self.splade.pooling_name}"

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        queries = [(p.side or self.default_side) == QUERY for p in params]
        if not any(queries):
            return self.splade(self.document(batch), batch, params)
        device = batch.device
        if self.query_weights.device != device:
            self.query_weights = self.query_weights.to(device)
        is_query = torch.tensor(queries, dtype=torch.bool, device=device)[batch.seq_ids]
        out = torch.zeros((batch.num_seqs, self.output_size), dtype=torch.float32, device=device)
        ids = batch.input_ids[is_query]
        out[batch.seq_ids[is_query], ids] = self.query_weights[ids]
        documents = [i for i, q in enumerate(queries) if not q]
        if documents:
            sub = _sequences(batch, documents, ~is_query)
            out[documents] = torch.stack(self.splade(self.document(sub), sub, [params[i] for i in documents]))
        return list(out.unbind(0))


def _sequences(batch: PackedBatch, members: list[int], tokens: torch.Tensor) -> PackedBatch:
    """The sequences ``members`` of ``batch`` (whose tokens ``tokens`` marks) as a batch of their own."""
    types = batch.token_type_ids[tokens] if batch.token_type_ids is not None else None
    skip = [batch.pool_skip[i] for i in members] if batch.pool_skip is not None else None
    return PackedBatch(batch.input_ids[tokens], [batch.seq_lens[i] for i in members], types, skip if skip and any(skip) else None)
