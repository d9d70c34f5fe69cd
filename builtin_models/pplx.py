"""pplx-embed-v1 (Perplexity: ``perplexity-ai/pplx-embed-v1-0.6b``, ``-4b``): a Qwen3 body run
bidirectionally, mean pooling, and the publisher's int8 quantizer, read from the files as published;
none of the checkpoint's code runs.

What is read from each published file:

- ``config.json``: ``architectures: ["PPLXQwen3Model"]``, the Qwen3 sizes (``head_dim`` given, and not
  ``hidden_size / num_attention_heads``: 128 with 1024 / 16 heads, and with 2560 / 32), and
  ``use_bidirectional_attention: true``. Its ``model_type`` (``bidirectional_pplx_qwen3``) and
  ``auto_map`` name the publisher's ``configuration.py`` (a ``Qwen3Config`` under that name) and
  ``modeling.py``, which are never run.
- ``modeling.py`` (``PPLXQwen3Model``), ported here: transformers' ``Qwen3Model`` with every layer's
  ``is_causal`` switched off and a mask that only hides padding, so each token attends to its whole
  sequence whatever the config says; a config saying ``use_bidirectional_attention: false``
  contradicts it and is refused.
- ``model.safetensors``: ``Qwen3Model``'s tensors, without a prefix.
- ``modules.json``: ``Transformer``, ``1_Pooling`` (mean; read by poolkit's sentence-transformers
  reader), then ``st_quantize.FlexibleQuantizer`` on the pooled vector, which this module implements
  (:class:`FlexibleQuantizer`) as the ``embed`` task's last step (:class:`QuantizedEmbeddingHead`);
  ``1_Pooling/config.json``'s ``word_embedding_dimension`` must be the hidden size.
- ``st_quantize.py`` (``FlexibleQuantizer``): its default, ``quantization="int8"``, is
  ``clamp(round(tanh(x) * 127), -128, 127)``, so the embeddings are unnormalised integers (the model
  card: compare them by cosine similarity). The other two values of that per-call argument (``binary``:
  the signs as ±1; ``ubinary``: those bits packed) are not offered.

No prompts or instructions (the card: none), no Dense module, no matryoshka widths declared.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Collection, Mapping, Sequence

import torch
from torch import nn

from poolkit.contracts.capabilities import RunsSTModules
from poolkit.contracts.config_checks import source
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.plugins.manager import registry

from .qwen import Qwen3Model

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.architecture import LoadedModel, TaskSpec
    from poolkit.contracts.batch import PackedBatch
    from poolkit.contracts.checkpoint import Checkpoint
    from poolkit.contracts.params import PoolingParams
    from poolkit.contracts.pooling import Head

#: The publisher's quantizer as ``modules.json`` names it (the class of its ``st_quantize.py``).
QUANTIZER = "st_quantize.FlexibleQuantizer"


class FlexibleQuantizer(nn.Module):
    """``st_quantize.FlexibleQuantizer`` at its default, ``quantization="int8"``
    (``Int8TanhQuantizer``): ``tanh``, scaled to 127, rounded, clamped to int8's range; values stay
    floats, as sentence-transformers returns them."""

    qmin: ClassVar[int] = -128
    qmax: ClassVar[int] = 127

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(torch.tanh(x) * self.qmax), self.qmin, self.qmax)


class QuantizedEmbeddingHead:
    """The ``embed`` task's head with the quantizer after pooling, where sentence-transformers runs it.

    The task's own head pools and cuts each request's width (``dimensions``) with its activation off;
    the quantizer works element by element, so cutting first changes nothing; then a request's
    activation, when on, applies to the quantized vector, as sentence-transformers'
    ``normalize_embeddings`` does after the modules.
    """

    def __init__(self, head: Head, quantizer: nn.Module, activation: Callable[[torch.Tensor], torch.Tensor], use_activation: bool) -> None:
        self.head = head
        self.quantizer = quantizer
        self.activation = activation
        self.use_activation = use_activation

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence[PoolingParams]) -> torch.Tensor | list[torch.Tensor]:
        if params and all(p is params[0] for p in params):  # one request's parameters: one copy, one setting
            raw = [params[0].model_copy(update={"use_activation": False})] * len(params)
        else:
            raw = [p.model_copy(update={"use_activation": False}) for p in params]
        pooled = self.head(hidden, batch, raw)
        activate = [self.use_activation if p.use_activation is None else p.use_activation for p in params]
        if isinstance(pooled, torch.Tensor) and len(set(activate)) == 1:
            quantized = self.quantizer(pooled)
            return self.activation(quantized) if activate[0] else quantized
        rows = [self.quantizer(row) for row in pooled]
        return [self.activation(row) if on else row for row, on in zip(rows, activate)]


class PPLXQwen3Model(Qwen3Model, RunsSTModules):
    """pplx-embed-v1: the Qwen3 body attending both ways, mean pooling, and, when ``modules.json``
    ends in the publisher's ``FlexibleQuantizer``, its int8 values as the embeddings (unnormalised,
    as sentence-transformers gives them, unless a request or ``pooler_config`` asks for
    ``use_activation``). Without sentence-transformers files the embeddings are the mean of the
    hidden states, L2-normalised as the ``embed`` task does by default.

    Example:
        >>> llm = poolkit.LLM("perplexity-ai/pplx-embed-v1-0.6b")
        >>> vector = llm.embed(["Scientists explore the universe driven by curiosity."])[0].outputs.embedding
        >>> len(vector), all(v == round(v) and -128 <= v <= 127 for v in vector)
        (1024, True)
    """

    default_pooling_type: ClassVar[str | None] = "MEAN"
    #: The sentence-transformers module types this architecture runs itself (:class:`RunsSTModules`).
    st_modules: ClassVar[frozenset[str]] = frozenset({QUANTIZER})

    @classmethod
    def is_causal(cls, config: PretrainedConfig) -> bool:
        return False

    @classmethod
    def check_config(cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()) -> None:
        """The Qwen3 checks; the per-head width the tensors have, also where the config leaves
        ``head_dim`` out (then ``hidden_size / num_attention_heads``, never the published one); and
        the publisher's ``modeling.py``, which attends both ways: a config that says otherwise
        contradicts its architecture."""
        super().check_config(config, shapes, overridden)
        norm = (shapes or {}).get("layers.0.self_attn.q_norm.weight")
        if norm is not None and not getattr(config, "head_dim", None) and tuple(norm) != (cls.head_dim(config),):
            raise ModelLoadError(
                f"{source('head_dim', overridden)} gives no head_dim, so heads are hidden_size / num_attention_heads = "
                f"{cls.head_dim(config)} wide, but the checkpoint's layers.0.self_attn.q_norm.weight is {tuple(norm)}"
            )
        if getattr(config, "use_bidirectional_attention", None) is False:
            raise ModelLoadError(
                "PPLXQwen3Model attends both ways (the publisher's modeling.py), but the config says use_bidirectional_attention: false"
            )

    @classmethod
    def inspect_checkpoint(cls, config: PretrainedConfig, checkpoint: Checkpoint) -> list[str]:
        """Read the sentence-transformers pipeline: the quantizer after the Pooling module, whose
        width must be the hidden size. ``config.pplx_quantizer`` says whether the quantizer runs."""
        text = checkpoint.read_text("modules.json")
        modules = _json(text, "modules.json") if text is not None else []
        types = [str(m.get("type", "")) for m in modules]
        pooling = next((i for i, t in enumerate(types) if t.rsplit(".", 1)[-1] == "Pooling"), None)
        quantizer = types.index(QUANTIZER) if QUANTIZER in types else None
        if quantizer is not None and (pooling is None or quantizer < pooling):
            raise ModelLoadError(f"modules.json runs {QUANTIZER} before any Pooling module; it quantizes the pooled vector")
        if pooling is not None:
            folder = str(modules[pooling].get("path", ""))
            text = checkpoint.read_text(f"{folder}/config.json")
            width = _json(text, f"{folder}/config.json").get("word_embedding_dimension") if text is not None else None
            if width is not None and int(width) != int(config.hidden_size):
                raise ModelLoadError(
                    f"{folder}/config.json says word_embedding_dimension {width}, but config.json's hidden_size is {config.hidden_size}"
                )
        config.pplx_quantizer = quantizer is not None
        return []

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.quantizer = FlexibleQuantizer() if getattr(config, "pplx_quantizer", False) else None

    def describe(self) -> dict[str, Any]:
        """``layout``: the published pipeline recognised, with the quantizer or without the
        sentence-transformers files."""
        if self.quantizer is not None:
            return {"layout": {"value": "pplx-embed-v1 (bidirectional Qwen3, mean pooling, FlexibleQuantizer int8)",
                               "source": f"config.json architectures PPLXQwen3Model; modules.json {QUANTIZER}"}}
        return {"layout": {"value": "pplx-embed-v1 (bidirectional Qwen3, mean pooling; no quantizer in modules.json)",
                           "source": "config.json architectures PPLXQwen3Model"}}

    def task_head(self, task: TaskSpec, model: LoadedModel) -> Head | None:
        """``embed`` with the quantizer after the task's pooling, when the checkpoint ships it."""
        if task.name != "embed" or self.quantizer is None:
            return None
        head = task.build(model)
        if head is None:
            return None
        activation = registry("activation").get(model.pooler_config.activation_fn or "normalize")
        return QuantizedEmbeddingHead(head, self.quantizer, activation, model.use_activation().value)


def _json(text: str, name: str) -> dict | list:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{name} is not valid JSON: {exc.msg}") from None


@hookimpl
def poolkit_register_architectures(register):
    register("PPLXQwen3Model", PPLXQwen3Model)
