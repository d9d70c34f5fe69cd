"""LLaVA-NeXT's media processor: prompts of text and images for LLaVA-NeXT models (E5-V).

Each image is decoded under the image IO processor's limits and tiled as transformers'
``LlavaNextImageProcessor`` tiles it: the best of ``image_grid_pinpoints`` is chosen (the most of
the image's pixels kept, then the least padding), the image is resized to fit it with its aspect
ratio kept, centred on black padding and cut into square tiles; a base tile of the whole image
(squashed to the tile size) goes first. Each tile is then resized, centre-cropped, rescaled and
normalised as the processor's config says. The prompt's text is tokenized and each ``<image>``
placeholder becomes one token per image feature: the base tile's patches, then the tiles' patch
grid with the padding's rows or columns cut off and one newline feature per row (transformers'
``LlavaNextProcessor`` count). A prompt with images and no text gets one ``<image>`` per image.

Pre-processing is NumPy and Pillow, without transformers' processor objects; the pixels equal the
Pillow backend's (``LlavaNextImageProcessorPil``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from poolkit.contracts.errors import InvalidRequest
from poolkit.contracts.media import MediaItem, PromptReplacement

from ...io_processors.image import PREPROCESSOR_CONFIG, MediaProcessor, read_processor_config
from ..blocks.vision_language import CLIP_MEAN, CLIP_STD, to_rgb

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import ModelInfo

#: transformers' default pinpoints (``LlavaNextConfig``), for a checkpoint that names none.
DEFAULT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


@dataclasses.dataclass(frozen=True)
class TileSettings:
    """What the model's ``preprocessor_config.json`` and config say about its tiles.

    Attributes:
        pinpoints: the resolutions ``(height, width)`` an image may be tiled at.
        tile: the side of a tile in pixels (the processor's crop size, the vision tower's image size).
        base: the size ``(height, width)`` the whole image is squashed to for the base tile.
        shortest_edge: each tile's resize, shortest edge to this many pixels; or ``None`` with ``resize_to``.
        resize_to: each tile's resize to ``(height, width)``, when the processor's ``size`` says so.
        crop: the centre crop ``(height, width)``, or ``None`` for none.
        patch_size: the vision tower's patch size; ``grid`` is ``tile // patch_size`` patches a side.
    """

    pinpoints: tuple[tuple[int, int], ...] = DEFAULT_PINPOINTS
    tile: int = 336
    base: tuple[int, int] = (336, 336)
    shortest_edge: int | None = 336
    resize_to: tuple[int, int] | None = None
    crop: tuple[int, int] | None = (336, 336)
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    rescale: float = 1 / 255
    resample: int = 3  # bicubic
    patch_size: int = 14

    @property
    def grid(self) -> int:
        return self.tile // self.patch_size


def best_resolution(height: int, width: int, pinpoints: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The pinpoint ``(height, width)`` that keeps the most of the image's pixels when it is
    resized into it, and of those the one with the least padding (transformers' rule)."""
    best, kept_best, wasted_best = pinpoints[0], 0, float("inf")
    for h, w in pinpoints:
        scale = min(w / width, h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        wasted = w * h - kept
        if kept > kept_best or (kept == kept_best and wasted < wasted_best):
            best, kept_best, wasted_best = (h, w), kept, wasted
    return best


def fit_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """The size an image is resized to inside ``target`` with its aspect ratio kept (one side
    filling the target, the other rounded up)."""
    th, tw = target
    if tw / width < th / height:
        return min(math.ceil(height * (tw / width)), th), tw
    return th, min(math.ceil(width * (th / height)), tw)


def feature_count(height: int, width: int, settings: TileSettings) -> int:
    """How many image features (``<image>`` tokens) an image of ``height × width`` pixels makes:
    the base tile's patches, the tiles' patch grid less its padding, one newline per grid row."""
    g = settings.grid
    best_h, best_w = best_resolution(height, width, settings.pinpoints)
    rows, cols = best_h // settings.tile * g, best_w // settings.tile * g
    if width / height > cols / rows:
        rows -= (rows - int(round(height * (cols / width), 7))) // 2 * 2
    else:
        cols -= (cols - int(round(width * (rows / height), 7))) // 2 * 2
    return g * g + rows * cols + rows


def _resize(pixels: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """``[H, W, 3]`` uint8 pixels resized to ``size`` ``(height, width)`` by Pillow."""
    if pixels.shape[:2] == size:
        return pixels
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).resize((size[1], size[0]), resample=resample))


def _finish(tile: np.ndarray, settings: TileSettings) -> np.ndarray:
    """One ``[H, W, 3]`` uint8 tile resized and centre-cropped as the processor says (still uint8)."""
    if settings.do_resize:
        h, w = tile.shape[:2]
        if settings.resize_to is not None:
            size = settings.resize_to
        else:
            short = settings.shortest_edge
            size = (int(short * h / w), short) if w <= h else (short, int(short * w / h))
        tile = _resize(tile, size, settings.resample)
    if settings.crop is not None:
        ch, cw = settings.crop
        h, w = tile.shape[:2]
        top, left = (h - ch) // 2, (w - cw) // 2
        if top >= 0 and left >= 0:
            return tile[top : top + ch, left : left + cw]
        canvas = np.zeros((max(h, ch), max(w, cw), 3), dtype=tile.dtype)
        pad_top, pad_left = -(-(canvas.shape[0] - h) // 2), -(-(canvas.shape[1] - w) // 2)
        canvas[pad_top : pad_top + h, pad_left : pad_left + w] = tile
        top, left = (h - ch) // 2 + pad_top, (w - cw) // 2 + pad_left
        return canvas[top : top + ch, left : left + cw]
    return tile


def tile_image(image: Any, settings: TileSettings) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """One image as its tiles ``[1 + rows·cols, 3, S, S]`` float32 (the base tile first), its tile
    grid ``(rows, cols)`` and its size ``(height, width)``."""
    rgb = np.asarray(to_rgb(image))
    height, width = rgb.shape[:2]
    best = best_resolution(height, width, settings.pinpoints)
    fitted = _resize(rgb, fit_size(height, width, best), settings.resample)
    canvas = np.zeros((*best, 3), dtype=np.uint8)
    top, left = (best[0] - fitted.shape[0]) // 2, (best[1] - fitted.shape[1]) // 2
    canvas[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    s = settings.tile
    rows, cols = best[0] // s, best[1] // s
    tiles = [_resize(rgb, settings.base, settings.resample)]
    tiles += [canvas[r * s : (r + 1) * s, c * s : (c + 1) * s] for r in range(rows) for c in range(cols)]
    stacked = np.stack([_finish(t, settings) for t in tiles])  # [n, H, W, 3] uint8
    pixels = stacked.astype(np.float32)
    if settings.do_rescale:
        pixels = (stacked.astype(np.float64) * settings.rescale).astype(np.float32)
    if settings.do_normalize:
        pixels = (pixels - np.asarray(settings.mean, dtype=np.float32)) / np.asarray(settings.std, dtype=np.float32)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)), (rows, cols), (height, width)


class LlavaNextProcessor(MediaProcessor):
    """Prompts with images for LLaVA-NeXT architectures (their ``media_processor``).

    ``pre_process`` takes what the image IO processor takes (``{"prompts", "model",
    "allow_local_files"}``) and returns the prompts, each prompt with images as token ids with
    :attr:`Prompt.media`: ``image_pixels`` ``[tiles, 3, S, S]``, ``image_grid`` ``[images, 2]``
    (tile rows and columns) and ``image_sizes`` ``[images, 2]`` (height and width).
    """

    def replacements(self, model: ModelInfo) -> Sequence[PromptReplacement]:
        """Each ``<image>`` token (the config's ``image_token_id``) becomes one per image feature."""
        return (PromptReplacement("image", int(model.hf_config.image_token_id)),)

    def process_image(self, image: Any, model: ModelInfo) -> MediaItem:
        settings = self.settings(model)
        pixels, grid, size = tile_image(image, settings)
        return MediaItem(pixels, feature_count(*size, settings), {"grid": grid, "sizes": size})

    def settings(self, model: ModelInfo) -> TileSettings:
        """The model's tile settings, read once per model directory."""
        return self.cached(model, "image", lambda: read_settings(Path(model.path), model.hf_config))


def read_settings(path: Path, config: PretrainedConfig) -> TileSettings:
    """:class:`TileSettings` from ``preprocessor_config.json`` (when there is one) and the model config.

    Raises:
        InvalidRequest: the file is unreadable, or its tiles do not fit the vision tower.
    """
    raw = read_processor_config(path)
    vision = config.vision_config
    image_size = int(vision.image_size)
    size = raw.get("size") or {"shortest_edge": image_size}
    crop = raw.get("crop_size") or {}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    resize_to = (int(size["height"]), int(size["width"])) if size.get("height") and size.get("width") else None
    shortest = int(size["shortest_edge"]) if size.get("shortest_edge") else None
    do_crop = bool(raw.get("do_center_crop", True)) and bool(crop.get("height"))
    tile = int(crop["height"]) if crop.get("height") else resize_to[0] if resize_to else shortest
    pinpoints = raw.get("image_grid_pinpoints") or getattr(config, "image_grid_pinpoints", None) or DEFAULT_PINPOINTS
    defaults = TileSettings()
    settings = TileSettings(
        pinpoints=tuple((int(h), int(w)) for h, w in pinpoints),
        tile=int(tile),
        base=resize_to or (shortest, shortest),
        shortest_edge=shortest,
        resize_to=resize_to,
        crop=(int(crop["height"]), int(crop["width"])) if do_crop else None,
        do_resize=bool(raw.get("do_resize", True)),
        do_rescale=bool(raw.get("do_rescale", True)),
        do_normalize=bool(raw.get("do_normalize", True)),
        mean=tuple(raw.get("image_mean") or defaults.mean),
        std=tuple(raw.get("image_std") or defaults.std),
        rescale=float(raw.get("rescale_factor") or defaults.rescale),
        resample=int(raw.get("resample", defaults.resample)),
        patch_size=int(vision.patch_size),
    )
    if settings.tile != image_size or any(h % image_size or w % image_size for h, w in settings.pinpoints):
        raise InvalidRequest(
            f"{PREPROCESSOR_CONFIG}'s tiles of {settings.tile} pixels and pinpoints {list(settings.pinpoints)} do not fit the vision "
            f"tower's {image_size}-pixel images"
        )
    return settings

