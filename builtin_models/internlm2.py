"""InternLM2 reward models (internlm/internlm2-1_8b-reward, internlm2-7b-reward, internlm2-20b-reward).

``InternLM2ForRewardModel`` is the InternLM2 decoder with a one-output ``v_head`` (a Linear,
no bias) on every token: ``LLM.reward`` / the ``token_classify`` task give each token's reward
(the last token's is the sequence's score), as vLLM serves it. Only remote code runs it on the
hub, and poolkit never runs that: InternLM2 is a Llama-shaped decoder (RMSNorm, SwiGLU,
grouped-query attention, rotary positions), so it runs here as poolkit's Llama
(:mod:`poolkit.builtin_models.decoders`), its checkpoints renamed as they load:

- ``model.tok_embeddings`` -> ``embed_tokens``; ``attention.wo`` -> ``self_attn.o_proj``;
  ``feed_forward.w1`` / ``w3`` / ``w2`` -> ``mlp.gate_proj`` / ``up_proj`` / ``down_proj``;
  ``attention_norm`` / ``ffn_norm`` -> ``input_layernorm`` / ``post_attention_layernorm``;
- ``attention.wqkv`` holds q, k and v grouped by key-value head: for each of the
  ``num_key_value_heads`` groups, its ``num_attention_heads / num_key_value_heads`` query heads,
  then its key head, then its value head (vLLM's ``split_qkv``). It is regrouped once, at load,
  into the fused ``qkv_proj`` (all queries, all keys, all values);
- ``config.json`` (``model_type: internlm2``, unknown to transformers) is read as a Llama
  config; ``bias`` (default true, as InternLM2's config class has it) gives ``wqkv`` and ``wo``
  biases; ``rope_theta`` and ``rope_scaling`` (``dynamic``, ``linear``) as Llama's.

As in vLLM, the model serves ``token_classify`` (ALL pooling) only, and its rewards go through the
default one-output activation, the sigmoid, unless ``use_activation=False`` asks for the raw
``v_head`` outputs (vLLM sets no raw default for this architecture, unlike ``Qwen2ForRewardModel``).
LoRA adapters may target ``wo``, ``w1``, ``w2`` and ``w3``; one on the grouped ``wqkv`` is refused.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar, Collection, Iterable, Iterator, Mapping

import torch
from torch import nn

from poolkit.contracts.capabilities import BorrowsConfig
from poolkit.contracts.config_checks import ConfigChecks, source
from poolkit.contracts.errors import InvalidRequest, ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.loading.weights import base_model_name

from .blocks.checks import decoder_checks
from .decoders.llama import LlamaModel

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import Tokenizer

#: Checkpoint tensors the reward model does not use: a causal LM's ``output`` head, rotary caches.
_UNUSED = re.compile(r"^output\.|\.rotary_emb\.")
#: Llama's module names and InternLM2's for them, after the ``model.`` prefix (``{i}``: a layer).
_MODULES = (
    ("embed_tokens", "tok_embeddings"),
    ("layers.{i}.self_attn.qkv_proj", "layers.{i}.attention.wqkv"),
    ("layers.{i}.self_attn.o_proj", "layers.{i}.attention.wo"),
    ("layers.{i}.mlp.gate_proj", "layers.{i}.feed_forward.w1"),
    ("layers.{i}.mlp.up_proj", "layers.{i}.feed_forward.w3"),
    ("layers.{i}.mlp.down_proj", "layers.{i}.feed_forward.w2"),
    ("layers.{i}.input_layernorm", "layers.{i}.attention_norm"),
    ("layers.{i}.post_attention_layernorm", "layers.{i}.ffn_norm"),
)


def _rules(pairs: Iterable[tuple[str, str]], prefix: str = "") -> tuple[tuple[re.Pattern[str], str], ...]:
    """``(pattern, replacement)`` per ``(source, target)`` module pair; a Llama ``qkv_proj`` also
    stands for the ``q/k/v_proj`` parts a message may name."""
    rules = []
    for old, new in pairs:
        pattern = re.escape(old + ".").replace(r"\{i\}", r"(\d+)").replace("qkv_proj", "(?:q|k|v|qkv)_proj")
        rules.append((re.compile("^" + pattern), prefix + new.replace("{i}", r"\1") + "."))
    return tuple(rules)


#: InternLM2's module names -> Llama's.
_RENAMES = _rules((theirs, ours) for ours, theirs in _MODULES)
#: Llama's parameter names -> the checkpoint's, for messages.
_CHECKPOINT_NAMES = _rules((*_MODULES, ("norm", "norm")), prefix="model.")
_WQKV = re.compile(r"^layers\.\d+\.self_attn\.qkv_proj\.(weight|bias)$")
_LACKS = "checkpoint lacks weights for "


def ungroup_qkv(tensor: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """``wqkv``'s rows (weight or bias) from InternLM2's grouped layout — per key-value head its
    query heads, its key head, its value head — to all queries, then all keys, then all values.

    Raises:
        ModelLoadError: the rows are not ``(num_heads + 2 * num_kv_heads) * head_dim``.
    """
    group = num_heads // num_kv_heads
    rows = (num_heads + 2 * num_kv_heads) * head_dim
    if tensor.shape[0] != rows:
        raise ModelLoadError(
            f"wqkv has {tensor.shape[0]} rows, but (num_attention_heads + 2 * num_key_value_heads) * head_dim "
            f"is ({num_heads} + 2 * {num_kv_heads}) * {head_dim} = {rows}"
        )
    grouped = tensor.reshape(num_kv_heads, group + 2, head_dim, *tensor.shape[1:])
    q, k, v = grouped[:, :group], grouped[:, group], grouped[:, group + 1]
    return torch.cat([t.reshape(-1, *tensor.shape[1:]) for t in (q, k, v)])


class InternLM2ForRewardModel(LlamaModel, BorrowsConfig):
    """An InternLM2 reward model: the Llama-shaped decoder under InternLM2's names, and ``v_head``
    (hidden -> 1, no bias) on every token, through ``token_classify`` / ``LLM.reward``.

    Example:
        >>> llm = LLM("internlm/internlm2-1_8b-reward")
        >>> llm.reward("Hello, my name is")[0].outputs.data  # [tokens, 1]
    """

    config_model_type: ClassVar[str | None] = "llama"
    default_pooling_type: ClassVar[str | None] = None
    default_token_pooling_type: ClassVar[str | None] = "ALL"
    classifier_prefixes: ClassVar[tuple[str, ...]] = ("v_head.",)
    config_checks: ClassVar[ConfigChecks] = decoder_checks(
        {
            "tok_embeddings.weight": ("vocab_size", "hidden_size"),
            "layers.0.attention.wo.weight": ("hidden_size", ("num_attention_heads", "head_dim")),
            "layers.0.feed_forward.w1.weight": ("intermediate_size", "hidden_size"),
            "v_head.weight": (1, "hidden_size"),
        },
        ("head_dim",),
    )
    attention_bias_field: ClassVar[tuple[str, bool]] = ("bias", True)

    @classmethod
    def mlp_bias(cls, config: PretrainedConfig) -> bool:
        return False

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        """One reward per token, whatever ``num_labels`` the config carries."""
        config.num_labels = 1

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        """The Llama checks, and ``wqkv``'s rows against the heads."""
        super().check_config(config, shapes, overridden)
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        rows = (heads + 2 * kv_heads) * cls.head_dim(config)
        fields = ("num_attention_heads", "num_key_value_heads", "head_dim")
        where = "hf_overrides" if any(f in overridden for f in fields) else source(fields[0], overridden)
        for name, shape in (shapes or {}).items():
            if name.endswith("layers.0.attention.wqkv.weight") and shape[0] != rows:
                raise ModelLoadError(
                    f"{where} (num_attention_heads + 2 * num_key_value_heads) * head_dim is ({heads} + 2 * {kv_heads}) * "
                    f"{cls.head_dim(config)} = {rows}, but the weights hold {shape[0]} ('{name}' has shape {tuple(shape)})"
                )

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.v_head = nn.Linear(self.hidden_size, 1, bias=False)

    @property
    def num_labels(self) -> int:
        return 1

    def token_classifier(self) -> nn.Module:
        return self.v_head

    def parameter_name(self, checkpoint_name: str) -> str | None:
        """A checkpoint tensor's name in this model (Llama's), or ``None`` to skip it."""
        name = base_model_name(checkpoint_name, self.checkpoint_prefix, self.classifier_prefixes, _UNUSED)
        if name is None:
            return None
        for pattern, replacement in _RENAMES:
            name, found = pattern.subn(replacement, name)
            if found:
                break
        return name

    def adapter_target(self, layer: str) -> tuple[str, int, int] | None:
        """Llama's rule for InternLM2's names; an adapter on the grouped ``wqkv`` is refused: its
        rows are regrouped here, and an adapter's would have to be too."""
        if layer.endswith("attention.wqkv"):
            raise InvalidRequest(
                f"LoRA adapters on InternLM2's fused {layer} are not supported (its rows group q, k and v "
                "per key-value head); adapt wo, w1, w2 or w3"
            )
        return None

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        try:
            self._load(self._ungrouped(weights))
        except ModelLoadError as exc:
            raise ModelLoadError(_in_checkpoint_names(str(exc))) from None

    def _ungrouped(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """The checkpoint's tensors, each ``wqkv`` (weight and bias) regrouped as ``qkv_proj`` holds them."""
        attention = self.layers[0].self_attn
        for name, tensor in weights:
            ours = self.parameter_name(name)
            if ours is not None and _WQKV.match(ours):
                tensor = ungroup_qkv(tensor, attention.num_heads, attention.num_kv_heads, attention.head_dim)
            yield name, tensor


def _in_checkpoint_names(message: str) -> str:
    """A "lacks weights for" message naming the checkpoint's tensors (``attention.wqkv`` once, not
    its q, k and v parts) rather than the model's; other messages as they are."""
    if not message.startswith(_LACKS):
        return message
    listed, more = message[len(_LACKS):], ""
    if " and " in listed:
        listed, _, rest = listed.partition(" and ")
        more = " and " + rest
    names = []
    for name in listed.split(", "):
        for pattern, replacement in _CHECKPOINT_NAMES:
            name, found = pattern.subn(replacement, name)
            if found:
                break
        if name not in names:
            names.append(name)
    return _LACKS + ", ".join(names) + more


@hookimpl
def poolkit_register_architectures(register):
    register("InternLM2ForRewardModel", InternLM2ForRewardModel)
