"""Jina's XLM-RoBERTa with rotary positions: jina-embeddings-v3 with its task adapters, and
jina-colbert-v2.

Jina's "XLM-RoBERTa flash" (``position_embedding_type: "rotary"``) is the post-LayerNorm BERT of
:mod:`poolkit.builtin_models.rotary_encoders`: word and token-type embeddings, ``emb_ln``, then
per layer rotary self-attention (``mixer.Wqkv``, ``mixer.out_proj``, rotary on every head
dimension, base ``rotary_emb_base``, halves rotated), ``norm1``, a GELU feed-forward block
(``mlp.fc1``, ``mlp.fc2``, biases everywhere) and ``norm2``. poolkit never runs the checkpoint's
remote code; this follows its published definition, as vLLM's ``JinaRobertaModel`` does.

jina-embeddings-v3 (published as ``XLMRobertaModel`` with ``position_embedding_type: "rotary"``, which
this architecture claims; its remote code's class is ``XLMRobertaLoRA``) keeps one LoRA adapter per task on every linear and
embedding layer, saved as torch parametrizations (``<layer>.parametrizations.weight.original``,
``...weight.0.lora_A`` ``[tasks, r, in]`` and ``lora_B`` ``[tasks, out, r]``; an embedding's
``lora_A`` is ``[tasks, vocab, r]``, its ``lora_B`` ``[tasks, r, dim]``), scaled by
``lora_alpha / lora_rank``. vLLM merges the last (``text-matching``) into the weights; here the
base weights load as they are and the five adapters are the checkpoint's own LoRA adapters
(:meth:`task_adapters`, :mod:`poolkit.lora`), kept in memory once and mixed in one batch: a
request picks its task by prompt name (``prompt_name="retrieval.query"``, Jina's API ``task``),
whose instruction (``task_instructions``) comes first, as Jina's ``encode(task=...)`` does. A
request naming no task runs ``text-matching``, as vLLM does. Mean pooling.

jina-embeddings-v3 as transformers ships it (``jinaai/jina-embeddings-v3-hf``,
``JinaEmbeddingsV3Model``, ``model_type: jina_embeddings_v3``) is the same body and the same five
adapters, laid out otherwise: its ``model.safetensors`` keeps Jina's tensor names without the
parametrizations (transformers renames them to its modules on load), its rotary base is
``rope_parameters.rope_theta``, and each task's adapter is a PEFT adapter in a folder of its own
(``retrieval_query/``, ``retrieval_passage/``, ``separation/``, ``classification/``,
``text_matching/``: ``adapter_config.json`` and ``adapter_model.safetensors``) that names
transformers' modules (``layers.0.self_attn.q_proj``, ``embeddings.word_embeddings``). They are
the checkpoint's own adapters here too (:class:`JinaEmbeddingsV3Model`), named by Jina's task
names, mixed in one batch.

jina-colbert-v2 (``ColBERTJinaRobertaModel``, chosen with ``hf_overrides``) is the same body, its
token vectors through ``linear`` (ColBERT, scored by MaxSim).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Mapping

import torch
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.capabilities import ClaimsNames, TaskAdapters
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl

from .blocks.attention import attention_head_dim
from .blocks.adapters import peft_task_adapter
from .blocks.checks import encoder_checks
from .blocks.norms import post_norm
from .blocks.rotary import RotarySpec
from .colbert import _ColBERT
from .rotary_encoders.encoder import Layout, RotaryEmbeddings, RotaryEncoder, RotaryEncoderSpec

if TYPE_CHECKING:
    from transformers import PretrainedConfig

JINA_LAYOUT = Layout(
    prefix="roberta.",
    modules={
        "embeddings.norm": "emb_ln",
        "layers.{i}.attn.qkv": "encoder.layers.{i}.mixer.Wqkv",
        "layers.{i}.attn.out": "encoder.layers.{i}.mixer.out_proj",
        "layers.{i}.attn_norm": "encoder.layers.{i}.norm1",
        "layers.{i}.mlp.up": "encoder.layers.{i}.mlp.fc1",
        "layers.{i}.mlp.down": "encoder.layers.{i}.mlp.fc2",
        "layers.{i}.mlp_norm": "encoder.layers.{i}.norm2",
    },
)
#: Where transformers' ``JinaEmbeddingsV3Model`` keeps each module of this implementation: the
#: names its PEFT adapters give their layers (q, k and v apart, as pieces of ``qkv``).
HF_MODULES = Layout(
    prefix="roberta.",
    modules={
        "embeddings.norm": "embeddings.LayerNorm",
        "layers.{i}.attn.qkv": ("layers.{i}.self_attn.q_proj", "layers.{i}.self_attn.k_proj", "layers.{i}.self_attn.v_proj"),
        "layers.{i}.attn.out": "layers.{i}.self_attn.o_proj",
        "layers.{i}.attn_norm": "layers.{i}.post_attention_layernorm",
        "layers.{i}.mlp.up": "layers.{i}.mlp.fc1",
        "layers.{i}.mlp.down": "layers.{i}.mlp.fc2",
        "layers.{i}.mlp_norm": "layers.{i}.post_mlp_layernorm",
    },
)
#: jina-embeddings-v3's tasks in its ``lora_adaptations`` order, for a config that does not list them.
JINA_TASKS = ("retrieval.query", "retrieval.passage", "separation", "classification", "text-matching")
#: A parametrized tensor: its base weight, or one of its LoRA factors.
_PARAMETRIZED = re.compile(r"^(?P<layer>.+)\.parametrizations\.weight\.(?:(?P<original>original)|0\.lora_(?P<which>[AB]))$")
#: The feed-forward activations of Jina's MLP: the tanh GELU for these names, else the exact one.
_TANH_GELU = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")


class JinaEmbeddings(RotaryEmbeddings):
    """The embeddings with their tables called as modules, so that task adapters on them add their rows."""

    def forward(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.word_embeddings(batch.input_ids)
        if self.token_type_embeddings is not None:
            types = batch.token_type_ids if batch.token_type_ids is not None else torch.zeros_like(batch.input_ids)
            x = x + self.token_type_embeddings(types)
        return post_norm(self, x, None, self.norm)


class JinaRobertaModel(RotaryEncoder, TaskAdapters, ClaimsNames):
    """Jina's rotary XLM-RoBERTa (jina-embeddings-v3's ``XLMRobertaLoRA``): packed token ids in,
    last-layer hidden states out, the task adapters of the checkpoint as LoRA adapters.

    Example:
        >>> llm = LLM("jinaai/jina-embeddings-v3")
        >>> llm.embed(["how do rotary positions work?"], prompt_name="retrieval.query")
    """

    layout: ClassVar[Layout] = JINA_LAYOUT
    #: jina-embeddings-v3 as published: ``"architectures": ["XLMRobertaModel"]`` with rotary positions
    #: (vLLM's ``RobertaEmbeddingModel`` builds its ``JinaRobertaModel`` on that value, and its
    #: ``JinaRobertaModelConfig`` is keyed on ``XLMRobertaModel``).
    claims: ClassVar[Mapping[str, Mapping[str, Any]]] = {"XLMRobertaModel": {"position_embedding_type": "rotary"}}
    embeddings_class: ClassVar[type[nn.Module]] = JinaEmbeddings
    default_pooling_type: ClassVar[str | None] = "MEAN"
    config_checks: ClassVar[ConfigChecks] = encoder_checks(r"(?:^|\.)encoder\.layers\.(\d+)\.")

    @classmethod
    def spec(cls, config: PretrainedConfig) -> RotaryEncoderSpec:
        position = getattr(config, "position_embedding_type", "rotary")
        if position not in ("rotary", "rope"):
            raise ModelLoadError(f"position_embedding_type '{position}' is not Jina's rotary XLM-RoBERTa; use XLMRobertaModel")
        hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
        head_dim = attention_head_dim(hidden, heads)
        act = str(getattr(config, "hidden_act", "gelu"))
        return RotaryEncoderSpec(
            hidden_size=hidden, num_layers=int(config.num_hidden_layers), num_heads=heads,
            intermediate_size=int(config.intermediate_size), vocab_size=int(config.vocab_size),
            type_vocab_size=int(getattr(config, "type_vocab_size", 1) or 0),
            max_positions=int(config.max_position_embeddings), norm_eps=float(getattr(config, "layer_norm_eps", 1e-5)),
            rotary=RotarySpec(dim=int(getattr(config, "rotary_emb_dim", None) or head_dim), theta=_rope_theta(config)),
            activation="gelu_pytorch_tanh" if act in _TANH_GELU else "gelu", gated=False,
            qkv_bias=True, out_bias=True, up_bias=True, down_bias=True,
        )

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self._tasks = list(getattr(config, "lora_adaptations", None) or [])
        self._lora_scaling = float(getattr(config, "lora_alpha", 1)) / float(getattr(config, "lora_rank", 1) or 1)
        self._factors: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        #: vLLM's choice for a request without a task: the last adaptation (``text-matching``).
        self.default_task_adapter = self._tasks[-1] if self._tasks else None

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        factors: dict[str, dict[str, torch.Tensor]] = {}

        def base_weights(stream: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in stream:
                found = _PARAMETRIZED.match(name)
                if found is None:
                    yield name, tensor
                elif found["original"]:
                    yield found["layer"] + ".weight", tensor
                else:
                    factors.setdefault(found["layer"], {})[found["which"]] = tensor

        super().load_weights(base_weights(weights))
        self._factors = self._task_factors(factors)

    def _task_factors(self, factors: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Per task, each layer's ``(A [r, in], B [out, r])`` in PEFT's orientation, scaled."""
        if not factors:
            return {}
        if not self._tasks:
            raise ModelLoadError("the checkpoint has LoRA parametrizations but config.json names no lora_adaptations")
        out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {task: {} for task in self._tasks}
        for layer, pair in factors.items():
            if set(pair) != {"A", "B"} or pair["A"].shape[0] != len(self._tasks) or pair["B"].shape[0] != len(self._tasks):
                raise ModelLoadError(f"the LoRA parametrization of {layer} does not hold lora_A and lora_B for the {len(self._tasks)} lora_adaptations")
            embedding = ".embeddings." in f".{layer}."
            for i, task in enumerate(self._tasks):
                a, b = pair["A"][i].float(), pair["B"][i].float()
                if embedding:  # x(W + A B): rows of A [vocab, r] picked by the ids, then B [r, dim]
                    a, b = a.T, b.T
                out[task][layer] = (a.contiguous(), (b * self._lora_scaling).contiguous())
        return out

    def task_adapters(self) -> Mapping[str, Mapping[str, tuple[torch.Tensor, torch.Tensor]]]:
        return self._factors

    def adapter_target(self, layer: str) -> tuple[str, int, int] | None:
        """The embedding tables too (jina's adapters cover them), under their own names."""
        name = layer.removeprefix(self.layout.prefix)
        if name in ("embeddings.word_embeddings", "embeddings.token_type_embeddings"):
            return name, 0, 1
        return super().adapter_target(layer)


class JinaEmbeddingsV3Model(JinaRobertaModel):
    """jina-embeddings-v3 as transformers ships it (``jinaai/jina-embeddings-v3-hf``): Jina's body
    from its original tensor names, each task's adapter from its PEFT folder.

    The adapters are the checkpoint's own (:meth:`task_adapters`), named by Jina's task names
    (``retrieval.query``: folder ``retrieval_query``), so a request names its task as with the
    original layout (``prompt_name``, Jina's API ``task``), and tasks mix in one batch. A request
    naming no task runs ``text-matching``, as for the original layout. Tasks whose folder the
    checkpoint lacks are not served.

    Example:
        >>> llm = LLM("jinaai/jina-embeddings-v3-hf")
        >>> llm.embed(["how do rotary positions work?"], prompt_name="retrieval.query")
    """

    claims: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self._tasks = list(getattr(config, "lora_adaptations", None) or JINA_TASKS)
        self.default_task_adapter = None  # set once the adapters are read

    def load_companion_files(self, model_dir: Path, allow_pickle: bool) -> None:
        """Read each task's PEFT adapter from its folder (the task's name, ``.`` and ``-`` as ``_``)."""
        for task in self._tasks:
            folder = model_dir / re.sub(r"[.-]", "_", task)
            if (folder / "adapter_config.json").is_file():
                self._factors[task] = peft_task_adapter(folder, task, allow_pickle)
        default = self._tasks[-1] if self._tasks else None
        self.default_task_adapter = default if default in self._factors else None

    def adapter_target(self, layer: str) -> tuple[str, int, int] | None:
        """A layer its adapters name by transformers' module names (``layers.0.self_attn.q_proj``)."""
        name = layer.removeprefix(HF_MODULES.prefix)
        ours, index, count = HF_MODULES.model_name(name + ".weight")
        if ours != name + ".weight":
            return ours.removesuffix(".weight"), index, count
        return super().adapter_target(layer)


def _rope_theta(config: PretrainedConfig) -> float:
    """The rotary base: Jina's ``rotary_emb_base``, or transformers' ``rope_parameters.rope_theta``
    (jina-embeddings-v3-hf); only the default rotary (no scaling) is Jina's.

    Raises:
        ModelLoadError: ``rope_parameters`` asks for a scaled rotary.
    """
    base = getattr(config, "rotary_emb_base", None)
    if base:
        return float(base)
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ModelLoadError(f"rope_parameters rope_type '{rope['rope_type']}' is not Jina's rotary XLM-RoBERTa (only 'default' is)")
    return float(rope.get("rope_theta") or 10000.0)


class ColBERTJinaRobertaModel(_ColBERT, JinaRobertaModel):
    """jina-colbert-v2: Jina's rotary XLM-RoBERTa, every token vector through ``linear``."""

    default_pooling_type: ClassVar[str | None] = "CLS"
    claims: ClassVar[Mapping[str, Mapping[str, Any]]] = {}  # chosen with hf_overrides only


@hookimpl
def poolkit_register_architectures(register):
    register("XLMRobertaLoRA", JinaRobertaModel)
    register("JinaRobertaModel", JinaRobertaModel)  # vLLM's name
    register("JinaEmbeddingsV3Model", JinaEmbeddingsV3Model)
    register("ColBERTJinaRobertaModel", ColBERTJinaRobertaModel)
