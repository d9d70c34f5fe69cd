"""Phi-3-Vision's media processor: prompts of text and images for ``Phi3VForCausalLM`` (VLM2Vec).

Each image is decoded under the image IO processor's limits and cut as the published
``Phi3VImageProcessor`` cuts it (the HD transform of InternLM-XComposer2-4KHD): turned to landscape,
resized (bilinear, aspect ratio kept) to the width of the most crops ``scale`` whose grid
``scale × ceil(scale / aspect ratio)`` stays within ``num_crops``, padded with white above and below
to whole crops, turned back; then rescaled to ``[0, 1]`` and normalised, and cut into crops of the
vision tower's size (336 pixels) row by row, after a global image: the whole normalised image
resized to one crop (bicubic). The published processor pads every image's crops to ``num_crops + 1``
with zeros, whose features the model drops; poolkit makes only the real ones.

The text is cut at its placeholders ``<|image_1|>``, ``<|image_2|>``, ... (one per image, in
order) and each piece is tokenized on its own with the tokenizer's special tokens, so ``<s>`` starts
every piece, as the published processor (and vLLM, which follows it) writes the prompt, whatever the
prompt's ``add_special_tokens``: vLLM's ``Phi3VMultiModalProcessor`` re-tokenizes every piece with
them, so a chat rendered by ``vlm2vec_phi3v.jinja`` (``add_special_tokens`` false) gets them too. Each
placeholder becomes one ``<|image|>`` token per image feature: the crops' merged grid with a
separator ending each row, one separator, the global image's grid with its row separators
(:func:`~.config.image_feature_count`). A prompt with images and no text is its placeholders alone;
a prompt without images is tokenized as it is (a ``<|image_1|>`` in it is text, as the published
processor reads a prompt without images).
``num_crops`` comes from ``preprocessor_config.json`` (16 for Phi-3-Vision, 4 for Phi-3.5-Vision), or
from the load setting ``mm_processor_kwargs`` (``{"num_crops": 4}``, as vLLM reads it).

Pre-processing is NumPy, Pillow and torch (the global image's bicubic resize), without transformers'
processors or the checkpoint's code.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from poolkit.contracts.errors import InvalidRequest
from poolkit.contracts.io import Prompt
from poolkit.contracts.media import Layout, MediaItem, PromptReplacement

from ...io_processors.image import MediaProcessor, read_processor_config
from ..blocks.vision_language import CLIP_MEAN, CLIP_STD, to_rgb
from .config import image_feature_count, image_settings

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import ModelInfo

#: A placeholder as the published processor finds it: ``<|image_N|>``, N from 1.
PLACEHOLDER = re.compile(r"<\|image_(\d+)\|>")
_SPLIT = re.compile(r"<\|image_\d+\|>")


@dataclasses.dataclass(frozen=True)
class CropSettings:
    """What the model's config and ``preprocessor_config.json`` say about its crops.

    Attributes:
        crop: the side of a crop in pixels (the vision tower's image size).
        merged: the side of a crop's feature grid after the 2x2 merge.
        num_crops: most crops an image is cut into (the HD transform's ``hd_num``).
        mean, std: the normalisation.
    """

    crop: int = 336
    merged: int = 12
    num_crops: int = 1
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD


def hd_layout(height: int, width: int, settings: CropSettings) -> tuple[int, int, int, bool]:
    """Where the HD transform puts an image of ``height × width`` pixels: the landscape size it is
    resized to ``(height, width)``, the padded height (whole crops), and whether it was turned.

    Raises:
        InvalidRequest: an image so long that its resized short side has no pixel left.
    """
    turned = width < height
    if turned:
        width, height = height, width
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= settings.num_crops:
        scale += 1
    scale -= 1
    new_width = int(scale * settings.crop)
    new_height = int(new_width / ratio)
    if new_height < 1:
        raise InvalidRequest(f"an image of {width}x{height} pixels is too long for {settings.num_crops} crops of {settings.crop} pixels")
    padded = math.ceil(new_height / settings.crop) * settings.crop
    return new_height, new_width, padded, turned


def hd_image(rgb: np.ndarray, settings: CropSettings) -> np.ndarray:
    """``[H, W, 3]`` uint8 pixels resized and padded by the HD transform (whole crops each way)."""
    from PIL import Image

    height, width = rgb.shape[:2]
    new_height, new_width, padded, turned = hd_layout(height, width, settings)
    landscape = np.ascontiguousarray(rgb.transpose(1, 0, 2)) if turned else rgb
    resized = np.asarray(Image.fromarray(landscape).resize((new_width, new_height), resample=Image.BILINEAR))
    canvas = np.full((padded, new_width, 3), 255, dtype=np.uint8)
    top = int((padded - new_height) / 2)
    canvas[top : top + new_height] = resized
    return canvas.transpose(1, 0, 2) if turned else canvas


def crop_image(image: Any, settings: CropSettings) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image as its crops ``[1 + rows·cols, 3, S, S]`` float32 (the global image first) and its
    crop grid ``(rows, cols)``."""
    hd = hd_image(np.asarray(to_rgb(image)), settings)
    pixels = hd.astype(np.float32) / np.float32(255)
    mean, std = np.asarray(settings.mean, dtype=np.float32), np.asarray(settings.std, dtype=np.float32)
    pixels = torch.from_numpy(np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1)))
    s = settings.crop
    rows, cols = pixels.shape[1] // s, pixels.shape[2] // s
    whole = F.interpolate(pixels.unsqueeze(0), size=(s, s), mode="bicubic")
    crops = pixels.reshape(3, rows, s, cols, s).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, s, s)
    return torch.cat((whole, crops)), (rows, cols)


class Phi3VProcessor(MediaProcessor):
    """Prompts with images for ``Phi3VForCausalLM`` (its ``media_processor``).

    ``pre_process`` takes what the image IO processor takes (``{"prompts", "model",
    "allow_local_files"}``) and returns the prompts, each prompt with images as token ids with
    :attr:`Prompt.media`: ``image_pixels`` ``[crops, 3, S, S]`` (each image's global image, then its
    crops) and ``image_grid`` ``[images, 2]`` (crop rows and columns).
    """

    def replacements(self, model: ModelInfo) -> Sequence[PromptReplacement]:
        """Each ``<|image_N|>`` becomes one ``<|image|>`` (the config's ``image_token_id``) per image feature."""
        return (PromptReplacement("image", int(model.hf_config.image_token_id)),)

    def prompt_text(self, index: int, prompt: Prompt, counts: Mapping[str, int], model: ModelInfo) -> str:
        """The prompt's text, else ``<|image_1|>`` to ``<|image_N|>``, its placeholders checked
        (:func:`check_placeholders`) before any image is decoded.

        Raises:
            InvalidRequest: token ids with images (the placeholders are text), or miscounted placeholders.
        """
        if prompt.text is None and prompt.token_ids is not None:
            raise InvalidRequest(
                f"prompt {index}: a prompt with images is text with <|image_1|> where the first image goes, not token ids"
            )
        text = prompt.text or "".join(f"<|image_{k}|>" for k in range(1, counts["image"] + 1))
        check_placeholders(index, text, counts["image"])
        return text

    def layout(self, index: int, text: str, counts: Mapping[str, int], model: ModelInfo, add_special_tokens: bool) -> Layout:
        """The text cut at its ``<|image_N|>``, each piece tokenized on its own with the special
        tokens, as the published processor writes the prompt.

        Raises:
            InvalidRequest: a text that holds the image features' token.
        """
        token = int(model.hf_config.image_token_id)
        pieces = model.tokenizer(_SPLIT.split(text), add_special_tokens=True)["input_ids"]
        if any(token in piece for piece in pieces):
            name = model.tokenizer.convert_ids_to_tokens(token)
            raise InvalidRequest(
                f"prompt {index}'s text holds {name}, the token of image features; put <|image_1|> where the first image goes"
            )
        return Layout([list(piece) for piece in pieces], ["image"] * counts["image"])

    def process_image(self, image: Any, model: ModelInfo) -> MediaItem:
        settings = self.settings(model)
        crops, (rows, cols) = crop_image(image, settings)
        return MediaItem(crops, image_feature_count(rows, cols, settings.merged), {"grid": (rows, cols)})

    def settings(self, model: ModelInfo) -> CropSettings:
        """The model's crop settings, read once per model directory, with the load setting
        ``mm_processor_kwargs`` (``num_crops``) over ``preprocessor_config.json``'s."""
        found = self.cached(model, "image", lambda: read_settings(Path(model.path), model.hf_config))
        wanted = (getattr(model, "mm_processor_kwargs", None) or {}).get("num_crops")
        if wanted is None:
            return found
        if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
            raise InvalidRequest(f"mm_processor_kwargs num_crops must be a positive whole number, got {wanted!r}")
        return dataclasses.replace(found, num_crops=wanted)


def check_placeholders(index: int, text: str, count: int) -> None:
    """Refuse a prompt whose placeholders are not ``<|image_1|>`` to ``<|image_{count}|>``, each
    once and in order (what the published processor asks, and the order the model fills them in).

    Raises:
        InvalidRequest: naming what the prompt has.
    """
    found = PLACEHOLDER.findall(text)
    if len(found) != count:
        plural = "s" if len(found) != 1 else ""
        images = f"{count} image{'s' if count != 1 else ''}"
        raise InvalidRequest(
            f"prompt {index} has {len(found)} image placeholder{plural} (<|image_N|>) for {images}; "
            f"put <|image_1|> where the first image goes, <|image_2|> where the second goes, ..."
        )
    if [int(n) for n in found] != list(range(1, count + 1)):
        got = ", ".join(f"<|image_{n}|>" for n in found)
        raise InvalidRequest(f"prompt {index}'s image placeholders must be <|image_1|> to <|image_{count}|> in order, each once; got {got}")


def read_settings(path: Path, config: PretrainedConfig) -> CropSettings:
    """:class:`CropSettings` from ``preprocessor_config.json`` (when there is one) and the model config.

    Raises:
        InvalidRequest: the file is unreadable, or its ``num_crops`` is not a positive whole number.
    """
    raw = read_processor_config(path)
    image = image_settings(config)
    crops = raw.get("num_crops", 1)
    if isinstance(crops, bool) or not isinstance(crops, int) or crops < 1:
        raise InvalidRequest(f"preprocessor_config.json num_crops must be a positive whole number, got {crops!r}")
    defaults = CropSettings()
    return CropSettings(
        crop=image.crop,
        merged=image.merged,
        num_crops=crops,
        mean=tuple(raw.get("image_mean") or defaults.mean),
        std=tuple(raw.get("image_std") or defaults.std),
    )
