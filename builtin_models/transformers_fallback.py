"""The generic transformers fallback: architectures poolkit has no native code for.

Any text model that transformers itself implements (no remote code) runs through its
transformers class on right-padded batches, and its output is re-packed to poolkit's ``[T, ...]``
layout, so the same poolers, heads and tasks apply. It answers ``poolkit_resolve_architecture``
last (``trylast``): registered architectures, conversions to them and other plugins' resolvers
all come first.

The weights go through transformers' own ``from_pretrained(None, config=..., state_dict=...)``,
so its key handling applies as it does for a transformers user: the base-model prefix of task
checkpoints (``distilbert.``), legacy ``gamma``/``beta`` names and per-model renamings.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
import re
from typing import TYPE_CHECKING, Any, ClassVar, Collection, Iterable, Iterator, Mapping

import torch
from torch import nn

from poolkit.config.conversion import CONVERTIBLE_SUFFIXES
from poolkit.config.model_impl import TRANSFORMERS_IMPLEMENTATION
from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.capabilities import TakesTokenTypes
from poolkit.contracts.config_checks import ConfigChecks, layers_held, source
from poolkit.contracts.errors import InvalidRequest, ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.loading.weights import warn_unused

from .blocks.heads import CausalLMHead

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.architecture import LoadedModel

logger = logging.getLogger(__name__)

#: What ``poolkit info`` says of these architectures, and what ``model_impl="transformers"`` asks for.
IMPLEMENTATION = TRANSFORMERS_IMPLEMENTATION
#: Names of task models whose checkpoints the fallback serves with their base model (embeddings).
_BASE_SUFFIXES = tuple(s for s in CONVERTIBLE_SUFFIXES if not s.endswith("Classification")) + ("LMHeadModel",)
#: Sub-configs that mark a multimodal model, which the fallback (text in, text out) cannot feed.
_MULTIMODAL_SUBCONFIGS = ("vision_config", "audio_config")
#: Names of causal language models, whose LM head the fallback exposes as ``lm_head()``.
_CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
#: What causal LMs of transformers do to their LM head's output, by the config attribute they read
#: (Cohere scales, Granite divides, Gemma 2/3 soft-cap); the fallback does the same (see
#: :func:`_logit_transforms`).
_LOGIT_TRANSFORMS = ("logit_scale", "logits_scaling", "final_logit_softcapping")
#: The tensors of one layer in transformers checkpoints (``encoder.layer.3.``, ``layers.3.``,
#: ``h.3.``, ``block.3.``), the layer index the first group.
_LAYER = r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\."
#: :class:`PoolerConfig` defaults of transformers classes, as vLLM sets them for its own
#: implementation of each: Jamba's reward model gives its raw logit.
_POOLER_DEFAULTS: Mapping[str, Mapping[str, Any]] = {"JambaForSequenceClassification": {"use_activation": False}}
#: Default sequence pooling of transformers classes, as vLLM sets it for its own implementation of
#: each (``@default_pooling_type``): ERNIE's embedding model pools the mean.
_POOLING_DEFAULTS: Mapping[str, str] = {"ErnieModel": "MEAN"}
#: Buffers of older checkpoints that transformers rebuilds: never reported as unused.
_IGNORED = re.compile(r"(?:^|\.)(?:position_ids|inv_freq|masked_bias)$")
#: Size fields a mismatched dimension is blamed on first, when several have its value.
_NAMED_SIZES = ("hidden_size", "intermediate_size", "vocab_size", "max_position_embeddings", "num_attention_heads",
                "num_key_value_heads", "head_dim", "embedding_size", "type_vocab_size")


def _text_config(config: PretrainedConfig) -> Any:
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _forward_parameters(module_cls: type) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(module_cls.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence transformers' load report and progress bar: poolkit reports what matters itself.

    A task checkpoint loaded as its base model always has "unexpected" head tensors, and missing
    or mis-shaped tensors become a :class:`ModelLoadError` here instead of a warning; with its
    loader quiet, transformers checks a model's tensor-parallel plan and lists every layer "not
    sharded", which means nothing on one device.
    """
    from transformers.utils import logging as hf_logging

    names = ("transformers.modeling_utils", "transformers.core_model_loading", "transformers.distributed.tensor_parallel")
    loggers = [logging.getLogger(n) for n in names]
    levels = [log.level for log in loggers]
    bars = hf_logging.is_progress_bar_enabled()
    for log in loggers:
        log.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


class _Passthrough(nn.Module):
    """A head whose input already is the logits (see :class:`TransformersForSequenceClassification`).

    It holds an empty fp32 parameter because poolkit's classifier head casts its input to the
    dtype of the head's first parameter.
    """

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TransformersModel(Architecture, TakesTokenTypes):
    """A transformers base model (``DistilBertModel``, ``LlamaModel``, ...) as a poolkit architecture.

    ``forward`` pads the packed batch on the right (``input_ids`` with the pad token,
    ``attention_mask``, ``token_type_ids`` when the model takes them), runs the transformers model
    under ``torch.no_grad`` and returns the last hidden states of the real tokens, re-packed to
    ``[T, H]``. Transformers derives position ids from the mask / input ids itself, so right
    padding leaves every real token at its unpadded position, for causal models too.

    Checkpoints of the family's task models (``*ForMaskedLM``, ``*ForCausalLM``, a classifier
    loaded with ``hf_overrides={"architectures": ["DistilBertModel"]}``) load into the base model
    with their ``base_model_prefix`` stripped, as ``from_pretrained`` does.

    Encoders pool ``CLS`` by default, decoders (``config.is_decoder``, or a family with a causal
    LM and no masked LM) ``LAST``.

    Subclasses are made per transformers class by the resolver; ``hf_class`` is that class.
    """

    implementation: ClassVar[str] = IMPLEMENTATION
    accepts_filler: ClassVar[bool] = False  # its batches are padded to its own shapes; filler would only cost
    #: LoRA adapters hook transformers' own linear layers (called as modules), on its padded batches.
    takes_adapters: ClassVar[bool] = True
    default_pooling_type: ClassVar[str | None] = "CLS"
    #: The transformers class this architecture builds.
    hf_class: ClassVar[type]

    config_checks: ClassVar[ConfigChecks] = ConfigChecks(
        sizes=("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"),
    )

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        """The sizes, the layer count, then every parameter's shape against the checkpoint's.

        The model is built on the meta device (no memory) once the layer count is known to fit,
        and a parameter whose shape differs from the checkpoint tensor of its name is blamed on
        the config field that gave the differing dimension. A mismatch no field explains is
        left to transformers' loading, which reports it.
        """
        text = _text_config(config)
        cls.config_checks.check(text, shapes, overridden)
        if not shapes:
            return
        aliases = dict(getattr(text, "attribute_map", None) or {})
        layers, held = getattr(text, "num_hidden_layers", None), layers_held(shapes, _LAYER)
        if isinstance(layers, int) and held and layers > held:
            name = aliases.get("num_hidden_layers", "num_hidden_layers")
            raise ModelLoadError(f"{source(name, overridden)} {name} is {layers}, but the weights hold {held} layers")
        try:
            with torch.device("meta"):
                model = cls.hf_class(copy.deepcopy(config))
        except (RuntimeError, NotImplementedError):  # built on real tensors by __init__: shapes unchecked
            return
        except Exception as exc:
            raise ModelLoadError(
                f"transformers cannot build {cls.hf_class.__name__} from this config: {type(exc).__name__}: {exc}"
            ) from None
        prefix = getattr(model, "base_model_prefix", "") or ""
        fields = {k: v for k, v in text.to_dict().items() if isinstance(v, int) and not isinstance(v, bool)}
        ranked = [aliases.get(n, n) for n in _NAMED_SIZES] + sorted(fields)
        for name, param in model.named_parameters():
            candidates = (name, f"{prefix}.{name}", name.removeprefix(f"{prefix}."))
            tensor = next((c for c in candidates if c in shapes), None)
            if tensor is None or len(shapes[tensor]) != param.ndim:
                continue
            for wanted, held_dim in zip(param.shape, shapes[tensor]):
                blamed = next((f for f in ranked if fields.get(f) == wanted), None) if wanted != held_dim else None
                if blamed is not None:
                    raise ModelLoadError(
                        f"{source(blamed, overridden)} {blamed} is {wanted}, but the weights hold {held_dim} "
                        f"('{tensor}' has shape {tuple(shapes[tensor])})"
                    )

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.decoder = is_decoder(config)
        text = _text_config(config)
        takes = _forward_parameters(self.hf_class)
        self.uses_token_type_ids = "token_type_ids" in takes and int(getattr(text, "type_vocab_size", 2) or 0) > 1
        self._takes_use_cache = "use_cache" in takes
        self._pad_token_id = getattr(text, "pad_token_id", None)
        if self.decoder and self.default_pooling_type == "CLS":
            self.default_pooling_type = "LAST"
        # The module structure only (cheap on the meta device); load_weights builds the real model.
        try:
            with torch.device("meta"):
                self.hf = self.hf_class(copy.deepcopy(config))
        except (RuntimeError, NotImplementedError):  # a model whose __init__ computes on real tensors
            self.hf = self.hf_class(copy.deepcopy(config))

    @property
    def hidden_size(self) -> int:
        size = getattr(_text_config(self.config), "hidden_size", None)
        return int(size) if size else int(self.hf.get_input_embeddings().embedding_dim)

    @property
    def max_positions(self) -> int | None:
        n = getattr(_text_config(self.config), "max_position_embeddings", None)
        return int(n) - self._position_offset() if n else None

    def _position_offset(self) -> int:
        """RoBERTa-style tables count positions from ``padding_idx + 1``; others from 0."""
        for module in self.hf.modules():
            table = getattr(module, "position_embeddings", None)
            if isinstance(table, nn.Embedding) and table.padding_idx is not None:
                return int(table.padding_idx) + 1
        return 0

    def adapter_target(self, layer: str) -> tuple[str, int, int] | None:
        """A checkpoint's layer is transformers' own module of that name (under :attr:`hf`)."""
        return f"hf.{layer}", 0, 1

    # -- weights -------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        state = dict(weights)
        name = self.hf_class.__name__
        keys = list(state)
        with _quiet_loading():
            try:
                model, info = self.hf_class.from_pretrained(
                    None,
                    config=copy.deepcopy(self.config),
                    state_dict=state,
                    output_loading_info=True,
                    ignore_mismatched_sizes=True,
                    dtype="auto",
                )
            except (RuntimeError, ValueError, KeyError, OSError) as exc:
                raise ModelLoadError(f"transformers could not load the checkpoint into {name}: {exc}") from None
        del state
        mismatched = sorted(info.get("mismatched_keys") or [], key=str)
        if mismatched:
            shown = "; ".join(_describe_mismatch(m) for m in mismatched[:3])
            raise ModelLoadError(f"checkpoint tensors have the wrong shape for {name}: {shown}")
        params = dict(model.named_parameters())
        # Buffers (position_ids and the like) are rebuilt by the model; only parameters count. A base
        # model's own pooler (BERT's) may be missing, as sentence-transformers saves many: only the
        # last hidden states are read from it.
        missing = sorted(
            k for k in info.get("missing_keys") or [] if k in params and not (k.startswith("pooler.") and model is model.base_model)
        )
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ModelLoadError(f"checkpoint lacks weights for {', '.join(missing[:5])}{more} ({name})")
        heads = _task_heads(model, keys)
        unexpected = sorted(k for k in info.get("unexpected_keys") or [] if k not in heads and not _IGNORED.search(k))
        warn_unused(unexpected, name)
        self.hf = model.eval()

    # -- forward -------------------------------------------------------------------------------

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        limit = self.max_positions
        if limit is not None and batch.max_len > limit:
            raise InvalidRequest(
                f"a sequence of {batch.max_len} tokens is longer than the model's {limit} positions; truncate the input"
            )
        rows, cols = batch.seq_ids, batch.positions
        with torch.no_grad():
            out = self._run(self._padded(batch))
        return out[rows, cols]

    def _run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, L, H]`` last hidden states of a padded batch."""
        return self.hf(**inputs)[0]

    def _padded(self, batch: PackedBatch) -> dict[str, Any]:
        rows, cols = batch.seq_ids, batch.positions
        shape = (batch.num_seqs, batch.max_len)
        pad = self._pad_token_id if self._pad_token_id is not None else 0
        input_ids = batch.input_ids.new_full(shape, pad)
        input_ids[rows, cols] = batch.input_ids
        mask = torch.zeros(shape, dtype=torch.long, device=batch.device)
        mask[rows, cols] = 1 if batch.key_mask is None else batch.key_mask.long()
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
        if self.uses_token_type_ids and batch.token_type_ids is not None:
            types = torch.zeros(shape, dtype=torch.long, device=batch.device)
            types[rows, cols] = batch.token_type_ids
            inputs["token_type_ids"] = types
        if self._takes_use_cache:
            inputs["use_cache"] = False
        return inputs


class TransformersForSequenceClassification(TransformersModel):
    """A transformers ``*ForSequenceClassification`` with its exact head, whatever the family.

    Heads differ per family (DistilBERT: ``pre_classifier`` + ReLU on the first token; ELECTRA:
    its own ``ClassificationHead``; BERT: the pooler; decoders: the last non-pad token), and they
    live inline in each model's ``forward``, so the fallback does not take them apart. Instead:

    - ``forward`` runs the whole transformers classifier and gives **every token of a sequence
      that sequence's logits**: ``[T, num_labels]``, not hidden states;
    - ``hidden_size`` is therefore ``num_labels``, ``default_pooling_type`` is ``CLS`` (any
      sequence pooler picks the same row), and ``sequence_classifier()`` passes the pooled row through.

    The ``classify`` task (and cross-encoder ``score``) then applies poolkit's activation,
    calibration and labels as for native classifiers. There is no ``token_classifier`` (the logits are
    per sequence), and the rows are no embedding: to embed with the encoder of such a checkpoint
    load it as its base model, ``hf_overrides={"architectures": ["<Family>Model"]}``.

    Without a pad token a transformers classifier can only pool batches of one; the fallback then
    runs the sequences one by one.
    """

    default_pooling_type: ClassVar[str | None] = "CLS"

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.default_pooling_type = "CLS"

    @property
    def hidden_size(self) -> int:
        return self.num_labels

    def sequence_classifier(self) -> nn.Module:
        return _Passthrough()

    def token_classifier(self) -> None:
        """None: every row of a sequence holds that sequence's logits, so no token is classified."""
        return None

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        limit = self.max_positions
        if limit is not None and batch.max_len > limit:
            raise InvalidRequest(
                f"a sequence of {batch.max_len} tokens is longer than the model's {limit} positions; truncate the input"
            )
        with torch.no_grad():
            if self._pad_token_id is None and batch.num_seqs > 1:
                logits = torch.cat([self._run(self._padded(one)) for one in _singles(batch)])
            else:
                logits = self._run(self._padded(batch))
        return logits[batch.seq_ids]

    def _run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.hf(**inputs).logits


class TransformersDecoderForSequenceClassification(TransformersModel):
    """A decoder classifier of transformers' generic kind (Llama, Mistral, Qwen, Gemma, ...).

    transformers computes ``score(hidden_states)`` and keeps the last non-pad token; here
    ``forward`` returns the base model's hidden states ``[T, H]``, the default pooling is
    ``LAST`` and ``score`` is both the sequence and the token classifier, as for native classifiers.
    Results equal transformers' except where a sequence's real last token is the pad token,
    which transformers skips.
    """

    default_pooling_type: ClassVar[str | None] = "LAST"

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.default_pooling_type = "LAST"

    def _run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.hf.base_model(**inputs).last_hidden_state

    def sequence_classifier(self) -> nn.Module:
        return self.hf.score


class TransformersForTokenClassification(TransformersModel):
    """A transformers ``*ForTokenClassification`` (NER) with its exact head.

    ``forward`` returns the transformers model's per-token logits ``[T, num_labels]``, so
    ``hidden_size`` is ``num_labels`` and ``token_classifier()`` passes them through; the
    ``token_classify`` task applies poolkit's activation and ``STEP`` selection.
    """

    default_pooling_type: ClassVar[str | None] = None

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.default_pooling_type = None

    @property
    def hidden_size(self) -> int:
        return self.num_labels

    def token_classifier(self) -> nn.Module:
        return _Passthrough()

    def _run(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.hf(**inputs).logits


class TransformersForCausalLM(CausalLMHead, TransformersModel):
    """A transformers causal LM (``LlamaForCausalLM``, ``MistralForCausalLM``, ``GPT2LMHeadModel``, ...).

    ``forward`` runs the base model (``hf_class``) as :class:`TransformersModel` does, so the
    model embeds as before; its LM head, that of ``lm_class`` (the checkpoint's class), is
    :meth:`lm_head`: the tied input embeddings, or the checkpoint's head tensors kept as loaded
    until a head reads them (``STEP`` process rewards, as math-shepherd-mistral-7b-prm's). The
    logits are transformed as the class's ``forward`` transforms them (``logit_scale``,
    ``logits_scaling``, ``final_logit_softcapping``); a class whose ``forward`` does anything
    else to them has no ``lm_head()`` here.
    """

    #: The transformers causal LM class whose head this architecture exposes.
    lm_class: ClassVar[type]

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.lm_head_tensors: dict[str, str] = {}
        self._tied = False
        self._transforms: tuple[str, ...] = ()
        #: Why the model has no ``lm_head()``, or ``None``.
        self.no_lm_head_reason: str | None = None
        try:
            with torch.device("meta"):
                lm = self.lm_class(copy.deepcopy(config))
        except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
            self.no_lm_head_reason = f"{self.lm_class.__name__} cannot be inspected: {type(exc).__name__}: {exc}"
            return
        head = lm.get_output_embeddings()
        path = next((name for name, module in lm.named_modules() if module is head), None)
        if head is None or path is None or getattr(head, "weight", None) is None:
            self.no_lm_head_reason = f"{self.lm_class.__name__} has no output embeddings"
            return
        self._tied = head.weight is lm.get_input_embeddings().weight
        names = ["weight"] + (["bias"] if getattr(head, "bias", None) is not None else [])
        self.lm_head_tensors = {kind: f"{path}.{kind}" for kind in names}
        self._transforms, unknown = _logit_transforms(self.lm_class, path.rpartition(".")[2])
        if unknown is not None:
            self.no_lm_head_reason = (
                f"{self.lm_class.__name__} computes its logits in a way poolkit does not follow: {unknown[:200]}"
            )

    def input_embedding_weight(self) -> torch.Tensor:
        return self.hf.get_input_embeddings().weight

    def ties_lm_head(self) -> bool:
        return self._tied

    def has_lm_head(self) -> bool:
        return (
            self.no_lm_head_reason is None
            and super().has_lm_head()
            and all(kind in self._lm_tensors for kind in self.lm_head_tensors if kind != "weight")
        )

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().load_weights(weights)
        if self.no_lm_head_reason is None and not self.has_lm_head():
            self.no_lm_head_reason = f"the checkpoint has no {' / '.join(self.lm_head_tensors.values())}"
        if self.no_lm_head_reason is not None:
            logger.debug("%s: no lm_head(): %s", self.lm_class.__name__, self.no_lm_head_reason)

    def transform_logits(self, logits: torch.Tensor) -> torch.Tensor:
        text = _text_config(self.config)
        if "logit_scale" in self._transforms:
            logits = logits * getattr(text, "logit_scale")
        if "logits_scaling" in self._transforms:
            logits = logits / getattr(text, "logits_scaling")
        cap = getattr(text, "final_logit_softcapping", None) if "final_logit_softcapping" in self._transforms else None
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits


def _logit_transforms(lm_class: type, head_name: str) -> tuple[tuple[str, ...], str | None]:
    """What ``lm_class.forward`` does to its head's output before it is returned as logits.

    Returns the transforms of :data:`_LOGIT_TRANSFORMS` it applies, and ``None``; or, when the
    forward computes the logits otherwise (the head reads something other than the base model's
    last hidden states, its call is not a plain assignment, or a later statement changes the
    logits in another way), the statement poolkit does not follow.
    """
    try:
        lines = [line.split("#", 1)[0].strip() for line in inspect.getsource(lm_class.forward).splitlines()]
    except (OSError, TypeError):
        return (), "its forward's source cannot be read"
    start = next((i for i, line in enumerate(lines) if f"self.{head_name}(" in line), None)
    if start is None:
        return (), f"its forward does not call self.{head_name}"
    call = re.fullmatch(rf"(\w+) = self\.{head_name}\(((\w+)(\[[^()]*\])?(\.to\((dtype=)?[\w.]+\))?)\)({_CASTS})?", lines[start])
    if call is None:
        return (), lines[start]
    var, hidden = call.group(1), call.group(3)
    output = rf"(\w+(\.last_hidden_state|\[0\])|{hidden})"
    for code in lines[:start]:  # the head must read the base model's output as it is
        if re.match(rf"{hidden}\b[^=]*=(?!=)", code) and not re.fullmatch(
            rf"{hidden} = ({output}|slice_logits_to_keep\({output}, \w+\))", code
        ):
            return (), code
    found: list[str] = []
    for code in lines[start + 1 :]:
        if code.startswith(("loss", "if labels", "return")):
            break
        if not re.match(rf"{var}\b[^=]*=(?!=)", code):
            continue
        kind = next((k for pattern, k in _KNOWN_EDITS if re.fullmatch(pattern.format(v=var), code)), None)
        if kind is None:
            return (), code
        found.append(kind)
    return tuple(t for t in _LOGIT_TRANSFORMS if t in found), None


#: What may follow the head call: casts, which change no value poolkit returns (fp32).
_CASTS = r"\.float\(\)|\.to\(torch\.float32\)|\.contiguous\(\)"
#: Statements of transformers' causal LMs that transform the logits (``{v}``) as poolkit does.
_KNOWN_EDITS = (
    (r"{v} = {v} \* self\.logit_scale", "logit_scale"),
    (r"{v} = {v} / self\.config\.(text_config\.)?logits_scaling", "logits_scaling"),
    (r"{v} = {v}(\.float\(\))? / self\.config\.(text_config\.)?final_logit_softcapping", "final_logit_softcapping"),
    (r"{v} = torch\.tanh\({v}\)", "final_logit_softcapping"),
    (r"{v} = {v} \* self\.config\.(text_config\.)?final_logit_softcapping", "final_logit_softcapping"),
)


def _singles(batch: PackedBatch) -> list[PackedBatch]:
    starts = batch.cu_seqlens.tolist()
    return [
        PackedBatch(
            batch.input_ids[a:b],
            [b - a],
            None if batch.token_type_ids is None else batch.token_type_ids[a:b],
        )
        for a, b in zip(starts[:-1], starts[1:])
    ]


def _task_heads(model: LoadedModel, keys: Collection[str]) -> frozenset[str]:
    """The tensors of a task model's heads when ``model``, a base model, reads that task model's
    checkpoint (a classifier's checkpoint, to embed): the ``keys`` outside the base-model prefix of
    a checkpoint that has one. A base model's own checkpoint has no prefix, so a tensor it does not
    use is no head; nor is one a task model does not use."""
    prefix = (getattr(model, "base_model_prefix", "") or "") + "."
    if prefix == "." or model is not model.base_model or not any(key.startswith(prefix) for key in keys):
        return frozenset()
    return frozenset(key for key in keys if not key.startswith(prefix))


def _describe_mismatch(entry: Any) -> str:
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        key, ckpt, model = entry
        return f"'{key}' is {tuple(ckpt)} in the checkpoint, {tuple(model)} in the model"
    return str(entry)


def is_decoder(config: PretrainedConfig) -> bool:
    """Whether a config's family is a decoder: ``is_decoder``, or a causal LM and no masked LM."""
    if getattr(config, "is_decoder", False):
        return True
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(_text_config(config), "model_type", None)
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


@functools.lru_cache(maxsize=None)
def _fallback_class(base: type[TransformersModel], hf_class: type) -> type[TransformersModel]:
    return type(
        f"Transformers{hf_class.__name__}",
        (base,),
        {
            "hf_class": hf_class,
            "default_pooler_config": {**base.default_pooler_config, **_POOLER_DEFAULTS.get(hf_class.__name__, {})},
            "default_pooling_type": _POOLING_DEFAULTS.get(hf_class.__name__, base.default_pooling_type),
            "__module__": __name__,
            "__doc__": f"{hf_class.__name__} run by transformers.\n\n{base.__doc__}",
        },
    )


@functools.lru_cache(maxsize=None)
def _causal_lm_class(hf_class: type, lm_class: type) -> type[TransformersModel]:
    return type(
        f"Transformers{lm_class.__name__}",
        (TransformersForCausalLM,),
        {
            "hf_class": hf_class,
            "lm_class": lm_class,
            "__module__": __name__,
            "__doc__": f"{lm_class.__name__} run by transformers.\n\n{TransformersForCausalLM.__doc__}",
        },
    )


def _transformers_class(name: str) -> type | None:
    """The transformers model class called ``name``, or ``None`` if there is none."""
    if not name.isidentifier() or name.startswith("_"):
        return None
    import transformers

    try:
        cls = getattr(transformers, name)
    except AttributeError:
        return None
    except Exception as exc:  # a class whose optional dependency is missing, say
        raise ModelLoadError(f"transformers has {name}, but it cannot be imported: {type(exc).__name__}: {exc}") from None
    return cls if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel) else None


def _base_class(name: str, config: PretrainedConfig) -> type:
    from transformers import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(config)]
    except (KeyError, ValueError):
        raise ModelLoadError(f"transformers has no base model for {name} (model_type '{config.model_type}')") from None


def _architecture_for(name: str, hf_class: type, config: PretrainedConfig) -> type[TransformersModel]:
    if name.endswith("ForSequenceClassification"):
        try:
            from transformers.modeling_layers import GenericForSequenceClassification as generic
        except ImportError:  # transformers 4
            generic = None
        if generic is not None and issubclass(hf_class, generic):
            return _fallback_class(TransformersDecoderForSequenceClassification, hf_class)
        return _fallback_class(TransformersForSequenceClassification, hf_class)
    if name.endswith("ForTokenClassification"):
        return _fallback_class(TransformersForTokenClassification, hf_class)
    if name.endswith(_CAUSAL_LM_SUFFIXES) and callable(getattr(hf_class, "get_output_embeddings", None)):
        return _causal_lm_class(_base_class(name, config), hf_class)
    if name.endswith(_BASE_SUFFIXES):
        return _fallback_class(TransformersModel, _base_class(name, config))
    if "For" not in name and not name.endswith("HeadModel"):  # a base model: DistilBertModel, T5EncoderModel
        return _fallback_class(TransformersModel, hf_class)
    raise ModelLoadError(
        f"{name} is a transformers task model that poolkit cannot pool; the transformers fallback serves "
        "base models, *ForSequenceClassification, *ForTokenClassification and language-model checkpoints. "
        f"To embed with its encoder, set hf_overrides={{'architectures': ['{_base_class(name, config).__name__}']}}"
    )


def _remote_model(config: PretrainedConfig) -> bool:
    """Whether ``config.json``'s ``auto_map`` points a model class (``AutoModel``, ``AutoModelFor...``)
    at remote code: that code replaces transformers' class of the same name and may compute
    something else, so the fallback does not stand in for it. A remote config or tokenizer alone
    (``AutoConfig``, ``AutoTokenizer``) leaves the model transformers' own: the fallback runs it,
    and the loader says the remote code was refused."""
    return any(str(key).startswith("AutoModel") for key in (getattr(config, "auto_map", None) or {}))


@hookimpl(trylast=True)
def poolkit_resolve_architecture(name, config):
    """Serve ``name`` with transformers when transformers itself implements it.

    Returns ``None`` for names transformers does not know and for configs whose model is remote
    code (:func:`_remote_model`), which poolkit never runs; the loader then explains. Raises
    :class:`ModelLoadError` for classes the fallback cannot feed (encoder-decoder or multimodal
    models, question answering heads, a config of another family).
    """
    if _remote_model(config):
        return None
    hf_class = _transformers_class(name)
    if hf_class is None:
        return None
    expected = getattr(hf_class, "config_class", None)
    if expected is not None and not isinstance(config, expected):
        raise ModelLoadError(
            f"{name} is transformers' class for model_type '{getattr(expected, 'model_type', '?')}', "
            f"but config.json has model_type '{getattr(config, 'model_type', None) or 'none'}'"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(f"{name} is an encoder-decoder model; the transformers fallback runs encoders and decoders only")
    if any(key in (getattr(type(config), "sub_configs", None) or {}) for key in _MULTIMODAL_SUBCONFIGS):
        raise ModelLoadError(f"{name} is a multimodal model; the transformers fallback runs text models only")
    arch = _architecture_for(name, hf_class, config)
    if "input_ids" not in _forward_parameters(arch.hf_class):
        raise ModelLoadError(f"{arch.hf_class.__name__} takes no input_ids; the transformers fallback runs text models only")
    return arch
