"""Llama-Nemotron-VL's media processor: prompts of text and images for ``LlamaNemotronVLModel``
(nvidia/llama-nemotron-embed-vl-1b-v2).

Each image is tiled as InternVL's dynamic tiling does it, in the variant NVIDIA's processor and
vLLM run: of the tile grids ``cols × rows`` with ``min_tiles ≤ cols·rows ≤ max_tiles`` (tried
fewest tiles first), the one whose aspect ratio is closest to the image's, each grid's closeness
weighted by how much of the image's area it keeps (counted up to 60%, so no grid wins by size
alone). The image is resized (bicubic) to that grid of square tiles and cut into them row by row;
when there is more than one tile, a thumbnail of the whole image (squashed to one tile) follows
them. Each tile is rescaled to ``[0, 1]`` and normalised (SigLIP's mean and std of 0.5).

The prompt's text marks each image with ``<image>``; each becomes ``<img>``, one
``<IMG_CONTEXT>`` per image feature (the tile's pixel-shuffled patches, times its tiles) and
``</img>``, and the whole text is tokenized as it then reads, as the published processor does. A
prompt with images and no text gets one ``<image>`` per image. The checkpoint's
``processor_config.json`` (``max_input_tiles``, ``min_input_tiles``, ``use_thumbnail``,
``dynamic_image_size``, ``norm_type``) wins over the model config's ``max_dynamic_patch``,
``min_dynamic_patch``, ``use_thumbnail`` and ``dynamic_image_size``.

Pre-processing is NumPy and Pillow, without transformers' processor objects.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from poolkit.contracts.errors import InvalidRequest
from poolkit.contracts.media import MediaItem, PromptReplacement

from ...io_processors.image import MediaProcessor, read_processor_config
from ..blocks.vision_language import to_rgb

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import ModelInfo

#: Where an image goes in a prompt's text, and what it becomes: ``<img>``, its features' tokens, ``</img>``.
IMAGE = "<image>"
IMG_START, IMG_CONTEXT, IMG_END = "<img>", "<IMG_CONTEXT>", "</img>"
#: The processor config the published checkpoints ship (``LlamaNemotronVLProcessor``'s).
PROCESSOR_CONFIG = "processor_config.json"
#: The pixel normalisations ``norm_type`` names.
NORMS = {
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
#: Of a tile grid's share of the image's area, at most this counts in the grid's choice.
AREA_CAP = 0.6


@dataclasses.dataclass(frozen=True)
class TileSettings:
    """How the model's images are tiled.

    Attributes:
        tile: the side of a tile in pixels (the vision tower's image size).
        min_tiles: the fewest tiles an image is cut into (thumbnail aside).
        max_tiles: the most tiles an image is cut into (thumbnail aside).
        thumbnail: whether an image of more than one tile gets a thumbnail tile after them.
        features: the image features (``<IMG_CONTEXT>`` tokens) of one tile.
        mean: the per-channel mean of the normalisation.
        std: the per-channel standard deviation of the normalisation.
    """

    tile: int = 512
    min_tiles: int = 1
    max_tiles: int = 6
    thumbnail: bool = True
    features: int = 256
    mean: tuple[float, ...] = NORMS["siglip"][0]
    std: tuple[float, ...] = NORMS["siglip"][1]


def tile_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """The grids ``(cols, rows)`` an image may be tiled into, fewest tiles first; grids of as many
    tiles keep the published processor's order (it breaks ties by it)."""
    grids = {
        (cols, rows)
        for n in range(min_tiles, max_tiles + 1)
        for cols in range(1, n + 1)
        for rows in range(1, n + 1)
        if min_tiles <= cols * rows <= max_tiles
    }
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def best_grid(width: int, height: int, settings: TileSettings) -> tuple[int, int]:
    """The grid ``(cols, rows)`` an image of ``width × height`` pixels is tiled into: the closest in
    aspect ratio, weighted by the share of the image's area it keeps (up to :data:`AREA_CAP`); the
    first of equals."""
    aspect = width / height
    area = width * height
    best, best_score = (1, 1), float("-inf")
    for cols, rows in tile_grids(settings.min_tiles, settings.max_tiles):
        grid_aspect = cols / rows
        kept = (cols * rows * settings.tile * settings.tile) / area
        score = min(kept, AREA_CAP) * min(grid_aspect / aspect, aspect / grid_aspect)
        if score > best_score:
            best, best_score = (cols, rows), score
    return best


def tile_image(image: Any, settings: TileSettings) -> np.ndarray:
    """One image as its tiles ``[tiles, 3, S, S]`` float32, row by row, then its thumbnail (if any)."""
    from PIL import Image

    rgb = to_rgb(image)
    s = settings.tile
    cols, rows = best_grid(rgb.width, rgb.height, settings)
    resized = np.asarray(rgb.resize((cols * s, rows * s), resample=Image.Resampling.BICUBIC))
    tiles = [resized[r * s : (r + 1) * s, c * s : (c + 1) * s] for r in range(rows) for c in range(cols)]
    if settings.thumbnail and len(tiles) != 1:
        tiles.append(np.asarray(rgb.resize((s, s), resample=Image.Resampling.BICUBIC)))
    pixels = np.stack(tiles).astype(np.float32) / np.float32(255)
    pixels = (pixels - np.asarray(settings.mean, dtype=np.float32)) / np.asarray(settings.std, dtype=np.float32)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


def image_tokens(features: int) -> str:
    """What an ``<image>`` of ``features`` image features becomes in the prompt's text."""
    return IMG_START + IMG_CONTEXT * features + IMG_END


class LlamaNemotronVLProcessor(MediaProcessor):
    """Prompts with images for ``LlamaNemotronVLModel`` (its ``media_processor``).

    ``pre_process`` takes what the image IO processor takes (``{"prompts", "model",
    "allow_local_files"}``) and returns the prompts, each prompt with images as token ids with
    :attr:`Prompt.media`: ``image_pixels`` ``[tiles, 3, S, S]`` (every image's tiles, in order) and
    ``image_tiles`` ``[images]`` (how many tiles each image has).
    """

    def replacements(self, model: ModelInfo) -> Sequence[PromptReplacement]:
        """Each ``<image>`` in the text becomes ``<img>``, its features' ``<IMG_CONTEXT>`` and ``</img>``."""
        return (
            PromptReplacement(
                "image", IMAGE, lambda item: image_tokens(item.features),
                feature_token=int(model.hf_config.img_context_token_id),
            ),
        )

    def process_image(self, image: Any, model: ModelInfo) -> MediaItem:
        settings = self.settings(model)
        tiles = tile_image(image, settings)
        return MediaItem(tiles, len(tiles) * settings.features, {"tiles": len(tiles)})

    def settings(self, model: ModelInfo) -> TileSettings:
        """The model's tile settings, read once per model directory."""
        return self.cached(model, "image", lambda: read_settings(Path(model.path), model.hf_config))


def read_settings(path: Path, config: PretrainedConfig) -> TileSettings:
    """:class:`TileSettings` from ``processor_config.json`` (when there is one) and the model config,
    as vLLM reads them.

    Raises:
        InvalidRequest: the file is unreadable, or asks for what the model cannot do.
    """
    raw = read_processor_config(path, (PROCESSOR_CONFIG,))
    vision = config.vision_config
    tile = int(getattr(config, "force_image_size", None) or vision.image_size)
    dynamic = raw.get("dynamic_image_size", getattr(config, "dynamic_image_size", True))
    min_tiles = int(raw.get("min_input_tiles", getattr(config, "min_dynamic_patch", 1))) if dynamic else 1
    max_tiles = int(raw.get("max_input_tiles", getattr(config, "max_dynamic_patch", 1))) if dynamic else 1
    norm = raw.get("norm_type", "siglip")
    if norm not in NORMS:
        raise InvalidRequest(f"{PROCESSOR_CONFIG}'s norm_type '{norm}' is not one of {', '.join(NORMS)}")
    if not 1 <= min_tiles <= max_tiles:
        raise InvalidRequest(f"{PROCESSOR_CONFIG}: {min_tiles} to {max_tiles} tiles per image is no range; the least is 1")
    if int(raw.get("image_size", tile)) != tile:
        raise InvalidRequest(
            f"{PROCESSOR_CONFIG}'s tiles of {raw['image_size']} pixels do not fit the vision tower's {tile}-pixel images"
        )
    scale = round(1 / float(config.downsample_ratio))
    grid = tile // int(vision.patch_size) // scale
    return TileSettings(
        tile=tile,
        min_tiles=min_tiles,
        max_tiles=max_tiles,
        thumbnail=bool(raw.get("use_thumbnail", getattr(config, "use_thumbnail", True))),
        features=grid * grid,
        mean=NORMS[norm][0],
        std=NORMS[norm][1],
    )
