"""The ``qwen2_vl`` media IO processor: prompts of text and images for Qwen2-VL-style models.

Each image is decoded under the image IO processor's limits, resized to the model's pixel budget
(``min_pixels`` / ``max_pixels``, sides multiples of ``patch_size × merge_size``), rescaled,
normalised and cut into flattened patches, in the order transformers' Qwen2-VL image processor
gives them (``merge × merge`` blocks of patches, each patch repeated over ``temporal_patch_size``
frames). The prompt's text is tokenized and each ``<|image_pad|>`` placeholder becomes one token per
merged patch; the multimodal rotary positions (temporal, height, width) are counted as
transformers' ``get_rope_index`` counts them. A prompt with images and no text gets one
``<|vision_start|><|image_pad|><|vision_end|>`` per image.

Pre-processing is NumPy and Pillow in one pass per image (Pillow's resize, then one fused
rescale-normalise and one transpose), without transformers' per-image processor objects.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from poolkit.contracts.errors import InvalidRequest
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.io import IOProcessor, Prompt
from poolkit.io_processors.image import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, PREPROCESSOR_CONFIG, ImageProcessor, _limit

#: OpenAI CLIP's normalisation, Qwen2-VL's default.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Most images (and videos) one prompt may carry unless the load setting says otherwise.
MAX_MEDIA_PER_PROMPT = 16


@dataclasses.dataclass(frozen=True)
class VisionSettings:
    """What the model's ``preprocessor_config.json`` and vision config say about its pixels."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    rescale: float = 1 / 255
    resample: int = 3  # bicubic

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The size an image is resized to: sides multiples of ``factor``, area within the budget,
    aspect ratio kept as nearly as that allows (Qwen2-VL's rule).

    Raises:
        InvalidRequest: the image is more than 200 times longer than wide (or the reverse).
    """
    if max(height, width) / min(height, width) > 200:
        raise InvalidRequest(f"the image's aspect ratio must be below 200, got {max(height, width) / min(height, width):.0f}")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


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


def patchify(image: Any, settings: VisionSettings, frames: int = 1) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One image (or ``frames`` equal ones) as flattened patches ``[t·h·w, C·T·P·P]`` float32 and
    its patch grid ``(t, h, w)``."""
    rgb = to_rgb(image)
    height, width = smart_resize(rgb.height, rgb.width, settings.factor, settings.min_pixels, settings.max_pixels)
    if (width, height) != rgb.size:
        rgb = rgb.resize((width, height), resample=settings.resample)
    mean = np.asarray(settings.mean, dtype=np.float32)
    std = np.asarray(settings.std, dtype=np.float32)
    pixels = ((np.asarray(rgb, dtype=np.float64) * settings.rescale).astype(np.float32) - mean) / std  # [H, W, C]
    p, m, t = settings.patch_size, settings.merge_size, settings.temporal_patch_size
    gh, gw = height // p, width // p
    blocks = pixels.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)  # gh gw mh mw C ph pw
    blocks = np.broadcast_to(blocks[:, :, :, :, :, None], (*blocks.shape[:5], t, p, p))
    flat = np.ascontiguousarray(blocks).reshape(gh * gw, 3 * t * p * p)
    return flat, (max(1, frames // t) if frames > 1 else 1, gh, gw)


class QwenVLProcessor(IOProcessor):
    """Prompts with images for Qwen2-VL-style architectures (``media_processor = "qwen2_vl"``).

    ``pre_process`` takes what the image IO processor takes (``{"prompts", "model",
    "allow_local_files"}``) and returns the prompts, each prompt with media as token ids with
    :attr:`Prompt.media`: ``image_pixels`` ``[patches, C·T·P·P]``, ``image_grid_thw`` ``[images, 3]``
    and ``positions`` ``[3, tokens]``.
    """

    def __init__(self) -> None:
        self._settings: dict[str, VisionSettings] = {}
        self._lock = threading.Lock()

    def parse_data(self, data: Any) -> dict[str, Any]:
        return ImageProcessor().parse_data(data)

    def pre_process(self, data: Any, request_id: str | None = None) -> Sequence[Prompt]:
        data = self.parse_data(data)
        model = data["model"]
        allow_files = bool(data.get("allow_local_files", True))
        settings = self.settings(model)
        limits = (_limit("POOLKIT_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS), _limit("POOLKIT_MAX_IMAGE_BYTES", MAX_IMAGE_BYTES))
        per_prompt = media_per_prompt(model, "image")
        out = []
        for i, prompt in enumerate(data["prompts"]):
            if "image" not in prompt.extras and "video" not in prompt.extras:
                out.append(prompt)
                continue
            if "video" in prompt.extras:
                raise InvalidRequest(f"prompt {i}: model '{model.name}' takes no videos; pass images")
            images = prompt.extras["image"]
            images = list(images) if isinstance(images, (list, tuple)) else [images]
            if len(images) > per_prompt:
                raise InvalidRequest(f"prompt {i}: {len(images)} images, more than the limit of {per_prompt} per prompt")
            out.append(self._prompt(i, prompt, images, model, settings, limits, allow_files))
        return out

    def _prompt(
        self, index: int, prompt: Prompt, images: list[Any], model: Any, settings: VisionSettings,
        limits: tuple[int, int], allow_files: bool,
    ) -> Prompt:
        config = model.hf_config
        patches, grids = [], []
        for image in images:
            decoded = ImageProcessor.load_image(index, image, *limits, allow_files)
            try:
                flat, grid = patchify(decoded, settings)
            except InvalidRequest as exc:
                raise InvalidRequest(f"prompt {index}: {exc}") from None
            finally:
                if decoded is not image:
                    decoded.close()
            patches.append(flat)
            grids.append(grid)
        tok = model.tokenizer
        text = prompt.text
        if not text:
            text = "<|vision_start|><|image_pad|><|vision_end|>" * len(images)
        ids = tok(text, add_special_tokens=prompt.add_special_tokens)["input_ids"]
        token = int(config.image_token_id)
        found = sum(1 for t in ids if t == token)
        if found != len(images):
            name = tok.convert_ids_to_tokens(token)
            raise InvalidRequest(
                f"prompt {index} has {found} image placeholder{'s' if found != 1 else ''} ({name}) for {len(images)} "
                f"image{'s' if len(images) != 1 else ''}; put one {name} (in <|vision_start|>...<|vision_end|>) where each image goes"
            )
        merge = settings.merge_size
        counts = iter(t * h * w // (merge * merge) for t, h, w in grids)
        expanded: list[int] = []
        for t in ids:
            expanded.extend([token] * next(counts) if t == token else [t])
        media = {
            "image_pixels": torch.from_numpy(np.concatenate(patches)),
            "image_grid_thw": torch.tensor(grids, dtype=torch.long),
            "positions": torch.from_numpy(rope_positions(expanded, token, grids, merge)),
        }
        return dataclasses.replace(prompt, text=None, token_ids=expanded, media=media, extras={})

    def settings(self, model: Any) -> VisionSettings:
        """The model's pixel settings, read once per model directory, with the load setting
        ``mm_processor_kwargs`` (``min_pixels``, ``max_pixels``) over the checkpoint's."""
        key = str(Path(model.path).resolve())
        with self._lock:
            found = self._settings.get(key)
            if found is None:
                found = self._settings[key] = read_settings(Path(model.path), model.hf_config)
        kwargs = getattr(model, "mm_processor_kwargs", None) or {}
        budget = {k: int(kwargs[k]) for k in ("min_pixels", "max_pixels") if kwargs.get(k) is not None}
        return dataclasses.replace(found, **budget) if budget else found


def media_per_prompt(model: Any, kind: str) -> int:
    """Most images (``kind="image"``) or videos one prompt may carry: the load setting
    ``limit_mm_per_prompt`` (vLLM's), else ``POOLKIT_MAX_IMAGES_PER_PROMPT``, else 16."""
    limits = getattr(model, "limit_mm_per_prompt", None) or {}
    if limits.get(kind) is not None:
        return int(limits[kind])
    return _limit("POOLKIT_MAX_IMAGES_PER_PROMPT", MAX_MEDIA_PER_PROMPT)


def read_settings(path: Path, config: Any) -> VisionSettings:
    """:class:`VisionSettings` from ``preprocessor_config.json`` (when there is one) and the vision config."""
    raw: dict[str, Any] = {}
    file = path / PREPROCESSOR_CONFIG
    if file.is_file():
        try:
            raw = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"cannot read {file.name}: {exc}") from None
    vision = config.vision_config
    size = raw.get("size") or {}
    defaults = VisionSettings()
    return VisionSettings(
        patch_size=int(raw.get("patch_size") or vision.patch_size),
        temporal_patch_size=int(raw.get("temporal_patch_size") or vision.temporal_patch_size),
        merge_size=int(raw.get("merge_size") or vision.spatial_merge_size),
        min_pixels=int(raw.get("min_pixels") or size.get("shortest_edge") or defaults.min_pixels),
        max_pixels=int(raw.get("max_pixels") or size.get("longest_edge") or defaults.max_pixels),
        mean=tuple(raw.get("image_mean") or defaults.mean),
        std=tuple(raw.get("image_std") or defaults.std),
        rescale=float(raw.get("rescale_factor") or defaults.rescale),
        resample=int(raw.get("resample", defaults.resample)),
    )


def rope_positions(ids: list[int], token: int, grids: list[tuple[int, int, int]], merge: int) -> np.ndarray:
    """The ``[3, len(ids)]`` multimodal rotary positions of a prompt whose runs of ``token`` are
    its images, in order: text counts on from the last position on all three axes; an image's
    tokens get the start plus their (frame, row, column) in the merged grid, and the text after
    it starts past the image's longer side."""
    out = np.empty((3, len(ids)), dtype=np.int64)
    arr = np.asarray(ids)
    is_media = arr == token
    grids_left = iter(grids)
    at, pos = 0, 0
    n = len(ids)
    while at < n:
        end = at
        if is_media[at]:
            t, h, w = next(grids_left)
            gh, gw = h // merge, w // merge
            count = t * gh * gw
            tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
            out[:, at : at + count] = np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + pos
            at += count
            pos += max(gh, gw)
            continue
        while end < n and not is_media[end]:
            end += 1
        out[:, at:end] = np.arange(pos, pos + end - at)
        pos += end - at
        at = end
    return out


@hookimpl
def poolkit_register_io_processors(register):
    register("qwen2_vl", QwenVLProcessor)
