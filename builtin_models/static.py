"""Static embeddings: model2vec's ``StaticModel`` (minishlab/potion-base-8M and the other potion
models) and sentence-transformers' ``StaticEmbedding``, a table lookup and a mean, with no
attention and no positions.

model2vec 0.7 (``model2vec/hf_utils.py`` ``save_pretrained`` / ``load_pretrained``,
``model2vec/model.py`` ``StaticModel``) saves, and the hub ships:

- ``config.json``: ``model_type: "model2vec"``, ``architectures: ["StaticModel"]``, ``normalize``,
  ``hidden_dim``, ``apply_pca``, ``seq_length``, ``embedding_dtype``, ...; read here:
  ``architectures`` and ``normalize`` (whether ``encode`` L2-normalises). The width is the table's
  (a PCA'd table is narrower than the model it was distilled from);
- ``model.safetensors``: ``embeddings`` ``[rows, width]`` and, in vocabulary-quantized saves, a
  token ``mapping`` (token id -> row) and per-token ``weights``: a token's vector is
  ``embeddings[mapping[id]] * weights[id]``;
- ``tokenizer.json``, read by ``tokenizers`` as it is; ``modules.json`` (a ``StaticEmbedding`` at
  ``.``, then ``Normalize`` when ``normalize``), which only sentence-transformers reads.

``StaticModel.encode`` tokenizes without special tokens, drops the tokenizer model's unknown token
(``tokenizer.model.unk_token``: WordPiece, WordLevel and BPE models name one, a Unigram model does
not, so it drops nothing), keeps the first ``max_length`` (512) tokens of those, averages their
vectors (a text left with none is the zero vector) and L2-normalises when ``normalize``.

sentence-transformers 6.2 (``sentence_transformer/modules/static_embedding.py``) saves a
``StaticEmbedding`` as the first module of ``modules.json``, its ``model.safetensors``
(``embedding.weight``, or model2vec's keys, folded as above) and ``tokenizer.json`` in the module's
folder (``0_StaticEmbedding/``; the model's own folder since 6.x, ``save_in_root``), with no
``config.json`` at the top: :func:`poolkit_checkpoint_layout` recognises it. Its ``encode`` tokenizes
without special tokens, never truncates (``max_seq_length`` is infinite), takes the ``EmbeddingBag``
mean (an empty text: zeros), then runs the modules after it (``Normalize``, ``Dense``).

Both are served the same way: the forward pass is a gather of the table's rows, the ``embed`` head
their mean (:class:`KeptMean`). The tokenizer adds no special tokens but one end-of-text marker, an
id past the vocabulary with a zero row that is never averaged, so that an empty text is an input of
one token (the engine refuses inputs without tokens) and comes out as the zero vector, as both
publishers return it.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Collection, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from poolkit.contracts.architecture import Architecture, LoadedModel, TaskSpec
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.checkpoint import Checkpoint, Layout
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.model import Tokenizer
from poolkit.contracts.params import PoolingParams
from poolkit.contracts.pooling import Head
from poolkit.loading.weights import warn_unused
from poolkit.config.threads import one_thread

if TYPE_CHECKING:
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

#: model2vec's table, and the token mapping and per-token weights of a vocabulary-quantized save.
EMBEDDINGS, MAPPING, WEIGHTS = "embeddings", "mapping", "weights"
#: sentence-transformers' table (``StaticEmbedding.embedding``, an ``nn.EmbeddingBag``).
ST_TABLE = "embedding.weight"
#: The tokens model2vec's ``StaticModel.encode`` averages at most (its ``max_length`` default).
MODEL2VEC_MAX_LENGTH = 512
#: The end-of-text marker's token string (it is in no vocabulary: only the post-processor adds it).
END_MARKER = "<poolkit-end>"
#: The layout :func:`poolkit_checkpoint_layout` recognises, as ``poolkit info`` names it.
ST_LAYOUT = "sentence-transformers StaticEmbedding"


def _vocabulary(backend: RustTokenizer) -> dict[str, int]:
    """The tokenizer's tokens with their ids, added tokens included (what both publishers count)."""
    return backend.get_vocab(with_added_tokens=True)


class KeptMean:
    """An ``embed`` head over the mean of the tokens a static model keeps.

    Each text's mean is one ``embedding_bag`` over the table (a gather and a mean, not the [tokens,
    width] rows of the forward pass), less the tokens left out: the end-of-text marker, model2vec's
    unknown token, tokens past model2vec's ``max_length`` (a text left with none: the zero vector).
    The task's own head (MEAN pooling, then ``Dense``, ``dimensions``, normalisation) then runs on
    the means, each as a sequence of one token.

    Args:
        model: the architecture (its ``table`` and ``kept`` buffers, on its device).
        head: the task's head.
    """

    def __init__(self, model: StaticEmbedding, head: Head) -> None:
        self.model = model
        self.head = head

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence[PoolingParams]) -> torch.Tensor | list[torch.Tensor]:
        with one_thread():
            return self._means(batch, params)

    def _means(self, batch: PackedBatch, params: Sequence[PoolingParams]) -> torch.Tensor | list[torch.Tensor]:
        ids, limit = batch.input_ids, self.model.max_tokens
        kept = self.model.kept[ids]
        if batch.pool_mask is not None:
            kept &= batch.pool_mask
        starts = batch.cu_seqlens
        running = F.pad(kept.cumsum(0), (1, 0))
        counts = running[starts[1:]] - running[starts[:-1]]
        if limit is not None and int(counts.max()) > limit:
            kept &= running[1:] - running[starts[:-1]].repeat_interleave(batch.lens) <= limit
            counts = counts.clamp(max=limit)
        offsets = counts.cumsum(0) - counts
        means = F.embedding_bag(ids[kept], self.model.table, offsets, mode="mean")
        rows = PackedBatch(torch.zeros(len(counts), dtype=torch.long, device=ids.device), [1] * len(counts))
        return self.head(means, rows, params)


class StaticEmbedding(Architecture):
    """sentence-transformers' ``StaticEmbedding``: every token of the text averaged (see the module
    docstring); also what :class:`StaticModel` builds on.

    The config (built by :func:`poolkit_checkpoint_layout`, or model2vec's ``config.json``) gets from
    the tokenizer ``tokenizer_tokens``, ``end_marker_id`` (the marker: the next id), ``vocab_size``
    (both), ``dropped_token_id`` (model2vec's unknown token, or ``None``) and ``use_activation`` (its
    ``normalize``, unless set), and from the table ``hidden_size``.
    """

    default_pooling_type: ClassVar[str | None] = "MEAN"
    pooling_tasks: ClassVar[frozenset[str] | None] = frozenset({"embed"})
    #: Most tokens of a text averaged, or ``None`` for all.
    max_tokens: ClassVar[int | None] = None
    #: Whether the tokenizer model's unknown token is left out of the mean.
    drops_unknown: ClassVar[bool] = False
    #: The table's name in ``model.safetensors`` (model2vec's keys are read too).
    table_name: ClassVar[str] = ST_TABLE

    @classmethod
    def load_tokenizer(cls, path: Path, config: PretrainedConfig) -> Tokenizer:
        """``tokenizer.json`` as both publishers read it (``tokenizers.Tokenizer.from_file``), with no
        special tokens around a text but the end-of-text marker after it, no padding, no truncation.

        Raises:
            ModelLoadError: ``tokenizer.json`` is missing or unreadable.
        """
        from tokenizers import Tokenizer as RustTokenizer
        from tokenizers import processors
        from transformers import PreTrainedTokenizerFast

        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise ModelLoadError(f"{path} has no tokenizer.json; a static embedding model reads its tokenizer from it")
        try:
            backend = RustTokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises its own Exception for a malformed file
            raise ModelLoadError(f"cannot read {file}: {exc}") from None
        if backend.padding is not None or backend.truncation is not None:
            # both publishers read the file as it is: model2vec pads and truncates, sentence-transformers truncates
            logger.warning("%s sets %s; poolkit reads each text whole and unpadded", file,
                           " and ".join(k for k in ("padding", "truncation") if getattr(backend, k) is not None))
        backend.no_padding()
        backend.no_truncation()
        marker = backend.get_vocab_size(with_added_tokens=True)
        backend.post_processor = processors.TemplateProcessing(
            single=f"$A {END_MARKER}", pair=f"$A $B {END_MARKER}", special_tokens=[(END_MARKER, marker)]
        )
        unknown = getattr(backend.model, "unk_token", None)
        return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=unknown)

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        backend = tokenizer.backend_tokenizer
        vocab = _vocabulary(backend)
        config.tokenizer_tokens = len(vocab)
        config.end_marker_id = backend.get_vocab_size(with_added_tokens=True)
        config.vocab_size = config.end_marker_id + 1  # token-id prompts may end with the marker, as text prompts do
        unknown = getattr(backend.model, "unk_token", None) if cls.drops_unknown else None
        config.dropped_token_id = vocab.get(unknown) if unknown is not None else None
        if getattr(config, "use_activation", None) is None:
            config.use_activation = bool(getattr(config, "normalize", False))

    @classmethod
    def check_config(cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()) -> None:
        """The table against the tokenizer, from the safetensors header: one row per token (or a
        ``mapping`` and ``weights`` entry per token); ``hidden_size`` is the table's width.

        Raises:
            ModelLoadError: the checkpoint has no table, or its sizes disagree with the tokenizer's.
        """
        if shapes is not None:
            config.hidden_size = cls._check_shapes(config, shapes)

    @classmethod
    def _check_shapes(cls, config: PretrainedConfig, shapes: Mapping[str, Sequence[int]]) -> int:
        """The table's width, once its shapes fit the tokenizer's ``config.tokenizer_tokens``."""
        name = cls.table_name if cls.table_name in shapes else EMBEDDINGS
        table = shapes.get(name)
        if table is None:
            raise ModelLoadError(f"the checkpoint has no '{cls.table_name}' or '{EMBEDDINGS}' tensor: no static embedding table")
        tokens = int(config.tokenizer_tokens)
        if len(table) != 2:
            raise ModelLoadError(f"the table '{name}' has shape {tuple(table)}; a static embedding table is [rows, width]")
        mapped = name == EMBEDDINGS and MAPPING in shapes
        for key in (MAPPING, WEIGHTS) if name == EMBEDDINGS else ():
            if key in shapes and tuple(shapes[key]) != (tokens,):
                raise ModelLoadError(
                    f"the checkpoint's '{key}' has shape {tuple(shapes[key])}, but the tokenizer (tokenizer.json) has {tokens} tokens: "
                    "model2vec reads one entry per token"
                )
        if not mapped and int(table[0]) != tokens:
            raise ModelLoadError(
                f"the table '{name}' has {int(table[0])} rows, but the tokenizer (tokenizer.json) has {tokens} tokens: "
                "a static embedding model reads one row per token"
            )
        return int(table[1])

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        #: The folded table, one row per token id and a zero row for the marker (built by :meth:`load_weights`).
        self.register_buffer("table", torch.zeros(0, 0))
        kept = torch.ones(int(config.vocab_size), dtype=torch.bool)
        kept[int(config.end_marker_id)] = False
        if config.dropped_token_id is not None:
            kept[int(config.dropped_token_id)] = False
        #: Per token id, whether the mean counts it.
        self.register_buffer("kept", kept, persistent=False)
        #: The tensors the table was folded from, for ``poolkit info``.
        self.tensor_names: list[str] = []
        #: Whether the ``embed`` head reads the ids itself (:class:`KeptMean`): :meth:`forward` computes nothing.
        self.means_only = False

    @property
    def max_positions(self) -> int | None:
        return None  # no positions: any length

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Fold the checkpoint's table into one row per token id, as sentence-transformers'
        ``StaticEmbedding._fold_model2vec_weights`` does (float32: model2vec multiplies in numpy's
        wider type), and add the marker's zero row.

        Raises:
            ModelLoadError: the table is missing or does not fit the tokenizer, or the mapping
                points past the table.
        """
        names = {self.table_name, EMBEDDINGS, MAPPING, WEIGHTS}
        tensors = {}
        unused = []
        for name, tensor in weights:
            if name in names:
                tensors[name] = tensor
            else:
                unused.append(name)
        warn_unused(unused, type(self).__name__)
        self.config.hidden_size = self._check_shapes(self.config, {k: tuple(t.shape) for k, t in tensors.items()})
        if self.table_name == ST_TABLE and ST_TABLE in tensors:
            rows = tensors[ST_TABLE].float()
            self.tensor_names = [ST_TABLE]
        else:
            rows = tensors[EMBEDDINGS].float()
            self.tensor_names = [k for k in (EMBEDDINGS, MAPPING, WEIGHTS) if k in tensors]
            mapping = tensors.get(MAPPING)
            if mapping is not None:
                mapping = mapping.long()
                if len(mapping) and (int(mapping.min()) < 0 or int(mapping.max()) >= len(rows)):
                    raise ModelLoadError(
                        f"the checkpoint's '{MAPPING}' points at rows {int(mapping.min())}..{int(mapping.max())}, "
                        f"but '{EMBEDDINGS}' has {len(rows)} rows"
                    )
                rows = rows[mapping]
            if WEIGHTS in tensors:
                rows = rows * tensors[WEIGHTS].float().unsqueeze(1)
        self.table = torch.cat([rows, rows.new_zeros(1, rows.shape[1])]).contiguous()

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Each token's row of the table; nothing (``[tokens, 0]``) when the one task's head is
        :class:`KeptMean`, which reads the batch's ids itself."""
        if self.means_only:
            return self.table.new_empty((batch.num_tokens, 0))
        with one_thread():
            return F.embedding(batch.input_ids, self.table)

    def task_head(self, task: TaskSpec, model: LoadedModel) -> Head | None:
        """For ``embed`` (the one task) with MEAN pooling (the default), the task's head over the mean
        of the kept tokens, which then needs no rows from :meth:`forward`."""
        if task.name != "embed" or model.pooling_type(task).value != ("MEAN",):
            return None
        head = task.build(model)
        self.means_only = head is not None
        return None if head is None else KeptMean(self, head)


class StaticModel(StaticEmbedding):
    """model2vec's ``StaticModel``: as :class:`StaticEmbedding`, less the tokenizer model's unknown
    token and past the first ``max_length`` (512) tokens, normalised as ``config.json`` says."""

    max_tokens: ClassVar[int | None] = MODEL2VEC_MAX_LENGTH
    drops_unknown: ClassVar[bool] = True
    table_name: ClassVar[str] = EMBEDDINGS

    @classmethod
    def load_tokenizer(cls, path: Path, config: PretrainedConfig) -> Tokenizer:
        """As :class:`StaticEmbedding`'s, and a text cut to ``max_length`` times the median length of
        the vocabulary's tokens in characters before it is read (``StaticModel.tokenize``), by a
        normalizer run before the tokenizer's own."""
        from tokenizers import Regex, normalizers

        tokenizer = super().load_tokenizer(path, config)
        backend = tokenizer.backend_tokenizer
        median = int(statistics.median(len(token) for token in _vocabulary(backend)))
        cut = normalizers.Replace(Regex(r"\A[\s\S]{%d}\K[\s\S]+" % (cls.max_tokens * median)), "")
        backend.normalizer = cut if backend.normalizer is None else normalizers.Sequence([cut, backend.normalizer])
        return tokenizer

    @classmethod
    def inspect_checkpoint(cls, config: PretrainedConfig, checkpoint: Checkpoint) -> list[str]:
        """model2vec normalises as ``config.json`` ``normalize`` says; ``modules.json`` (for
        sentence-transformers) must say the same.

        Raises:
            ModelLoadError: ``modules.json`` has a ``Normalize`` module and ``normalize`` is false, or
                the other way round.
        """
        normalize = bool(getattr(config, "normalize", False))
        if checkpoint.st is not None and checkpoint.st.normalize != normalize:
            has = "has a Normalize module" if checkpoint.st.normalize else "has no Normalize module"
            raise ModelLoadError(f"config.json says normalize: {str(normalize).lower()}, but modules.json {has}")
        return []

    def describe(self) -> dict[str, Any]:
        dropped = self.config.dropped_token_id
        return {
            "layout": {"value": "model2vec", "source": f"config.json architectures (StaticModel), model.safetensors ({', '.join(self.tensor_names)})"},
            "averaged_tokens": {
                "value": f"the first {self.max_tokens}" + (f", unknown token {dropped} left out" if dropped is not None else ""),
                "source": "model2vec StaticModel.encode (max_length, tokenizer.json model unk_token)",
            },
        }


@hookimpl
def poolkit_checkpoint_layout(path):
    """A sentence-transformers folder whose first module is a ``StaticEmbedding``, with no
    ``config.json`` at its top: the module's folder holds the table and the tokenizer."""
    path = Path(path)
    modules_file = path / "modules.json"
    if (path / "config.json").is_file() or not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # read_st_config says what is wrong with it
    if not isinstance(modules, list) or not modules or not all(isinstance(m, dict) for m in modules):
        return None
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in sorted(modules, key=lambda m: m.get("idx", 0))]
    first = min(modules, key=lambda m: m.get("idx", 0))
    if kinds[0] != "StaticEmbedding":
        return None
    module_path = str(first.get("path", "")).strip("/")
    folder = (path / module_path).resolve()
    if not folder.is_relative_to(path.resolve()):
        raise ModelLoadError(f"{modules_file}: the StaticEmbedding module's path '{module_path}' leaves the model's folder")
    if not (folder / "tokenizer.json").is_file():
        raise ModelLoadError(f"{modules_file} starts with a StaticEmbedding module, but {folder} has no tokenizer.json")
    config = {"architectures": ["StaticEmbedding"], "normalize": "Normalize" in kinds, "module_path": module_path}
    return Layout(ST_LAYOUT, f"modules.json: {module_path or 'the model folder'}", folder, folder, config=config, st_dir=path)


@hookimpl
def poolkit_register_architectures(register):
    register("StaticModel", StaticModel)
    register("StaticEmbedding", StaticEmbedding)
