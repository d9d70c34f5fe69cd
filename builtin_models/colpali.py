"""ColVision retrievers: ``ColQwen2ForRetrieval`` and ``ColPaliForRetrieval`` as multi-vector models.

Both read a document page as an image and a query as text, run a vision-language backbone over
the prompt, project every token's hidden state to ``embedding_dim`` (``embedding_proj_layer``,
with bias) and L2-normalise it: one vector per token, served as ``token_embed`` and scored by
MaxSim (``late-interaction``), as transformers' ``score_retrieval`` scores them. Their prompts
(the query prefix and augmentation, the page's visual prompt) are the ``colqwen2`` and ``colpali``
IO processors' (:mod:`poolkit.io_processors.paligemma`).

- ``ColQwen2ForRetrieval``: poolkit's Qwen2-VL (:mod:`poolkit.builtin_models.qwen_vl`) over the
  ``vlm_config``. transformers runs its decoder without multimodal rotary positions (every token,
  image tokens too, at its plain position), so the ``colqwen2`` processor gives plain positions.
- ``ColPaliForRetrieval``: PaliGemma — a SigLIP vision tower without its pooling head, the
  ``multi_modal_projector`` (linear) into a Gemma decoder whose embeddings are scaled and the
  image features are not; positions count from 1, and every token attends to its whole prompt
  (PaliGemma's prefix: transformers' processors mark every token of a ColPali prompt as prefix).

Checkpoints load in transformers 5's layout (``vlm.visual.*``, ``vlm.language_model.*``;
``vlm.vision_tower.*``, ``vlm.multi_modal_projector.*``) and the published ones (vidore's ``-hf``
checkpoints: ``vlm.model.*``, ``vlm.language_model.model.*``, ``vision_tower.vision_model.*``);
``lm_head`` is not read.
"""

from __future__ import annotations

import re
from typing import Any, Callable, ClassVar, Collection, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.builtin_models.decoders import GemmaModel
from poolkit.builtin_models.dual_encoder import Encoder, VisionEmbeddings, dense_attention, sub_config
from poolkit.builtin_models.layers import fp32_layer_norm, fuse_projections, linear
from poolkit.builtin_models.qwen_vl import Qwen2VLForConditionalGeneration
from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.loading.weights import load_into
from poolkit.plugins.lookup import kernel_for

#: The projection to the retrieval space, read by the retriever itself.
PROJECTION = "embedding_proj_layer."


def _vlm_config(cls: type, config: Any) -> Any:
    vlm = getattr(config, "vlm_config", None)
    if vlm is None:
        raise ModelLoadError(f"the {cls.__name__} config has no vlm_config")
    return vlm


def _check_embedding_dim(cls: type, config: Any) -> None:
    dim = getattr(config, "embedding_dim", None)
    if not isinstance(dim, int) or dim < 1:
        raise ModelLoadError(f"the {cls.__name__} config's embedding_dim must be a positive integer, got {dim!r}")


def _project(hidden: torch.Tensor, layer: nn.Linear, linear_act: Callable) -> torch.Tensor:
    """Every token's vector in the retrieval space: projected, then L2-normalised (in float32)."""
    projected = linear(hidden, layer, linear_act)
    return F.normalize(projected.float(), dim=-1).to(projected.dtype)


def _without_vlm(name: str) -> str:
    return name[4:] if name.startswith("vlm.") else name


class RetrievalHead:
    """What both retrievers are: a ``token_embed`` model of text and images scored by MaxSim, whose
    outputs are ``embedding_dim`` wide and whose positions are its backbone's (``vlm_config``)."""

    default_pooling_type: ClassVar[str | None] = None
    input_modalities: ClassVar[tuple[str, ...]] = ("text", "image")
    pooling_tasks: ClassVar[frozenset[str] | None] = frozenset({"token_embed"})
    score_type: ClassVar[str | None] = "late-interaction"
    config: Any

    @property
    def hidden_size(self) -> int:
        return int(self.config.embedding_dim)

    @property
    def max_positions(self) -> int | None:
        n = getattr(self.config.vlm_config.text_config, "max_position_embeddings", None)
        return int(n) if n else None

    @property
    def num_labels(self) -> int:
        return 0


class ColQwen2ForRetrieval(RetrievalHead, Qwen2VLForConditionalGeneration):
    """ColQwen2: Qwen2-VL's hidden states projected and normalised, one vector per token.

    Example:
        >>> llm = LLM("vidore/colqwen2-v1.0-hf")
        >>> pages = llm.encode([{"prompt": "", "multi_modal_data": {"image": "page.png"}}], pooling_task="token_embed")
    """

    media_processor: ClassVar[str | None] = "colqwen2"

    def __init__(self, config: Any) -> None:
        vlm = _vlm_config(type(self), config)
        super().__init__(vlm)
        self.config = config
        self.embedding_proj_layer = nn.Linear(int(vlm.text_config.hidden_size), int(config.embedding_dim))

    @classmethod
    def check_config(
        cls, config: Any, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        vlm = _vlm_config(cls, config)
        super().check_config(vlm, None, ())
        _check_embedding_dim(cls, config)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        hidden = super().forward(batch)
        return _project(hidden, self.embedding_proj_layer, kernel_for(self, "linear_act", batch.device))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        projection: list[tuple[str, torch.Tensor]] = []

        def backbone() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                name = _without_vlm(name)
                if name.startswith(PROJECTION):
                    projection.append((name, tensor))
                else:
                    yield name, tensor

        super().load_weights(backbone())
        load_into(self.embedding_proj_layer, projection, rename=lambda n: n[len(PROJECTION):])


class PrefixGemmaModel(GemmaModel):
    """Gemma whose tokens attend to their whole sequence: a PaliGemma prompt that is all prefix."""

    @classmethod
    def is_causal(cls, config: Any) -> bool:
        return False


class SiglipVisionTower(nn.Module):
    """PaliGemma's vision tower: SigLIP's patch embeddings, encoder and post-LayerNorm, one row per
    patch (no pooling head)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.embeddings = VisionEmbeddings(config, class_token=False, patch_bias=True)
        self.encoder = Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=float(config.layer_norm_eps))

    def forward(self, pixel_values: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        x = self.encoder(self.embeddings(pixel_values), dense_attention, linear_act)
        return fp32_layer_norm(x, self.post_layernorm)


class ColPaliForRetrieval(RetrievalHead, Architecture):
    """ColPali: PaliGemma's hidden states projected and normalised, one vector per token.

    Example:
        >>> llm = LLM("vidore/colpali-v1.3-hf")
        >>> queries = llm.encode(["what is the revenue in 2023?"], pooling_task="token_embed")
    """

    media_processor: ClassVar[str | None] = "colpali"
    config_checks: ClassVar[ConfigChecks] = ConfigChecks(
        sizes=tuple(
            "vlm_config." + f
            for f in (
                "text_config.hidden_size", "text_config.num_hidden_layers", "text_config.num_attention_heads",
                "text_config.vocab_size", "vision_config.hidden_size", "vision_config.num_hidden_layers",
                "vision_config.num_attention_heads", "vision_config.image_size", "vision_config.patch_size",
            )
        ),
        multiples=(("vlm_config.vision_config.hidden_size", "vlm_config.vision_config.num_attention_heads"),),
    )

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        vlm = _vlm_config(type(self), config)
        text = vlm.text_config
        vision = sub_config(vlm, "vision_config", "PaliGemma", "gelu_pytorch_tanh")
        self.language_model = PrefixGemmaModel(text)
        self.vision_tower = SiglipVisionTower(vision)
        self.multi_modal_projector = nn.Module()
        self.multi_modal_projector.linear = nn.Linear(int(vision.hidden_size), int(text.hidden_size))
        self.embedding_proj_layer = nn.Linear(int(text.hidden_size), int(config.embedding_dim))
        self.image_token_id = int(vlm.image_token_id)
        self.vocab_size = int(text.vocab_size)

    @classmethod
    def check_config(
        cls, config: Any, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()
    ) -> None:
        vlm = _vlm_config(cls, config)
        for name in ("text_config", "vision_config"):
            if getattr(vlm, name, None) is None:
                raise ModelLoadError(f"the {cls.__name__} vlm_config has no {name}")
        kind = getattr(vlm.text_config, "model_type", None)
        if kind != "gemma":
            raise ModelLoadError(
                f"{cls.__name__} runs PaliGemma's Gemma decoder; a '{kind}' text model (PaliGemma 2) is not supported"
            )
        if int(getattr(vlm.vision_config, "projection_dim", vlm.text_config.hidden_size)) != int(vlm.text_config.hidden_size):
            raise ModelLoadError(
                f"the vision projection_dim {vlm.vision_config.projection_dim} must equal the text hidden_size {vlm.text_config.hidden_size}"
            )
        super().check_config(config, None, overridden)
        _check_embedding_dim(cls, config)
        GemmaModel.check_config(vlm.text_config, None, ())

    # -- the forward pass ----------------------------------------------------------------------

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        lm = self.language_model
        ids = batch.input_ids
        if self.image_token_id >= self.vocab_size:  # an image token outside the vocabulary looks up row 0
            ids = ids.masked_fill(ids == self.image_token_id, 0)
        x = lm.embed(ids)
        media = batch.extras.get("media")
        linear_act = kernel_for(self, "linear_act", batch.device)
        if media is not None and any(m is not None for m in media):
            x = self._merge_images(x, batch, media, linear_act)
        hidden = lm.decode(x, batch, lm.rotary(batch.positions + 1, x.dtype))  # PaliGemma counts positions from 1
        return _project(hidden, self.embedding_proj_layer, linear_act)

    def _merge_images(self, x: torch.Tensor, batch: PackedBatch, media: list[dict | None], linear_act: Callable) -> torch.Tensor:
        """The embeddings with each ``<image>`` row replaced by its image's projected patch feature."""
        starts = batch.cu_seqlens.tolist()
        pixels, rows = [], []
        for i, m in enumerate(media):
            if m is None or "image_pixels" not in m:
                continue
            a, b = starts[i], starts[i + 1]
            pixels.append(m["image_pixels"])
            rows.append(a + torch.nonzero(batch.input_ids[a:b] == self.image_token_id).flatten())
        if not pixels:
            return x
        patches = self.vision_tower(torch.cat(pixels), linear_act)
        features = linear(patches, self.multi_modal_projector.linear, linear_act).flatten(0, 1)
        index = torch.cat(rows)
        if index.numel() != features.shape[0]:
            raise ModelLoadError(f"{index.numel()} image tokens for {features.shape[0]} image features")
        return x.index_copy(0, index, features.to(x.dtype))

    # -- weights -------------------------------------------------------------------------------

    _VISION = re.compile(r"^vision_tower\.(?:vision_model\.)?")
    _LANGUAGE = re.compile(r"^language_model\.")

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        own: list[tuple[str, torch.Tensor]] = []
        vision: list[tuple[str, torch.Tensor]] = []
        language: list[tuple[str, torch.Tensor]] = []
        for name, tensor in weights:
            name = _without_vlm(name)
            if name.startswith("model."):
                name = name[len("model."):]
            if name.startswith("lm_head."):
                continue
            for pattern, found in ((self._LANGUAGE, language), (self._VISION, vision)):
                seen = pattern.match(name)
                if seen:
                    found.append((name[seen.end():], tensor))
                    break
            else:
                own.append((name, tensor))
        load_into(self.vision_tower, fuse_projections(self.vision_tower, vision), rename=lambda n: n)
        load_into(self, own, rename=lambda n: n, optional=lambda n: n.startswith(("language_model.", "vision_tower.")))
        self.language_model.load_weights(language)


@hookimpl
def poolkit_register_architectures(register):
    register("ColQwen2ForRetrieval", ColQwen2ForRetrieval)
    register("ColPaliForRetrieval", ColPaliForRetrieval)
