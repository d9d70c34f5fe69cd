"""The ColVision retrievers' media processors: PaliGemma's prompts, and ColPali's, ColQwen2's, ColQwen2.5's and ColQwen3.5's.

:class:`PaliGemmaProcessor`: each image is decoded under the image IO processor's limits and
pre-processed as transformers' SigLIP image processor does it (converted to RGB, resized to the
model's square with Pillow's bicubic filter, rescaled, normalised), natively in NumPy. A prompt
becomes PaliGemma's layout: the ``<image>`` tokens first (``image_seq_length`` per image), then
``<bos>``, the text and ``"\\n"``; a text that already has ``<image>`` placeholders keeps them,
``<bos>`` going after the last one, as PaliGemma's processor writes it.

:class:`ColPaliProcessor` (``ColPaliForRetrieval``'s) and :class:`ColQwen2Processor`
(``ColQwen2ForRetrieval``'s) build what their transformers processors build for retrieval: a page
(an image with no text) gets the visual prompt (``process_images``); a text without an image is a
query (``process_queries``): the query prefix, the text, ten padding tokens (the "query
augmentation" buffer whose vectors are scored) and ``"\\n"``. Prompts given as token ids pass
through as they are. ColQwen2's images are Qwen2-VL's
(:mod:`poolkit.builtin_models.qwen_vl.processor`), with transformers' plain positions: its
``ColQwen2ForRetrieval`` runs the decoder without multimodal rotary positions.
:class:`ColQwen3_5Processor` writes colpali-engine's ColQwen3.5 prompts (a query: the text and ten
``<|endoftext|>``, nothing else), Qwen3-VL's images at Qwen3.5's multimodal rotary positions.
:class:`ColQwen2_5Processor` writes the same prompts, as colpali-engine's ``ColQwen2_5_Processor``
does, with Qwen2.5-VL's images at Qwen2.5-VL's multimodal rotary positions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from poolkit.contracts.errors import InvalidRequest
from poolkit.contracts.io import Prompt
from poolkit.contracts.media import Layout, MediaItem, PromptReplacement, plural

from ...io_processors.image import MediaProcessor, read_processor_config
from ..qwen_vl.processor import QwenVLProcessor, VisionSettings
from ..blocks.vision_language import to_rgb

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import ModelInfo

IMAGE_TOKEN = "<image>"
#: How many padding tokens end a ColVision query (the processors' ``query_augmentation_token * 10``).
QUERY_AUGMENTATION = 10
#: The side in pixels of a visual token in colpali-engine's ``max_num_visual_tokens`` (``* 28 * 28``).
VISUAL_TOKEN_SIDE = 28


@dataclasses.dataclass(frozen=True)
class SiglipSettings:
    """What a PaliGemma ``preprocessor_config.json`` says about its pixels (SigLIP's defaults)."""

    height: int = 224
    width: int = 224
    image_seq_length: int = 256
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    rescale: float = 1 / 255
    resample: int = 3  # bicubic
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True


def read_siglip_settings(path: Path, vlm_config: PretrainedConfig) -> SiglipSettings:
    """:class:`SiglipSettings` from ``preprocessor_config.json`` (when there is one), the image
    size and token count otherwise from the vision config (``image_size``, ``num_image_tokens``)."""
    raw = read_processor_config(path)
    vision = vlm_config.vision_config
    side = int(vision.image_size)
    size = raw.get("size") or {}
    tokens = raw.get("image_seq_length") or getattr(vlm_config.text_config, "num_image_tokens", None)
    defaults = SiglipSettings()
    return SiglipSettings(
        height=int(size.get("height") or side),
        width=int(size.get("width") or side),
        image_seq_length=int(tokens or (side // int(vision.patch_size)) ** 2),
        mean=tuple(raw.get("image_mean") or defaults.mean),
        std=tuple(raw.get("image_std") or defaults.std),
        rescale=float(raw.get("rescale_factor") or defaults.rescale),
        resample=int(raw.get("resample", defaults.resample)),
        do_resize=bool(raw.get("do_resize", True)),
        do_rescale=bool(raw.get("do_rescale", True)),
        do_normalize=bool(raw.get("do_normalize", True)),
    )


def siglip_pixels(image: Any, settings: SiglipSettings) -> np.ndarray:
    """One image as ``[3, height, width]`` float32 pixels, as SigLIP's Pillow image processor makes them."""
    rgb = to_rgb(image)
    if settings.do_resize and rgb.size != (settings.width, settings.height):
        rgb = rgb.resize((settings.width, settings.height), resample=settings.resample)
    pixels = np.asarray(rgb, dtype=np.float64)
    if settings.do_rescale:
        pixels = pixels * settings.rescale
    pixels = pixels.astype(np.float32)
    if settings.do_normalize:
        pixels = (pixels - np.asarray(settings.mean, dtype=np.float32)) / np.asarray(settings.std, dtype=np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def vlm_config(config: PretrainedConfig) -> PretrainedConfig:
    """The vision-language config: a retriever's ``vlm_config``, else the config itself (PaliGemma's)."""
    return getattr(config, "vlm_config", None) or config


class PaliGemmaProcessor(MediaProcessor):
    """Prompts with images for PaliGemma-style architectures: ``<image>`` tokens, ``<bos>``, the text.

    ``pre_process`` takes what the image IO processor takes (``{"prompts", "model",
    "allow_local_files"}``) and returns the prompts; a prompt with images becomes token ids with
    :attr:`Prompt.media` ``image_pixels`` (``[images, 3, H, W]``). Text prompts go through
    :meth:`text_prompt` (unchanged here).
    """

    #: The text of a prompt with images and no text of its own (``None``: none).
    visual_prompt: str | None = None

    def replacements(self, model: ModelInfo) -> Sequence[PromptReplacement]:
        """Each image becomes ``image_seq_length`` ``<image>`` tokens (the config's ``image_token_id``)."""
        return (PromptReplacement("image", int(vlm_config(model.hf_config).image_token_id)),)

    def prompt_text(self, index: int, prompt: Prompt, counts: Mapping[str, int], model: ModelInfo) -> str:
        return prompt.text or self.visual_prompt or ""

    def layout(self, index: int, text: str, counts: Mapping[str, int], model: ModelInfo, add_special_tokens: bool) -> Layout:
        """PaliGemma's layout of a prompt with images: each image's ``<image>`` tokens where its
        placeholder is, ``<bos>`` after the last image, then the rest of the text and ``"\\n"``; a
        text without placeholders gets all its images in front.

        Raises:
            InvalidRequest: the text has placeholders, but not one per image; a tokenizer without ``<bos>``.
        """
        tok = model.tokenizer
        count = counts["image"]
        bos = tok.bos_token_id
        if bos is None:
            raise InvalidRequest(f"model '{model.name}': its tokenizer has no BOS token, which PaliGemma prompts need")
        parts = text.split(IMAGE_TOKEN)
        if len(parts) == 1:
            parts = [""] * count + [text]
        elif len(parts) - 1 != count:
            raise InvalidRequest(
                f"prompt {index} has {plural(len(parts) - 1, 'image placeholder')} ({IMAGE_TOKEN}) for "
                f"{plural(count, 'image')}; put one {IMAGE_TOKEN} where each image goes, or none to put them all first"
            )
        pieces = [tok(part, add_special_tokens=False)["input_ids"] if part else [] for part in parts[:-1]]
        pieces.append([int(bos), *tok(parts[-1] + "\n", add_special_tokens=False)["input_ids"]])
        return Layout(pieces, ["image"] * count)

    def process_image(self, image: Any, model: ModelInfo) -> MediaItem:
        settings = self.settings(model)
        return MediaItem(siglip_pixels(image, settings)[None], settings.image_seq_length)

    def settings(self, model: ModelInfo) -> SiglipSettings:
        """The model's pixel settings, read once per model directory."""
        return self.cached(model, "image", lambda: read_siglip_settings(Path(model.path), vlm_config(model.hf_config)))


def query_ids(
    model: ModelInfo, prefix: str, text: str, add_special_tokens: bool, augmentation: str | None = None, end: str = "\n"
) -> list[int]:
    """A ColVision query's token ids: ``prefix``, the text, ten ``augmentation`` tokens (the
    tokenizer's padding token unless given) and ``end``.

    Raises:
        InvalidRequest: no ``augmentation`` given and the tokenizer has no padding token.
    """
    tok = model.tokenizer
    if augmentation is None:
        if tok.pad_token is None:
            raise InvalidRequest(f"model '{model.name}': its tokenizer has no padding token to augment queries with")
        augmentation = tok.pad_token
    return tok(f"{prefix}{text}{augmentation * QUERY_AUGMENTATION}{end}", add_special_tokens=add_special_tokens)["input_ids"]


class ColPaliProcessor(PaliGemmaProcessor):
    """``ColPaliForRetrieval``'s prompts, as transformers' ``ColPaliProcessor`` writes them: a query
    is ``<bos>Question: {text}`` + ten ``<pad>`` + ``"\\n"``; a page is its image tokens,
    ``<bos>Describe the image.`` and ``"\\n"``."""

    reads_text = True
    visual_prompt = "Describe the image."
    query_prefix = "Question: "

    def text_prompt(self, index: int, prompt: Prompt, model: ModelInfo) -> Prompt:
        if prompt.text is None:
            return prompt
        bos = model.tokenizer.bos_token or ""
        ids = query_ids(model, f"{bos}{prompt.prompt_prefix or ''}{self.query_prefix}", prompt.text, add_special_tokens=False)
        return dataclasses.replace(prompt, text=None, token_ids=ids, prompt_prefix=None)


class _RetrieverView:
    """A loaded ``ColQwen2ForRetrieval`` as the Qwen-VL processor reads a Qwen2-VL model: the
    same model, its config the retriever's ``vlm_config``."""

    def __init__(self, model: ModelInfo) -> None:
        self._model = model
        self.hf_config = model.hf_config.vlm_config

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class ColQwen2Processor(QwenVLProcessor):
    """``ColQwen2ForRetrieval``'s prompts, as transformers' ``ColQwen2Processor`` writes them: a
    query is ``Query: {text}`` + ten ``<|endoftext|>`` + ``"\\n"``; a page is the visual prompt
    ``<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>``.
    Positions are plain (``0, 1, 2, ...`` on all three rotary axes), as transformers runs it."""

    reads_text = True
    query_prefix = "Query: "
    visual_prompt = (
        "<|im_start|>user\n{images}Describe the image.<|im_end|><|endoftext|>",
        "<|vision_start|><|image_pad|><|vision_end|>",
    )
    #: Pages at plain positions (transformers' ``ColQwen2ForRetrieval``), not the backbone's M-RoPE.
    plain_positions = True

    def query_token_ids(self, model: ModelInfo, prompt: Prompt) -> list[int]:
        """A text prompt's token ids as a query (``process_queries``)."""
        prefix = f"{prompt.prompt_prefix or ''}{self.query_prefix}"
        return query_ids(model, prefix, prompt.text or "", add_special_tokens=prompt.add_special_tokens)

    def backbone(self, model: ModelInfo) -> Any:
        """The loaded retriever as the Qwen-VL processor reads its backbone (its ``vlm_config``)."""
        return _RetrieverView(model)

    def pre_process(self, data: Any, request_id: str | None = None) -> Sequence[Prompt]:
        data = self.parse_data(data)
        model = data["model"]
        template, image = self.visual_prompt
        prompts = []
        for i, prompt in enumerate(data["prompts"]):
            if "video" in prompt.extras:
                raise InvalidRequest(f"prompt {i}: model '{model.name}' takes no videos; pass images")
            if "image" in prompt.extras and not prompt.text:
                given = prompt.extras["image"]
                count = len(given) if isinstance(given, (list, tuple)) else 1
                prompt = dataclasses.replace(prompt, text=template.format(images=image * count))
            elif "image" not in prompt.extras and prompt.text is not None:
                ids = self.query_token_ids(model, prompt)
                prompt = dataclasses.replace(prompt, text=None, token_ids=ids, prompt_prefix=None)
            prompts.append(prompt)
        made = super().pre_process({**data, "prompts": prompts, "model": self.backbone(model)}, request_id)
        if self.plain_positions:
            for prompt in made:
                if prompt.media is not None:
                    n = len(prompt.token_ids)
                    prompt.media["positions"] = torch.arange(n).expand(3, n).contiguous()
        return made


class ColQwen3_5Processor(ColQwen2Processor):
    """The prompts of colpali-engine's ``ColQwen3_5Processor`` (and ``BiQwen3_5Processor``), for
    ``ColQwen3_5`` and ``BiQwen3_5``: a query is the text + ten ``<|endoftext|>`` (its
    ``query_prefix`` is empty, no ``"\\n"``), tokenized as it is; a page is ColQwen2's visual prompt.
    Images are Qwen3-VL's, the positions Qwen3.5's M-RoPE (``Qwen3_5Model`` computes them from the
    image grids)."""

    query_prefix = ""
    #: colpali-engine's ``query_augmentation_token``.
    query_augmentation = "<|endoftext|>"
    plain_positions = False

    def query_token_ids(self, model: ModelInfo, prompt: Prompt) -> list[int]:
        prefix = f"{prompt.prompt_prefix or ''}{self.query_prefix}"
        return query_ids(
            model, prefix, prompt.text or "", prompt.add_special_tokens, augmentation=self.query_augmentation, end=""
        )

    def backbone(self, model: ModelInfo) -> Any:
        """The retriever itself: its config is the backbone's."""
        return model


class ColQwen2_5Processor(ColQwen3_5Processor):
    """The prompts of colpali-engine's ``ColQwen2_5_Processor`` (``processing_colqwen2_5.py``), for
    ``ColQwen2_5``: ColQwen3.5's (a query is the text + ten ``<|endoftext|>``: ``query_prefix`` is
    empty since colpali-engine 0.3.13, ``"Query: "`` before it; a page is the visual prompt), with
    Qwen2.5-VL's images at Qwen2.5-VL's M-RoPE positions (``Qwen2_5_VLModel`` computes them from the
    image grids; colpali-engine's first ``ColQwen2_5`` called ``get_rope_index`` itself).

    The pixel budget is ``preprocessor_config.json``'s, as ``from_pretrained`` leaves it; its
    ``max_num_visual_tokens`` (the load setting ``mm_processor_kwargs``, unless that gives
    ``max_pixels`` itself) sets ``max_pixels`` to that many 28 x 28 tiles, colpali-engine's constant."""

    def settings(self, model: ModelInfo, kind: str = "image") -> VisionSettings:
        """Qwen2.5-VL's settings, ``max_pixels`` from ``max_num_visual_tokens`` when given.

        Raises:
            InvalidRequest: a ``max_num_visual_tokens`` that is not a positive integer.
        """
        found = super().settings(model, kind)
        given = getattr(model, "mm_processor_kwargs", None) or {}
        tokens = given.get("max_num_visual_tokens")
        if tokens is None or given.get("max_pixels") is not None:
            return found
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise InvalidRequest(f"mm_processor_kwargs max_num_visual_tokens must be a positive integer, got {tokens!r}")
        return dataclasses.replace(found, max_pixels=tokens * VISUAL_TOKEN_SIDE**2)
