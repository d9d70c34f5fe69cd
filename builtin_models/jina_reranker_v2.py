"""jina-reranker-v2-base-multilingual: an XLM-RoBERTa cross-encoder saved under Jina's
flash-attention tensor names.

Jina publishes it as ``"architectures": ["XLMRobertaForSequenceClassification"]`` with no
``model_type``, ``"use_flash_attn": true`` and an ``auto_map`` into the repository's own remote code:

- ``configuration_xlm_roberta.py`` (``XLMRobertaFlashConfig``): the config keys read here, all of
  transformers' XLM-R config (``position_embedding_type: "absolute"``, ``max_position_embeddings``
  1026, ``type_vocab_size`` 1, ``layer_norm_eps``, ``pad_token_id`` 1, ``num_labels`` 1) plus
  ``use_flash_attn``, which only picks the attention kernel there;
- ``modeling_xlm_roberta.py``, ``embedding.py``, ``block.py``, ``mha.py``, ``mlp.py`` (the
  ``XLMRobertaForSequenceClassification`` it builds): word + learned absolute position (counted from
  ``pad_token_id + 1``, transformers' ``create_position_ids_from_input_ids``) + token type embeddings,
  ``emb_ln``, post-norm blocks of ``mixer.Wqkv`` (q, k, v stacked by rows), ``mixer.out_proj``,
  ``norm1``, ``mlp.fc1``, exact GELU, ``mlp.fc2``, ``norm2``, then ``classifier.dense``, tanh,
  ``classifier.out_proj`` on the ``<s>`` token; ``compute_score`` is the sigmoid of that logit.

That is transformers' XLM-R cross-encoder, names apart, so the model here is
:class:`~poolkit.builtin_models.bert.XLMRobertaForSequenceClassification` reading Jina's names: the
names are Jina's XLM-RoBERTa flash layout (:data:`~poolkit.builtin_models.jina.JINA_LAYOUT`, which
jina-embeddings-v3 shares), put where BERT's layout keeps each module, as vLLM's
``RobertaForSequenceClassification.jina_to_vllm_mapper`` does. Scores are the sigmoid of the logit
(one label), as Jina's ``compute_score`` and vLLM's score. The checkpoint's remote code never runs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Collection, Mapping

from poolkit.contracts.capabilities import ClaimsNames
from poolkit.contracts.config_checks import ConfigChecks, layers_held
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl

from .bert import XLMRobertaForSequenceClassification
from .blocks.checks import extend_checks
from .jina import JINA_LAYOUT
from .rotary_encoders.encoder import Layout

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: Where BERT's layout keeps each module of Jina's flash layout (the keys are :data:`JINA_LAYOUT`'s).
_BERT_MODULES = {
    "embeddings.norm": "embeddings.LayerNorm",
    "layers.{i}.attn.qkv": "encoder.layer.{i}.attention.qkv",
    "layers.{i}.attn.out": "encoder.layer.{i}.attention.output.dense",
    "layers.{i}.attn_norm": "encoder.layer.{i}.attention.output.LayerNorm",
    "layers.{i}.mlp.up": "encoder.layer.{i}.intermediate.dense",
    "layers.{i}.mlp.down": "encoder.layer.{i}.output.dense",
    "layers.{i}.mlp_norm": "encoder.layer.{i}.output.LayerNorm",
}
#: Jina's flash tensor names (``emb_ln``, ``encoder.layers.N.mixer.Wqkv``...) -> BERT's modules here.
FLASH_AS_BERT = Layout(prefix=JINA_LAYOUT.prefix, modules={_BERT_MODULES[ours]: theirs for ours, theirs in JINA_LAYOUT.modules.items()})
#: A layer's tensors in Jina's flash layout, and in transformers' (BERT's) layout.
_FLASH_LAYERS = r"(?:^|\.)encoder\.layers\.(\d+)\."
_BERT_LAYERS = r"(?:^|\.)encoder\.layer\.(\d+)\."


class XLMRobertaFlashForSequenceClassification(XLMRobertaForSequenceClassification, ClaimsNames):
    """jina-reranker-v2: XLM-R's cross-encoder (CLS, ``classifier`` dense, tanh, ``out_proj``; the
    sigmoid of its one logit as the score) loaded from Jina's flash-attention tensor names.

    Example:
        >>> llm = LLM("jinaai/jina-reranker-v2-base-multilingual")
        >>> llm.rerank("organic skincare for sensitive skin", ["aloe vera and chamomile", "bold makeup"])
    """

    #: jina-reranker-v2 as published: ``XLMRobertaForSequenceClassification`` with Jina's flash config
    #: (``use_flash_attn``, a key of ``XLMRobertaFlashConfig`` only), whose checkpoints carry Jina's names.
    claims: ClassVar[Mapping[str, Mapping[str, Any]]] = {"XLMRobertaForSequenceClassification": {"use_flash_attn": True}}
    config_checks: ClassVar[ConfigChecks] = extend_checks(
        dataclasses.replace(XLMRobertaForSequenceClassification.config_checks, layers={"num_hidden_layers": _FLASH_LAYERS}),
        shapes={
            "encoder.layers.0.mixer.Wqkv.weight": ((3, "hidden_size"), "hidden_size"),
            "encoder.layers.0.mlp.fc1.weight": ("intermediate_size", "hidden_size"),
        },
    )

    @classmethod
    def check_config(
        cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        """Also refuse a flash config over transformers' tensor names, naming the override that reads them."""
        if shapes is not None and not layers_held(shapes, _FLASH_LAYERS) and layers_held(shapes, _BERT_LAYERS):
            raise ModelLoadError(
                "config.json is Jina's XLM-RoBERTa flash config (use_flash_attn), but the weights carry transformers' "
                "names (encoder.layer.N), not Jina's (encoder.layers.N.mixer); load them with hf_overrides={'use_flash_attn': False}"
            )
        super().check_config(config, shapes, overridden)

    def parameter_name(self, checkpoint_name: str) -> str | None:
        """BERT's name of a checkpoint tensor under Jina's flash name (``emb_ln`` -> ``embeddings.LayerNorm``)."""
        name = super().parameter_name(checkpoint_name)
        return None if name is None else FLASH_AS_BERT.model_name(name)[0]

    def describe(self) -> dict[str, Any]:
        """``layout``: jina-reranker-v2's, and the config values it was recognised by."""
        names = ", ".join(getattr(self.config, "architectures", None) or []) or "none"
        flash = getattr(self.config, "use_flash_attn", None)
        return {"layout": {
            "value": "jina-reranker-v2 (Jina's XLM-RoBERTa flash-attention tensor names)",
            "source": f"config.json architectures {names}, use_flash_attn {flash}; tensors roberta.encoder.layers.N.mixer.Wqkv",
        }}


@hookimpl
def poolkit_register_architectures(register):
    register("XLMRobertaFlashForSequenceClassification", XLMRobertaFlashForSequenceClassification)
