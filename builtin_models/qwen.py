"""Qwen2 and Qwen3 decoders running on packed batches, with their pooling heads.

Both are pre-RMSNorm decoders with rotary positions, grouped-query attention and SwiGLU
feed-forward layers; Qwen3 adds a per-head RMSNorm on queries and keys. Attention is causal
within each sequence, or bidirectional when the config says ``is_causal: false`` (gte-Qwen2
style embedders). The modules keep Hugging Face's parameter names, so checkpoints load by name,
except that each layer's q/k/v projections are fused into one ``qkv_proj`` matrix and its gate
and up projections into one ``gate_up_proj`` at load time: one matmul instead of three or two.

Heads: ``*ForSequenceClassification`` (``score`` on the last token), ``*ForTokenClassification``,
Qwen2 reward and process reward models (a ``score`` MLP on every token), LLM-as-reranker
checkpoints (Qwen3-Reranker) whose ``classifier_from_token`` words turn rows of the LM head into
a classifier, and the LM head of ``*ForCausalLM`` itself (``lm_head()``), which ``STEP`` process
rewards read.
"""

from __future__ import annotations

import re
from typing import Any, Callable, ClassVar, Collection, Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.architecture import Architecture
from poolkit.batch import PackedBatch
from poolkit.builtin_models.layers import (
    CausalLMHead,
    FusedLinear,
    RMSNorm,
    Rotary,
    TokenClassifier,
    activation_function,
    apply_rotary,
    fuse_projections,
    kernel,
    rotary_cos_sin,
    rotary_inv_freq,
)
from poolkit.config_checks import ConfigChecks
from poolkit.errors import ModelLoadError
from poolkit.hookspecs import hookimpl
from poolkit.weights import base_model_name, load_into

#: Checkpoint tensors the backbone does not use: heads of task models, rotary caches.
_UNUSED = re.compile(r"^(lm_head|score|classifier|qa_outputs|v_head)\.|\.rotary_emb\.")
#: Rotary types computed as transformers computes them (``ROPE_INIT_FUNCTIONS``). ``dynamic`` and
#: ``longrope`` are not: transformers rescales them by the longest sequence of the batch.
_ROPE_TYPES = ("default", "linear", "yarn", "llama3")
GLOBAL, SLIDING = "full_attention", "sliding_attention"
#: LLM-as-reranker conversions (vLLM's ``SEQ_CLS_LOAD_METHODS``).
FROM_2_WAY_SOFTMAX, NO_POST_PROCESSING = "from_2_way_softmax", "no_post_processing"
_ORIGINAL_QWEN3_RERANKER_TOKENS = ["no", "yes"]
#: The token id of ``<extra_0>``, the step tag of Qwen2.5-Math-PRM (vLLM's default ``step_tag_id``).
PRM_STEP_TAG_ID = 151651


def rotary_parameters(config: Any, head_dim: int) -> tuple[torch.Tensor, float]:
    """The rotary inverse frequencies (float32, ``[head_dim // 2]``) and the cos/sin scaling.

    Reads ``rope_parameters`` (transformers 5) or ``rope_theta`` / ``rope_scaling`` (older
    configs). Scaled types come from transformers' own ``ROPE_INIT_FUNCTIONS``, so they match it.

    Raises:
        ModelLoadError: a rotary type whose frequencies depend on the batch, or an unknown one.
    """
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in _ROPE_TYPES:
        raise ModelLoadError(
            f"unsupported rope_type '{kind}' for a Qwen model; poolkit supports {', '.join(_ROPE_TYPES)}"
        )
    if float(params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None) or 1.0)) != 1.0:
        raise ModelLoadError("partial_rotary_factor is not supported for Qwen models; rotary embeddings span the whole head")
    if kind == "default":
        theta = params.get("rope_theta", getattr(config, "rope_theta", None))
        if theta is None:
            theta = getattr(config, "default_theta", 10_000.0)
        return rotary_inv_freq(theta, head_dim), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    try:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[kind](config, None)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"cannot compute '{kind}' rotary embeddings from the config: {type(exc).__name__}: {exc}") from None
    if inv_freq.shape[0] * 2 != head_dim:
        raise ModelLoadError(f"'{kind}' rotary embeddings cover {inv_freq.shape[0] * 2} of the {head_dim} head dimensions")
    return inv_freq.float(), float(scaling)


def layer_types(config: Any) -> list[str]:
    """Each layer's attention: ``"full_attention"``, or ``"sliding_attention"`` with ``use_sliding_window``."""
    n = int(config.num_hidden_layers)
    types = getattr(config, "layer_types", None)
    if types:
        types = list(types)
        if len(types) != n or set(types) - {GLOBAL, SLIDING}:
            raise ModelLoadError(f"layer_types {types} must name '{GLOBAL}' or '{SLIDING}' once per layer ({n})")
    else:
        sliding = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", False) else None
        first = int(getattr(config, "max_window_layers", n))
        types = [SLIDING if sliding is not None and i >= first else GLOBAL for i in range(n)]
    if SLIDING in types and not getattr(config, "sliding_window", None):
        raise ModelLoadError("the config has sliding-attention layers but no sliding_window")
    return types


class QwenAttention(nn.Module):
    """Grouped-query self-attention within each sequence (causal unless the config says otherwise).

    ``qkv_proj`` holds the checkpoint's ``q_proj``, ``k_proj`` and ``v_proj`` one after the other.
    """

    def __init__(self, config: Any, qk_norm: bool, window: int | None, causal: bool) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(getattr(config, "num_key_value_heads", None) or self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ModelLoadError(
                f"num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads {self.num_kv_heads}"
            )
        self.head_dim = int(getattr(config, "head_dim", None) or hidden // self.num_heads)
        self.scale = self.head_dim**-0.5
        self.window = window
        self.causal = causal
        # Qwen2: biased q/k/v, unbiased output; Qwen3: ``attention_bias`` for all four.
        qkv_bias = bool(getattr(config, "attention_bias", False)) if qk_norm else True
        o_bias = bool(getattr(config, "attention_bias", False)) if qk_norm else False
        parts = {
            "q_proj": self.num_heads * self.head_dim,
            "k_proj": self.num_kv_heads * self.head_dim,
            "v_proj": self.num_kv_heads * self.head_dim,
        }
        self.qkv_proj = FusedLinear(hidden, parts, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=o_bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if qk_norm else None

    def forward(
        self, x: torch.Tensor, rotary: Rotary, batch: PackedBatch, attention: Callable, linear: Callable
    ) -> torch.Tensor:
        qkv = linear(x, self.qkv_proj.weight, self.qkv_proj.bias)
        q, k, v = qkv.split(list(self.qkv_proj.parts.values()), dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rotary
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            # Query head i reads key/value head i // groups, as transformers' repeat_kv.
            k = k.unsqueeze(2).expand(-1, -1, groups, -1).reshape(q.shape)
            v = v.unsqueeze(2).expand(-1, -1, groups, -1).reshape(q.shape)
        context = attention(q, k, v, batch, causal=self.causal, scale=self.scale, window=self.window)
        return linear(context.reshape(x.shape[0], -1), self.o_proj.weight, self.o_proj.bias)


class QwenMLP(nn.Module):
    """SwiGLU feed-forward: ``down_proj(act(gate) * up)``; ``gate_up_proj`` holds ``gate_proj`` then ``up_proj``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        parts = {"gate_proj": int(config.intermediate_size), "up_proj": int(config.intermediate_size)}
        self.gate_up_proj = FusedLinear(config.hidden_size, parts, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = activation_function(config.hidden_act)

    def forward(self, x: torch.Tensor, linear: Callable) -> torch.Tensor:
        gate, up = linear(x, self.gate_up_proj.weight, None).chunk(2, dim=-1)
        return linear(self.act(gate) * up, self.down_proj.weight, None)


class QwenDecoderLayer(nn.Module):
    """One pre-RMSNorm decoder layer."""

    def __init__(self, config: Any, qk_norm: bool, window: int | None, causal: bool) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = QwenAttention(config, qk_norm, window, causal)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = QwenMLP(config)

    def forward(
        self, x: torch.Tensor, rotary: Rotary, batch: PackedBatch, attention: Callable, linear: Callable
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rotary, batch, attention, linear)
        return x + self.mlp(self.post_attention_layernorm(x), linear)


class Qwen2Model(Architecture):
    """The Qwen2 decoder: packed token ids in, final-norm hidden states ``[T, H]`` out.

    Loads checkpoints of ``Qwen2Model`` itself and of Qwen2 task models (``Qwen2ForCausalLM``,
    ``Qwen2ForSequenceClassification``, ...), whose backbone tensors carry a ``model.`` prefix;
    ``lm_head`` is dropped (``*ForCausalLM`` keeps it for ``lm_head()``). Positions are rotary,
    counted from 0 in each sequence. Each token attends to the earlier tokens of its sequence, or
    to all of them when the config (or ``hf_overrides``) sets ``is_causal: false``. Embeddings
    pool the last token by default.

    Example:
        >>> model = Qwen2Model(transformers.Qwen2Config.from_pretrained(path))
        >>> model.load_weights(iter_tensors(checkpoint_files(path)))
        >>> hidden = model(PackedBatch.from_sequences([[9707, 1879], [14990]]))
    """

    default_pooling_type: ClassVar[str | None] = "LAST"
    uses_token_type_ids: ClassVar[bool] = False
    config_checks: ClassVar[ConfigChecks] = ConfigChecks(
        sizes=(
            "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
            "intermediate_size", "vocab_size", "max_position_embeddings",
        ),
        multiples=(("num_attention_heads", "num_key_value_heads"),),
        layers={"num_hidden_layers": r"(?:^|\.)layers\.(\d+)\."},
        shapes={
            "embed_tokens.weight": ("vocab_size", "hidden_size"),
            "layers.0.self_attn.q_proj.weight": (("num_attention_heads", "head_dim"), "hidden_size"),
            "layers.0.self_attn.k_proj.weight": (("num_key_value_heads", "head_dim"), "hidden_size"),
            "layers.0.mlp.gate_proj.weight": ("intermediate_size", "hidden_size"),
        },
    )
    #: Prefix of the backbone's tensors in task-model checkpoints (HF's ``base_model_prefix``).
    checkpoint_prefix: ClassVar[str] = "model."
    #: Checkpoint name prefixes of the task head this class loads (none for the bare backbone).
    head_prefixes: ClassVar[tuple[str, ...]] = ()
    #: Qwen3's per-head RMSNorm of queries and keys.
    qk_norm: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.causal = bool(getattr(config, "is_causal", True))
        sliding = getattr(config, "sliding_window", None)
        # transformers: a causal window sees ``sliding_window`` tokens, itself included; a
        # bidirectional one ``sliding_window`` tokens on each side.
        windows = {GLOBAL: None, SLIDING: None if sliding is None else int(sliding) - int(self.causal)}
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            QwenDecoderLayer(config, self.qk_norm, windows[t], self.causal) for t in layer_types(config)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        head_dim = self.layers[0].self_attn.head_dim if self.layers else config.hidden_size // config.num_attention_heads
        # A plain float32 tensor rather than a buffer, so that casting the model leaves it exact.
        self._inv_freq, self._rotary_scaling = rotary_parameters(config, head_dim)

    @classmethod
    def check_config(
        cls, config: Any, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        super().check_config(config, shapes, overridden)
        if not getattr(config, "head_dim", None):  # the heads split hidden_size between them
            ConfigChecks(multiples=(("hidden_size", "num_attention_heads"),)).check(config, shapes, overridden)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        attention = kernel(self, "varlen_attention", batch.device)
        linear = kernel(self, "linear_act", batch.device)
        x = F.embedding(batch.input_ids, self.embed_tokens.weight)
        rotary = self._rotary(batch, x.dtype)
        for layer in self.layers:
            x = layer(x, rotary, batch, attention, linear)
        return self.norm(x)

    def _rotary(self, batch: PackedBatch, dtype: torch.dtype) -> Rotary:
        """Each token's rotary ``cos`` and ``sin`` as ``dtype``, ``[T, 1, head_dim]`` (angles in float32)."""
        cos, sin = rotary_cos_sin(self._inv_freq, batch.positions, dtype, self._rotary_scaling)
        return cos.unsqueeze(1), sin.unsqueeze(1)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self._load(weights)

    def _load(self, weights: Iterable[tuple[str, torch.Tensor]], optional: Callable[[str], bool] = lambda n: False) -> None:
        named = ((self.parameter_name(name), tensor) for name, tensor in weights)
        fused = fuse_projections(self, ((n, t) for n, t in named if n is not None))
        load_into(self, fused, rename=lambda name: name, optional=optional)

    def parameter_name(self, checkpoint_name: str) -> str | None:
        """The Hugging Face base-model name of a checkpoint tensor, or ``None`` to skip it."""
        return base_model_name(checkpoint_name, self.checkpoint_prefix, self.head_prefixes, _UNUSED)


class Qwen3Model(Qwen2Model):
    """The Qwen3 decoder: Qwen2 with per-head ``q_norm`` / ``k_norm`` and ``attention_bias``.

    Qwen3-Embedding checkpoints (``Qwen3ForCausalLM`` with a sentence-transformers last-token
    pooling) load through ``Qwen3ForCausalLM``, which only reads its LM head for ``STEP`` rewards.
    """

    qk_norm: ClassVar[bool] = True


# -- heads -----------------------------------------------------------------------------------------


def is_qwen3_reranker_checkpoint(config: Any) -> bool:
    """An unmodified Qwen3-Reranker checkpoint: a Qwen3 causal LM whose name says so."""
    name = str(getattr(config, "name_or_path", "") or "").lower()
    archs = getattr(config, "architectures", None) or []
    return "qwen3-reranker" in name and "Qwen3ForCausalLM" in archs


def classifier_tokens(config: Any) -> tuple[list[str], str] | None:
    """The ``classifier_from_token`` words and ``method`` of an LLM-as-reranker config, or ``None``.

    ``is_original_qwen3_reranker: true`` means ``["no", "yes"]`` (unless given) and
    ``from_2_way_softmax``.

    Raises:
        ModelLoadError: the words or the method are missing or do not fit together.
    """
    tokens = getattr(config, "classifier_from_token", None)
    method = getattr(config, "method", None)
    # ``is_qwen3_reranker`` is vLLM's earlier name of ``is_original_qwen3_reranker``.
    original = getattr(config, "is_original_qwen3_reranker", False) or getattr(config, "is_qwen3_reranker", False)
    if original or is_qwen3_reranker_checkpoint(config):
        tokens = list(tokens or _ORIGINAL_QWEN3_RERANKER_TOKENS)
        method = FROM_2_WAY_SOFTMAX
    if not tokens:
        return None
    if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
        raise ModelLoadError(f"classifier_from_token must be a list of strings, got {tokens!r}")
    if method not in (FROM_2_WAY_SOFTMAX, NO_POST_PROCESSING):
        raise ModelLoadError(
            f"classifier_from_token needs method '{FROM_2_WAY_SOFTMAX}' or '{NO_POST_PROCESSING}' in the config, got {method!r}"
        )
    if method == FROM_2_WAY_SOFTMAX and len(tokens) != 2:
        raise ModelLoadError(
            f"method '{FROM_2_WAY_SOFTMAX}' needs exactly two classifier_from_token words [false, true], got {list(tokens)}"
        )
    return list(tokens), method


def token_id(tokenizer: Any, word: str) -> int:
    """The id of ``word`` as one token: the vocabulary entry, else its encoding if that is one token.

    Raises:
        ModelLoadError: the word is not a single token.
    """
    found = tokenizer.convert_tokens_to_ids(word)
    unk = getattr(tokenizer, "unk_token_id", None)
    if isinstance(found, int) and (found != unk or word == getattr(tokenizer, "unk_token", None)):
        return found
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise ModelLoadError(
            f"classifier_from_token word '{word}' is not one token of the tokenizer (it encodes to {len(ids)} tokens)"
        )
    return int(ids[0])


class _ScoreHead:
    """Mixin: a ``score`` Linear on the last token (``classify``) and on every token (``token_classify``).

    The weights come from the checkpoint's ``score`` tensors, or, for an LLM used as a reranker
    (``classifier_from_token`` + ``method`` in the config), from the LM head's rows of those
    tokens: ``from_2_way_softmax`` gives one output ``W[true] - W[false]`` (its sigmoid is the
    softmax of the two next-token logits), ``no_post_processing`` one output per token.
    """

    head_prefixes: ClassVar[tuple[str, ...]] = ("score.",)
    #: Whether the checkpoint carries ``score`` when the config names no classifier tokens.
    checkpoint_score: ClassVar[bool] = True

    @classmethod
    def configure(cls, config: Any, tokenizer: Any) -> None:
        """Look up the ``classifier_from_token`` ids and set ``num_labels`` to match.

        A Qwen3-Reranker declared the vLLM way (``is_original_qwen3_reranker``, or
        ``classifier_from_token``) scores the plain pair, as vLLM does: its prompt comes with a
        score template (``chat_template=``). One recognised by its name alone gets the model
        card's prompt (the ``qwen3_reranker`` template), which vLLM would not know to apply.
        """
        found = classifier_tokens(config)
        if found is None:
            return
        tokens, method = found
        original = getattr(config, "is_original_qwen3_reranker", False) or getattr(config, "is_qwen3_reranker", False)
        declared = original or getattr(config, "classifier_from_token", None)
        if original or is_qwen3_reranker_checkpoint(config):
            config.is_original_qwen3_reranker = True
            if not declared and getattr(config, "score_template", None) is None:
                config.score_template = "qwen3_reranker"
        config.classifier_from_token_ids = [token_id(tokenizer, t) for t in tokens]
        config.method = method
        config.num_labels = 1 if method == FROM_2_WAY_SOFTMAX else len(tokens)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        found = classifier_tokens(config)
        self.method = found[1] if found else None
        self.classifier_token_ids: list[int] | None = None
        if found is not None:
            ids = getattr(config, "classifier_from_token_ids", None)
            if not ids or len(ids) != len(found[0]):
                raise ModelLoadError(
                    "classifier_from_token needs the tokenizer's ids: call configure(config, tokenizer) before building the model"
                )
            self.classifier_token_ids = [int(i) for i in ids]
        if found is None and not self.checkpoint_score:
            self.score = None
        else:
            self.score = nn.Linear(self.hidden_size, self.num_labels, bias=True)
            nn.init.zeros_(self.score.bias)

    def sequence_head(self) -> nn.Module | None:
        return self.score

    def token_head(self) -> nn.Module | None:
        return self.score

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.classifier_token_ids is None:
            self._load(weights, optional=lambda name: name == "score.bias")
            return
        ids = self.classifier_token_ids
        captured: dict[str, torch.Tensor] = {}

        def lm_head_rows(stream: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in stream:
                if name == "lm_head.weight":
                    captured["rows"] = tensor[ids].float()
                elif not name.startswith("score."):
                    yield name, tensor

        self._load(lm_head_rows(weights), optional=lambda name: name.startswith("score."))
        rows = captured.get("rows")
        if rows is None:
            if not getattr(self.config, "tie_word_embeddings", False):
                raise ModelLoadError(
                    "checkpoint lacks weights for lm_head.weight, which classifier_from_token reads "
                    "(and tie_word_embeddings is off)"
                )
            rows = self.embed_tokens.weight.detach()[ids].float()
        weight = (rows[1] - rows[0]).unsqueeze(0) if self.method == FROM_2_WAY_SOFTMAX else rows
        with torch.no_grad():
            self.score.weight.copy_(weight)
            self.score.bias.zero_()


class Qwen2ForSequenceClassification(_ScoreHead, Qwen2Model):
    """A Qwen2 sequence classifier / reranker: last token -> ``score`` (no bias).

    The ``token_classify`` task applies ``score`` to every token, as vLLM does.
    """


class Qwen3ForSequenceClassification(_ScoreHead, Qwen3Model):
    """A Qwen3 sequence classifier / reranker: last token -> ``score``.

    Also the original Qwen3-Reranker with ``hf_overrides={"architectures":
    ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": true}``: the score is read off the LM head.
    """


class _LMHead(CausalLMHead):
    """Mixin: the LM head of a Qwen causal LM, ``lm_head.weight`` or the tied ``embed_tokens``."""

    def input_embedding_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight


class Qwen2ForCausalLM(_LMHead, _ScoreHead, Qwen2Model):
    """A Qwen2 language model served as an embedder, or, when its config names
    ``classifier_from_token`` and a ``method``, as a reranker built from the LM head's rows.

    Its LM head is :meth:`lm_head` (kept as loaded until read): with ``pooler_config``
    ``{"pooling_type": "STEP", "step_tag_id": ..., "returned_token_ids": [...]}`` the
    ``token_classify`` task (``LLM.reward``) returns the softmax of those logits at the step tags.
    """

    checkpoint_score: ClassVar[bool] = False


class Qwen3ForCausalLM(_LMHead, _ScoreHead, Qwen3Model):
    """A Qwen3 language model served as an embedder (Qwen3-Embedding), or, when its config names
    ``classifier_from_token`` and a ``method`` (Qwen3-Reranker), as a reranker; its LM head serves
    ``STEP`` process rewards as :class:`Qwen2ForCausalLM`'s does.
    """

    checkpoint_score: ClassVar[bool] = False


class _TokenScoreHead(TokenClassifier):
    """Mixin: HF's token classifier, ``score`` (with bias) on every token."""

    head_name: ClassVar[str] = "score"
    head_prefixes: ClassVar[tuple[str, ...]] = ("score.",)


class Qwen2ForTokenClassification(_TokenScoreHead, Qwen2Model):
    """A Qwen2 token classifier: ``score`` on every token."""


class Qwen3ForTokenClassification(_TokenScoreHead, Qwen3Model):
    """A Qwen3 token classifier: ``score`` on every token."""


class Qwen2ForRewardModel(Qwen2Model):
    """A Qwen2 reward model (Qwen2.5-Math-RM): ``score`` = Linear, ReLU, Linear on every token.

    One output per token through ``token_classify`` / ``LLM.reward`` (ALL pooling). As in vLLM the
    rewards are raw by default (``use_activation`` defaults to false for this architecture).
    """

    default_pooling_type: ClassVar[str | None] = None
    default_pooler_config: ClassVar[dict[str, Any]] = {"use_activation": False}
    head_prefixes: ClassVar[tuple[str, ...]] = ("score.",)
    #: Outputs of the score MLP, whatever the checkpoint's config says (vLLM forces it too).
    reward_labels: ClassVar[int] = 1

    @classmethod
    def configure(cls, config: Any, tokenizer: Any) -> None:
        config.num_labels = cls.reward_labels

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        hidden = self.hidden_size
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, self.reward_labels))

    @property
    def num_labels(self) -> int:
        return self.reward_labels

    def token_head(self) -> nn.Module:
        return self.score


class Qwen2ForProcessRewardModel(Qwen2ForRewardModel):
    """A Qwen2 process reward model (Qwen2.5-Math-PRM): the reward MLP with two outputs, softmaxed.

    Read with ``STEP`` pooling by default, keeping the rows of the step tag tokens
    (``<extra_0>``, id 151651 in Qwen2.5-Math-PRM; ``pooler_config`` may name another).
    """

    reward_labels: ClassVar[int] = 2
    default_token_pooling_type: ClassVar[str | None] = "STEP"
    default_pooler_config: ClassVar[dict[str, Any]] = {"step_tag_id": PRM_STEP_TAG_ID}

    @classmethod
    def configure(cls, config: Any, tokenizer: Any) -> None:
        config.num_labels = cls.reward_labels


@hookimpl
def poolkit_register_architectures(register):
    for cls in (
        Qwen2Model,
        Qwen3Model,
        Qwen2ForCausalLM,
        Qwen3ForCausalLM,
        Qwen2ForSequenceClassification,
        Qwen3ForSequenceClassification,
        Qwen2ForTokenClassification,
        Qwen3ForTokenClassification,
        Qwen2ForRewardModel,
        Qwen2ForProcessRewardModel,
    ):
        register(cls.__name__, cls)
