"""What the vision-language families (Qwen-VL, LLaVA-NeXT, the ColVision retrievers) share.

A vision-language model reads prompts of text and media. Its media processor (the family's
``processor`` module, named by :attr:`poolkit.Architecture.media_processor`) turns each image or
video into a run of placeholder tokens and puts the pixels in :attr:`Prompt.media`; the forward
pass embeds the tokens, runs the batch's media through the vision tower and puts one feature in
each placeholder's row (:func:`merge_multimodal_embeddings`, vLLM's name for it), then runs the
decoder over the whole prompt. This module holds that scatter, the model's view of the text config
its decoder is built from (:class:`VisionLanguageModel`), the split of a checkpoint's tensor names
by the part of the model they belong to (:class:`CheckpointLayout`, vLLM's weights mapper), the
two-layer feed-forward blocks the towers and projectors are made of, the config checks of a
decoder beside a ViT (:func:`vit_checks`), and what the families' pixel pre-processing shares.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping, Sequence

import torch
from torch import nn

from poolkit.contracts.architecture import Architecture
from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.config_checks import ConfigChecks
from poolkit.contracts.errors import InvalidRequest, ModelLoadError

from .linear import activation_function, fused_activation, linear

if TYPE_CHECKING:
    from transformers import PretrainedConfig

#: OpenAI CLIP's normalisation, the default of Qwen2-VL's and LLaVA-NeXT's processors.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: The part of :meth:`CheckpointLayout.split` that holds the tensors of no part, under their full names.
UNMATCHED = "unmatched"

Weights = list[tuple[str, torch.Tensor]]


def to_rgb(image: Any) -> Any:
    """The image as RGB, transparency composited onto white (as transformers converts)."""
    if image.mode == "RGB":
        return image
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def vit_checks(decoder: str, *sizes: str, **checks: Any) -> ConfigChecks:
    """The config checks of a decoder (its config under ``decoder``: ``text_config``) beside a ViT
    vision tower (``vision_config``): their sizes, then the family's own ``sizes``; the tower's heads
    dividing its width and its patches its image; the family's other ``checks`` (:class:`ConfigChecks` fields)."""
    return ConfigChecks(
        sizes=tuple(f"{decoder}.{name}" for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"))
        + tuple(
            f"vision_config.{name}"
            for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size", "patch_size")
        )
        + sizes,
        multiples=(
            ("vision_config.hidden_size", "vision_config.num_attention_heads"),
            ("vision_config.image_size", "vision_config.patch_size"),
        ),
        **checks,
    )


class VisionLanguageModel(Architecture):
    """Base of the vision-language architectures: a decoder built from the config's
    ``text_config`` and a vision tower from its ``vision_config``; the width and the context the
    engine asks for are the decoder's."""

    takes_adapters: ClassVar[bool] = True

    @property
    def text_config(self) -> Any:
        """The decoder's config."""
        return self.config.text_config

    @property
    def size_config(self) -> Any:
        """The decoder's config gives the sizes (:attr:`hidden_size`, :attr:`max_positions`)."""
        return self.text_config

    def adapter_target(self, layer: str) -> tuple[str, int, int] | None:
        """LoRA adapters apply to the decoder (``language_model``): a checkpoint layer of its part
        of the :attr:`checkpoint_layout` under the decoder's names (a projection of a fused layer
        as its piece); one of the vision tower or the projector is refused.

        Raises:
            InvalidRequest: the adapter targets a layer outside the decoder.
        """
        layout = getattr(self, "checkpoint_layout", None)
        language = getattr(self, "language_model", None)
        if layout is None or language is None:
            return None
        parts = layout.split([(layer + ".weight", None)])
        part = next((name for name, found in parts.items() if found), UNMATCHED)
        if part != "language":
            raise InvalidRequest(
                f"LoRA on {type(self).__name__}'s {part if part != UNMATCHED else 'other'} layers ({layer}) is not supported; "
                "adapters apply to the language model"
            )
        name = language.parameter_name(parts["language"][0][0])
        if name is None:
            return "", 0, 1
        path = name.removesuffix(".weight")
        parent, _, leaf = path.rpartition(".")
        holder = language.get_submodule(parent) if parent else language
        for child, module in holder.named_children():
            pieces = getattr(module, "parts", None)
            if pieces and leaf in pieces:
                return ".".join(p for p in ("language_model", parent, child) if p), list(pieces).index(leaf), len(pieces)
        return f"language_model.{path}", 0, 1

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """The decoder over the prompt's token embeddings, the rows of each image's placeholder token
        (``image_token``) replaced by its features (:meth:`image_features_of`), in order. A sequence
        may be part of a prompt (shared prefixes, :class:`~poolkit.contracts.capabilities.MediaPlaceholders`):
        its media then have pixels only where it holds the placeholders."""
        lm = self.language_model
        x = lm.embed(batch.input_ids)
        media = batch_media(batch)
        found = placeholder_rows(batch, media, {"image": self.image_token}) if media is not None else []
        if found:
            x = merge_multimodal_embeddings(x, [rows for _, _, rows in found], self.image_features_of(found), "image")[0]
        return lm.decode(x, batch, lm.batch_rotary(batch, x.dtype))

    def image_features_of(self, found: list[tuple[dict, Any, Any]]) -> torch.Tensor:
        """``[features, hidden]`` of the images of :func:`placeholder_rows`'s ``found`` sequences
        (each ``(media, sequence, rows)``), one after another, for :meth:`forward`."""
        raise NotImplementedError

    @classmethod
    def require_sub_configs(cls, config: PretrainedConfig, where: str = "config") -> None:
        """Refuse a ``config`` without a ``text_config`` or a ``vision_config``.

        Raises:
            ModelLoadError: one of them is missing.
        """
        for name in ("text_config", "vision_config"):
            if getattr(config, name, None) is None:
                raise ModelLoadError(f"the {cls.__name__} {where} has no {name}")


#: A vision tower's layer tensors (``encoder.layers.N.``), the layer index the group.
_VISION_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")


def built_layers(weights: Iterable[tuple[str, torch.Tensor]], built: int, skip: str = "\0") -> list[tuple[str, torch.Tensor]]:
    """A vision tower's checkpoint tensors but those of its layers past the first ``built`` (a tower
    that stops at its feature layer) and those whose name starts with ``skip``."""
    return [
        (name, tensor) for name, tensor in weights
        if not name.startswith(skip) and not ((layer := _VISION_LAYER.match(name)) and int(layer.group(1)) >= built)
    ]


# -- the placeholder scatter ---------------------------------------------------------------------


def batch_media(batch: PackedBatch) -> list[dict | None] | None:
    """The batch's media tensors, one dict or ``None`` per sequence (``batch.extras["media"]``),
    or ``None`` when no sequence has any."""
    media = batch.extras.get("media")
    return media if media is not None and any(m is not None for m in media) else None


def placeholder_rows(
    batch: PackedBatch, media: Sequence[dict | None], tokens: Mapping[str, int | None]
) -> list[tuple[dict, str, torch.Tensor]]:
    """Where a packed batch's media go, in batch order: for each sequence with media and each kind
    in ``tokens`` whose pixels it has (``"{kind}_pixels"``), the sequence's media, the kind, and
    the batch rows of that kind's placeholder token (``tokens[kind]``). A part of a prompt after
    a shared prefix that held its images has no pixels, and no placeholders either."""
    starts = batch.cu_seqlens.tolist()
    found = []
    for i, m in enumerate(media):
        if m is None:
            continue
        a, b = starts[i], starts[i + 1]
        for kind, token in tokens.items():
            if f"{kind}_pixels" in m:
                found.append((m, kind, a + torch.nonzero(batch.input_ids[a:b] == token).flatten()))
    return found


def merge_multimodal_embeddings(
    embeddings: torch.Tensor, rows: Sequence[torch.Tensor], features: torch.Tensor, what: str = "media"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``embeddings`` with the placeholders' rows replaced by the media features, one feature per
    row in order, and the index of those rows.

    Raises:
        ModelLoadError: the placeholders are not as many as the features.
    """
    index = torch.cat(list(rows))
    if index.numel() != features.shape[0]:
        raise ModelLoadError(f"{index.numel()} {what} placeholder tokens for {features.shape[0]} {what} features")
    return embeddings.index_copy(0, index, features.to(embeddings.dtype)), index


# -- checkpoint names ----------------------------------------------------------------------------


class CheckpointLayout:
    """Where each part of a model sits in its checkpoints: a name pattern per part (a regular
    expression matched at the start of a tensor's name, covering the checkpoint layouts the family
    ships in), the tensors no part reads, and a prefix the whole checkpoint may put before them.

    Args:
        parts: part name -> the pattern of its tensors' prefix, tried in order.
        skip: the pattern of tensors that are not read (``lm_head``), tried first.
        prefix: a pattern before every name (a retriever's ``vlm.``).

    Example:
        >>> layout = CheckpointLayout({"visual": r"(?:model\\.)?visual\\.", "language": r"(?:model\\.)?"}, skip=r"lm_head\\.")
        >>> layout.split(weights)["visual"]  # ("model.visual.blocks.0.norm1.weight", t) -> ("blocks.0.norm1.weight", t)
    """

    def __init__(self, parts: Mapping[str, str], skip: str | None = None, prefix: str = "") -> None:
        self.parts = dict(parts)
        self.skip = skip
        self.prefix = prefix
        self._parts = [(part, re.compile(f"{prefix}(?:{pattern})")) for part, pattern in self.parts.items()]
        self._skip = re.compile(f"{prefix}(?:{skip})") if skip else None

    def under(self, prefix: str, **parts: str) -> CheckpointLayout:
        """This layout inside a model whose checkpoints may put ``prefix`` before every name, with
        that model's own ``parts`` tried first."""
        return CheckpointLayout({**parts, **self.parts}, self.skip, prefix + self.prefix)

    def split(self, weights: Iterable[tuple[str, torch.Tensor]]) -> dict[str, Weights]:
        """The tensors by part, each named without its part's prefix; those of no part under
        :data:`UNMATCHED`, by their full names."""
        out: dict[str, Weights] = {part: [] for part in self.parts}
        out[UNMATCHED] = []
        for name, tensor in weights:
            if self._skip is not None and self._skip.match(name):
                continue
            for part, pattern in self._parts:
                if seen := pattern.match(name):
                    out[part].append((name[seen.end():], tensor))
                    break
            else:
                out[UNMATCHED].append((name, tensor))
        return out


# -- feed-forward blocks -------------------------------------------------------------------------


class Activation:
    """An activation by name, fused into the matmul before it where the ``linear_act`` kernel can."""

    def __init__(self, name: str) -> None:
        self.function = activation_function(name)
        self.fused = fused_activation(name)

    def after(self, x: torch.Tensor, layer: nn.Linear, linear_act: Callable) -> torch.Tensor:
        """``act(layer(x))``."""
        if self.fused is None:
            return self.function(linear(x, layer, linear_act))
        return linear(x, layer, linear_act, self.fused)


class FeedForward(nn.Module):
    """``second(act(first(x)))``, the two layers under the checkpoint's names (``fc1`` / ``fc2``,
    ``linear_fc1`` / ``linear_fc2``, a projector's ``linear_1`` / ``linear_2``)."""

    def __init__(
        self, dim: int, hidden: int, out: int, act: str, names: tuple[str, str] = ("fc1", "fc2"), bias: bool = True
    ) -> None:
        super().__init__()
        self.names = names
        setattr(self, names[0], nn.Linear(dim, hidden, bias=bias))
        setattr(self, names[1], nn.Linear(hidden, out, bias=bias))
        self.act = Activation(act)

    def forward(self, x: torch.Tensor, linear_act: Callable) -> torch.Tensor:
        first, second = (getattr(self, name) for name in self.names)
        return linear(self.act.after(x, first, linear_act), second, linear_act)
