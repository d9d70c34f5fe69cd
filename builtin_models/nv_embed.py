"""NV-Embed (nvidia/NV-Embed-v2): a Mistral body run bidirectionally, then
latent-attention pooling, computed as the publisher's remote code computes it; that code never runs.

What is read of the publisher's files:

- ``config.json`` (``model_type: nvembed``, written for ``configuration_nvembed.py``): ``architectures``
  ``["NVEmbedModel"]``; ``text_config``, a ``MistralConfig`` dump (``BidirectionalMistralConfig``),
  read as transformers' Mistral config; ``latent_attention_config``, whose fields the published file
  leaves to ``LatentAttentionConfig``'s defaults (:data:`LATENT_DEFAULTS`: 512 latents, 8 heads of
  4096 features, widths 4096, ``output_normalize``); ``is_mask_instruction`` and ``padding_side``
  (``true`` and ``right``: the instruction is left out of pooling).
- the weights (``modeling_nvembed.py``'s module names): the body under ``embedding_model.``
  (MistralModel's names), the pooling under ``latent_attention_model.``: ``latents``,
  ``cross_attend_blocks.0`` (``norm``, ``norm_context``, ``fn.to_q``, ``fn.to_kv``, ``fn.to_out``) and
  ``cross_attend_blocks.1`` (``norm``, ``fn.net.0``, ``fn.net.2``).
- the tokenizer, Mistral's, with ``</s>`` after every prompt: ``NVEmbedModel.encode`` appends the
  EOS token to every input (``input_transform_func`` with ``always_add_eos``), as candle's port does.

The computation: ``BidirectionalMistralModel`` runs every layer over the whole prompt under a
padding-only mask, neither causal nor windowed, so the body is poolkit's bidirectional Llama stack
(a Mistral without its window is a Llama). ``LatentAttentionModel`` then changes each token's state
on its own: the state (LayerNorm ``norm``) attends to the latents (LayerNorm ``norm_context``) —
queries ``to_q`` of the state, keys and values ``to_kv`` of the latents, ``num_cross_heads`` heads of
``cross_dim_head`` features, ``to_out`` — plus the state; then a GEGLU feed-forward on its LayerNorm
(``net.0`` to eight times the width, ``a * gelu(gate)`` of its two halves, ``net.2`` back), plus its input.
These states are mean-pooled over the prompt's tokens but the instruction's (BOS and ``</s>``
included) and L2-normalised (``output_normalize``); ``encode`` (``token_embed``) returns them per token.

Instructions come first in the prompt, as the model card writes queries: ``Instruct: {task}\\nQuery:
{text}``. The publisher's ``encode(texts, instruction=...)`` leaves out of pooling as many leading
tokens as ``tokenizer.tokenize(instruction)`` has — BOS and the instruction up to ``Query:``, the
instruction's final space joining the text's first token. Here a prompt that begins ``Instruct:`` is
pooled from the token after its first ``\\nQuery:`` (:meth:`NVEmbedModel.pool_start`), the same
token; any other prompt (a passage, which the model card embeds with no instruction) pools every token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Collection, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.capabilities import SkipsInstruction
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.loading.hf_config import one_line
from poolkit.loading.weights import load_into, warn_unused
from poolkit.plugins.lookup import kernel_for

from .blocks.dual_encoder import dense_attention
from .blocks.linear import linear
from .blocks.mlp import GatedMLP
from .blocks.norms import at_least_float32, fp32_layer_norm
from .blocks.quantize import Quantizable
from .decoders.llama import LlamaBidirectionalModel

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import Tokenizer

#: ``LatentAttentionConfig``'s defaults (``configuration_nvembed.py``), which NV-Embed's
#: ``config.json`` relies on: its ``latent_attention_config`` names only its ``model_type``.
LATENT_DEFAULTS: Mapping[str, Any] = {
    "num_latents_value": 512, "num_cross_heads": 8, "output_normalize": True, "hidden_dim": 4096, "latent_dim": 4096, "cross_dim_head": 4096,
}
#: ``text_config.model_type`` values read as the bidirectional Mistral (``configuration_nvembed.py``'s
#: ``BIDIR_MISTRAL_TYPE``, and Mistral's own).
TEXT_MODEL_TYPES = ("bidir_mistral", "mistral", None)
#: The model card's instruction: how it begins, and what ends it.
INSTRUCTION_START, INSTRUCTION_END = "Instruct:", "\nQuery:"
#: The checkpoint prefixes of the body and of the pooling (``NVEmbedModel``'s attributes).
TEXT_PREFIX, LATENT_PREFIX = "embedding_model.", "latent_attention_model."

_L = "latent_attention_config."
_BLOCK = LATENT_PREFIX + "cross_attend_blocks."
_HEADS = (_L + "num_cross_heads", _L + "cross_dim_head")


def read_sub_configs(config: PretrainedConfig) -> None:
    """Make ``config.text_config`` transformers' Mistral config and ``config.latent_attention_config``
    a dict with :data:`LATENT_DEFAULTS` filled in, in place; a config read already is left as it is.

    Raises:
        ModelLoadError: ``text_config`` is missing, of another model type, or not a valid Mistral config.
    """
    from transformers import AutoConfig, MistralConfig

    text = getattr(config, "text_config", None)
    if text is None:
        raise ModelLoadError("the NVEmbedModel config has no text_config")
    if not isinstance(text, MistralConfig):
        raw = dict(text) if isinstance(text, dict) else text.to_dict()
        kind = raw.pop("model_type", None)
        if kind not in TEXT_MODEL_TYPES:
            raise ModelLoadError(f"a '{kind}' text_config is not supported: NVEmbedModel runs a bidirectional Mistral (bidir_mistral)")
        try:
            config.text_config = AutoConfig.for_model("mistral", **raw)
        except Exception as exc:
            raise ModelLoadError(f"the config's text_config does not make a valid 'mistral' config: {one_line(exc)}") from None
    latent = getattr(config, "latent_attention_config", None) or {}
    config.latent_attention_config = {**LATENT_DEFAULTS, **(dict(latent) if isinstance(latent, dict) else latent.to_dict())}


class CrossAttention(nn.Module):
    """``Attention`` of ``modeling_nvembed.py``: each token's state attends to the latents, with
    ``to_q`` (the states), ``to_kv`` (the latents, keys then values) and ``to_out``, none biased."""

    def __init__(self, width: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.to_q = nn.Linear(width, heads * head_dim, bias=False)
        self.to_kv = nn.Linear(width, 2 * heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, width, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        q = linear(x, self.to_q, linear_act).unflatten(-1, (self.heads, self.head_dim))
        k, v = linear(context, self.to_kv, linear_act).unflatten(-1, (2, self.heads, self.head_dim)).unbind(-3)
        attended = dense_attention(q[None], k[None].to(q.dtype), v[None].to(q.dtype))[0]
        return linear(attended.flatten(-2), self.to_out, linear_act)


class PreNorm(nn.Module):
    """``PreNorm`` of ``modeling_nvembed.py``: a LayerNorm of the input (``norm``) and, for the
    cross-attention, of the latents it reads (``norm_context``), before ``fn``."""

    def __init__(self, width: int, fn: nn.Module, context: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.norm_context = nn.LayerNorm(width) if context else None
        self.fn = fn


class FeedForward(nn.Module):
    """``FeedForward`` of ``modeling_nvembed.py``: GEGLU (``net.0``, the second half the gate, exact
    GELU), then ``net.2``; biased, four times the width inside."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = GatedMLP(width, 4 * width, "gelu", ("0", "2"), (True, True), gate_first=False)


class LatentAttention(nn.Module):
    """``LatentAttentionModel`` of ``modeling_nvembed.py`` before its pooling: each token's state
    through the cross-attention to the ``latents`` and the feed-forward layer, each with a residual.

    Its two widths (``latent_dim``, ``hidden_dim``) are one: the published code norms the token
    states with ``latent_dim`` and the latents with ``hidden_dim`` (checked at load).
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__()
        width = int(settings["latent_dim"])
        self.latents = nn.Parameter(torch.zeros(int(settings["num_latents_value"]), width))
        attention = CrossAttention(width, int(settings["num_cross_heads"]), int(settings["cross_dim_head"]))
        self.cross_attend_blocks = nn.ModuleList([PreNorm(width, attention, context=True), PreNorm(width, FeedForward(width), context=False)])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[T, width]`` token states in, ``[T, width]`` out (in at least float32)."""
        linear_act = kernel_for(self, "linear_act", hidden.device)
        cross, ff = self.cross_attend_blocks
        x = at_least_float32(hidden)
        latents = fp32_layer_norm(self.latents, cross.norm_context)
        x = x + cross.fn(fp32_layer_norm(x, cross.norm), latents, linear_act).float()
        return x + ff.fn.net(fp32_layer_norm(x, ff.norm), linear_act).float()


class NVEmbedModel(Quantizable, Architecture, SkipsInstruction):
    """NV-Embed: the bidirectional Mistral ``embedding_model``, the ``latent_attention_model`` on each
    token, the mean over the tokens after the instruction, L2-normalised.

    Example:
        >>> llm = LLM("nvidia/NV-Embed-v2")
        >>> query = "Instruct: Given a question, retrieve passages that answer the question\\nQuery: "
        >>> llm.embed([query + "are judo throws allowed in wrestling?", "Judo throws are allowed in freestyle wrestling."])
    """

    default_pooling_type: ClassVar[str | None] = "MEAN"
    config_checks: ClassVar[ConfigChecks] = ConfigChecks(
        sizes=tuple(_L + name for name in ("num_latents_value", "num_cross_heads", "hidden_dim", "latent_dim", "cross_dim_head")),
        shapes={
            LATENT_PREFIX + "latents": (_L + "num_latents_value", _L + "latent_dim"),
            _BLOCK + "0.fn.to_q.weight": (_HEADS, _L + "latent_dim"),
            _BLOCK + "0.fn.to_kv.weight": ((2, *_HEADS), _L + "hidden_dim"),
            _BLOCK + "0.fn.to_out.weight": (_L + "latent_dim", _HEADS),
            _BLOCK + "1.fn.net.0.weight": ((8, _L + "latent_dim"), _L + "latent_dim"),
        },
    )

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        """Read the sub-configs; find the instruction's first and last tokens in the tokenizer's
        vocabulary (``config.nv_embed_instruction``) and make the tokenizer end every prompt with
        ``</s>``, as the publisher's ``encode`` does.

        Raises:
            ModelLoadError: the tokenizer has no EOS token, or splits the instruction's markers
                differently inside a prompt than alone.
        """
        read_sub_configs(config)
        config.vocab_size = int(config.text_config.vocab_size)
        if tokenizer is None:
            return
        if tokenizer.eos_token_id is None:
            raise ModelLoadError("NV-Embed ends every prompt with the tokenizer's EOS token (</s>), and this tokenizer has none")
        _append_eos(tokenizer)

        def ids(text: str) -> list[int]:
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

        start, head, whole = ids(INSTRUCTION_START), ids(INSTRUCTION_START + " a"), ids(INSTRUCTION_START + " a" + INSTRUCTION_END)
        if head[: len(start)] != start or whole[: len(head)] != head or len(whole) == len(head):
            raise ModelLoadError(f"this tokenizer splits NV-Embed's instruction markers {INSTRUCTION_START!r} / {INSTRUCTION_END!r} differently inside a prompt")
        config.nv_embed_instruction = {"bos": tokenizer.bos_token_id, "start": start, "end": whole[len(head):]}

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        """The latent attention's sizes against each other, the text model's and its tensors; the
        text model's config against its tensors (the decoder's checks, under ``embedding_model.``)."""
        read_sub_configs(config)
        latent, width = config.latent_attention_config, config.text_config.hidden_size
        if not latent["latent_dim"] == latent["hidden_dim"] == width:
            fields = (_L + "latent_dim", _L + "hidden_dim", "text_config.hidden_size")
            where = "hf_overrides" if any(name in overridden for name in fields) else "config.json"
            raise ModelLoadError(
                f"{where} latent_attention_config latent_dim {latent['latent_dim']} and hidden_dim {latent['hidden_dim']} must both be "
                f"text_config.hidden_size {width}: NV-Embed's latent attention reads the text model's states at both "
                "(fields config.json leaves out are LatentAttentionConfig's defaults)"
            )
        super().check_config(config, shapes, overridden)
        text_shapes = None if shapes is None else {n[len(TEXT_PREFIX):]: s for n, s in shapes.items() if n.startswith(TEXT_PREFIX)}
        text_overridden = {name.removeprefix("text_config.") for name in overridden if name.startswith("text_config.")}
        try:
            LlamaBidirectionalModel.check_config(config.text_config, text_shapes, text_overridden)
        except ModelLoadError as exc:
            raise ModelLoadError(f"text_config: {exc}") from None

    def __init__(self, config: PretrainedConfig) -> None:
        read_sub_configs(config)
        super().__init__(config)
        self.embedding_model = LlamaBidirectionalModel(config.text_config)
        self.latent_attention_model = LatentAttention(config.latent_attention_config)
        markers = getattr(config, "nv_embed_instruction", None)
        masks = bool(getattr(config, "is_mask_instruction", True)) and getattr(config, "padding_side", "right") == "right"
        self._instruction = markers if masks else None
        if not config.latent_attention_config["output_normalize"]:
            self.default_pooler_config = {"use_activation": False}

    @property
    def size_config(self) -> PretrainedConfig:
        """The text model's config gives the width and the context."""
        return self.config.text_config

    def describe(self) -> dict[str, Any]:
        """``layout``: NV-Embed's, with its latent attention and how instructions are pooled."""
        latent, config = self.config.latent_attention_config, self.config
        instruction = "'Instruct: ...\\nQuery:' left out of pooling" if self._instruction else "instructions pooled"
        return {
            "layout": {
                "value": f"NV-Embed (bidirectional Mistral, latent attention: {latent['num_latents_value']} latents, "
                f"{latent['num_cross_heads']} heads; {instruction}; </s> after every prompt)",
                "source": "config.json architectures NVEmbedModel, text_config, latent_attention_config, "
                f"is_mask_instruction {getattr(config, 'is_mask_instruction', True)}, padding_side {getattr(config, 'padding_side', 'right')}",
            }
        }

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return self.latent_attention_model(self.embedding_model(batch))

    def pool_start(self, token_ids: Sequence[int]) -> int:
        """Where pooling starts: after the first ``\\nQuery:`` of a prompt that begins (after BOS)
        with ``Instruct:``; else 0."""
        if self._instruction is None:
            return 0
        ids = list(token_ids)
        start, end = self._instruction["start"], self._instruction["end"]
        first = 1 if ids[:1] == [self._instruction["bos"]] else 0
        if ids[first : first + len(start)] != start:
            return 0
        return max(_end_of(ids, end, first + len(start)), 0)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        latent: list[tuple[str, torch.Tensor]] = []
        other: list[str] = []

        def text() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name.startswith(TEXT_PREFIX):
                    yield name[len(TEXT_PREFIX):], tensor
                elif name.startswith(LATENT_PREFIX):
                    latent.append((name[len(LATENT_PREFIX):], tensor))
                else:
                    other.append(name)

        self.embedding_model.load_weights(text())
        load_into(self.latent_attention_model, latent, rename=lambda name: name)
        warn_unused(other, type(self).__name__)


def _append_eos(tokenizer: Tokenizer) -> None:
    """Make ``tokenizer`` put its EOS token after every text it encodes with special tokens (after
    what it adds already: BOS), unless it does."""
    from tokenizers import processors

    probe = list(tokenizer("a")["input_ids"])
    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    if probe[-1:] == [eos_id]:
        return
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    lead = probe[:1] == [bos_id] and bos_id is not None
    special = [(bos, bos_id), (eos, eos_id)] if lead else [(eos, eos_id)]
    single = f"{bos} $A {eos}" if lead else f"$A {eos}"
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=f"{single} $B:1 {eos}:1", special_tokens=special)


def _end_of(ids: list[int], marker: list[int], start: int) -> int:
    """The index just after the first ``marker`` in ``ids`` at or after ``start``, or -1."""
    i = start
    while True:
        try:
            i = ids.index(marker[0], i)
        except ValueError:
            return -1
        if ids[i : i + len(marker)] == marker:
            return i + len(marker)
        i += 1


@hookimpl
def poolkit_register_architectures(register):
    register("NVEmbedModel", NVEmbedModel)
