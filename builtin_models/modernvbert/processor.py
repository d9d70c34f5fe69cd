"""ModernVBERT's and ColModernVBERT's media processors: Idefics3's image tiles, natively in Pillow and NumPy.

An image is resized so that its longest edge is ``size.longest_edge`` (the other edge keeping the
aspect ratio, made even), then (``do_image_splitting``) resized up to whole multiples of the
tile side (``max_image_size.longest_edge``) and cut into a grid of tiles, row by row, followed by
the whole image resized to one tile; an image of one tile or less, or without splitting, is one
tile of the whole image. Every resize is Pillow's on 8-bit pixels (transformers' Pillow image
processor); tiles are then rescaled and normalised. In the prompt, each ``<image>`` placeholder
becomes, per grid row, ``<fake_token_around_image><row_r_col_c>`` and ``image_seq_len``
``<image>`` tokens for each tile and a line break, then a line break and
``<fake_token_around_image><global-img>``, the whole image's ``<image>`` tokens and
``<fake_token_around_image>`` (an image of one tile: only that last part), as transformers'
``ColModernVBertProcessor`` / ``Idefics3Processor`` write it.

:class:`ColModernVBertProcessor` adds the retriever's prompts (``process_queries`` /
``process_images``): a text without an image is a query (``query_prefix``, the text, ten
``<end_of_utterance>``), an image without text a page (``visual_prompt_prefix``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from poolkit.contracts.io import Prompt
from poolkit.contracts.media import MediaItem, PromptReplacement

from ...io_processors.image import MediaProcessor, read_processor_config
from ..blocks.vision_language import to_rgb

if TYPE_CHECKING:
    from poolkit.contracts.model import ModelInfo

IMAGE_TOKEN = "<image>"
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TOKEN = "<global-img>"
QUERY_AUGMENTATION_TOKEN = "<end_of_utterance>"
#: How many augmentation tokens end a query (``process_queries``' default suffix).
QUERY_AUGMENTATION = 10
#: The processor's visual prompt of a page (processing_colmodernvbert.py's default).
VISUAL_PROMPT = f"<|begin_of_text|>User:{IMAGE_TOKEN}Describe the image.{QUERY_AUGMENTATION_TOKEN}\nAssistant:"
#: Idefics3's bound on a resized image's edge (transformers' ``MAX_IMAGE_SIZE``).
MAX_EDGE = 4096


@dataclasses.dataclass(frozen=True)
class TileSettings:
    """What a ModernVBERT processor config says about its images and prompts (Idefics3's defaults)."""

    tile: int
    image_seq_len: int
    longest_edge: int = 4 * 364
    do_resize: bool = True
    do_image_splitting: bool = True
    resample: int = 1  # Lanczos
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    rescale: float = 1 / 255
    do_rescale: bool = True
    do_normalize: bool = True
    query_prefix: str = ""
    visual_prompt: str = VISUAL_PROMPT


def read_tile_settings(path: Path, vlm: Any) -> TileSettings:
    """:class:`TileSettings` from ``processor_config.json`` (its ``image_processor``, as transformers
    5 saves it) or ``preprocessor_config.json``; the tile side and token count otherwise from the
    vision config (``image_size``) and the ``pixel_shuffle_factor``."""
    processor = read_processor_config(path, ("processor_config.json",))
    raw = processor.get("image_processor") or read_processor_config(path)
    vision = vlm.vision_config
    side = int(vision.image_size)
    tile = int((raw.get("max_image_size") or {}).get("longest_edge") or side)
    tokens = processor.get("image_seq_len") or (side // int(vision.patch_size)) ** 2 // int(vlm.pixel_shuffle_factor) ** 2
    defaults = TileSettings(tile, int(tokens))
    return dataclasses.replace(
        defaults,
        longest_edge=int((raw.get("size") or {}).get("longest_edge") or defaults.longest_edge),
        do_resize=bool(raw.get("do_resize", True)),
        do_image_splitting=bool(raw.get("do_image_splitting", True)),
        resample=int(raw.get("resample", defaults.resample)),
        mean=tuple(raw.get("image_mean") or defaults.mean),
        std=tuple(raw.get("image_std") or defaults.std),
        rescale=float(raw.get("rescale_factor") or defaults.rescale),
        do_rescale=bool(raw.get("do_rescale", True)),
        do_normalize=bool(raw.get("do_normalize", True)),
        query_prefix=str(processor.get("query_prefix") or ""),
        visual_prompt=str(processor.get("visual_prompt_prefix") or VISUAL_PROMPT),
    )


def longest_edge_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """``(height, width)`` with the longest edge ``longest``, the other even (at least 1), then both
    scaled under :data:`MAX_EDGE`, as Idefics3 resizes."""
    ratio = width / height
    if width >= height:
        width, height = longest, int(longest / ratio)
        height += height % 2
    else:
        height, width = longest, int(longest * ratio)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    ratio = width / height
    if width >= height and width > MAX_EDGE:
        width, height = MAX_EDGE, int(MAX_EDGE / ratio)
    elif height > width and height > MAX_EDGE:
        height, width = MAX_EDGE, int(MAX_EDGE * ratio)
    return max(height, 1), max(width, 1)


def tile_multiple_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """``(height, width)`` rounded up to whole tiles, the longer edge first (Idefics3's
    ``resize_for_vision_encoder``)."""
    ratio = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / ratio) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * ratio) / tile) * tile
    return height, width


def image_tiles(rgb: Any, settings: TileSettings) -> tuple[list[Any], int, int]:
    """An RGB image as its tiles (Pillow images, each ``tile`` square), the grid's rows and columns
    (``0, 0``: one tile of the whole image)."""
    tile, resample = settings.tile, settings.resample

    def resize(image: Any, height: int, width: int) -> Any:
        return image if image.size == (width, height) else image.resize((width, height), resample=resample)

    if settings.do_resize:
        rgb = resize(rgb, *longest_edge_size(rgb.height, rgb.width, settings.longest_edge))
    if not settings.do_image_splitting:
        return [resize(rgb, tile, tile)], 0, 0
    rgb = resize(rgb, *tile_multiple_size(rgb.height, rgb.width, tile))
    if rgb.height <= tile and rgb.width <= tile:
        return [rgb], 0, 0
    rows, cols = rgb.height // tile, rgb.width // tile
    tiles = [rgb.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)) for r in range(rows) for c in range(cols)]
    return tiles + [resize(rgb, tile, tile)], rows, cols


def tile_pixels(tiles: Sequence[Any], settings: TileSettings) -> np.ndarray:
    """``[tiles, 3, tile, tile]`` float32 pixels, rescaled and normalised."""
    pixels = np.stack([np.asarray(t, dtype=np.float64) for t in tiles])
    if settings.do_rescale:
        pixels = pixels * settings.rescale
    pixels = pixels.astype(np.float32)
    if settings.do_normalize:
        pixels = (pixels - np.asarray(settings.mean, dtype=np.float32)) / np.asarray(settings.std, dtype=np.float32)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


def image_prompt(rows: int, cols: int, image_seq_len: int) -> str:
    """The text one image's ``<image>`` placeholder becomes (its grid's tiles, then the whole image)."""
    run = IMAGE_TOKEN * image_seq_len
    whole = f"{FAKE_IMAGE_TOKEN}{GLOBAL_IMAGE_TOKEN}{run}{FAKE_IMAGE_TOKEN}"
    if rows == 0 and cols == 0:
        return whole
    grid = "".join(
        "".join(f"{FAKE_IMAGE_TOKEN}<row_{r + 1}_col_{c + 1}>{run}" for c in range(cols)) + "\n" for r in range(rows)
    )
    return f"{grid}\n{whole}"


class ModernVBertProcessor(MediaProcessor):
    """Prompts with images for ``ModernVBertModel``: each ``<image>`` of the text becomes the
    image's tiles (an image-only prompt: one ``<image>`` per image); ``pre_process`` returns
    token ids with :attr:`Prompt.media` ``image_pixels`` (``[tiles, 3, S, S]``)."""

    def replacements(self, model: ModelInfo) -> Sequence[PromptReplacement]:
        settings = self.settings(model)
        return (
            PromptReplacement(
                "image",
                IMAGE_TOKEN,
                replacement=lambda item: image_prompt(item.meta["rows"], item.meta["cols"], settings.image_seq_len),
                feature_token=int(self.vlm(model).image_token_id),
            ),
        )

    def rgb(self, image: Any) -> Any:
        """The image in RGB, as the processor converts it."""
        return to_rgb(image)

    def process_image(self, image: Any, model: ModelInfo) -> MediaItem:
        settings = self.settings(model)
        tiles, rows, cols = image_tiles(self.rgb(image), settings)
        return MediaItem(tile_pixels(tiles, settings), len(tiles) * settings.image_seq_len, meta={"rows": rows, "cols": cols})

    def vlm(self, model: ModelInfo) -> Any:
        """The ModernVBERT config: a retriever's ``vlm_config``, else the model's own."""
        return getattr(model.hf_config, "vlm_config", None) or model.hf_config

    def settings(self, model: ModelInfo) -> TileSettings:
        """The model's image and prompt settings, read once per model directory."""
        return self.cached(model, "tiles", lambda: read_tile_settings(Path(model.path), self.vlm(model)))


class ColModernVBertProcessor(ModernVBertProcessor):
    """``ColModernVBertForRetrieval``'s prompts, as transformers' ``ColModernVBertProcessor`` writes
    them: a query is ``query_prefix``, the text and ten ``<end_of_utterance>``; a page (an image
    without text) is ``visual_prompt_prefix`` with the image's tiles; both tokenized with the
    tokenizer's special tokens. Prompts given as token ids pass through as they are."""

    reads_text = True

    def rgb(self, image: Any) -> Any:
        # process_images converts pages with Pillow's plain convert (transparency dropped, not composited)
        return image.convert("RGB")

    def prompt_text(self, index: int, prompt: Prompt, counts: Mapping[str, int], model: ModelInfo) -> str:
        return prompt.text or self.settings(model).visual_prompt

    def text_prompt(self, index: int, prompt: Prompt, model: ModelInfo) -> Prompt:
        if prompt.text is None:
            return prompt
        text = f"{prompt.prompt_prefix or ''}{self.settings(model).query_prefix}{prompt.text}"
        text += QUERY_AUGMENTATION_TOKEN * QUERY_AUGMENTATION
        ids = model.tokenizer(text, add_special_tokens=prompt.add_special_tokens)["input_ids"]
        return dataclasses.replace(prompt, text=None, token_ids=ids, prompt_prefix=None)
