"""The Qwen-VL families' media processor: prompts of text, images and videos for Qwen2-VL,
Qwen2.5-VL and Qwen3-VL (their architectures' ``media_processor``).

Each image is decoded under the image IO processor's limits, resized to the model's pixel budget
(``min_pixels`` / ``max_pixels``, sides multiples of ``patch_size × merge_size``), rescaled,
normalised and cut into flattened patches, in the order transformers' Qwen2-VL image processor
gives them (``merge × merge`` blocks of patches, each patch repeated over ``temporal_patch_size``
frames). A video (a list of PIL images, or a uint8 array ``[T, H, W, C]``) is pre-processed as
transformers' video processors do it: every frame resized alike (bicubic with antialiasing, as
torchvision resizes; Qwen3-VL's budget counts the whole video), the frames padded to a multiple
of ``temporal_patch_size`` by repeating the last, each ``temporal_patch_size`` frames one
temporal patch. Every frame given is used (no frame sampling); a video of raw frames is taken to
run at 24 frames a second, transformers' assumption when it has no metadata.

The prompt's text is tokenized and each ``<|image_pad|>`` / ``<|video_pad|>`` placeholder becomes
one token per merged patch — for Qwen3-VL a video becomes, per temporal patch, its ``<t seconds>``
timestamp, ``<|vision_start|>``, the placeholders and ``<|vision_end|>``, as Qwen3-VL's processor
writes it. The multimodal rotary positions (temporal, height, width) are counted as transformers'
``get_rope_index`` counts them, Qwen2.5-VL's video temporal positions in ``tokens_per_second``
steps. A prompt with media and no text gets one ``<|vision_start|>…<|vision_end|>`` per item.

Pre-processing is NumPy and Pillow in one pass per image (Pillow's resize, then one fused
rescale-normalise and one transpose), without transformers' per-image processor objects.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from poolkit.contracts.errors import InvalidRequest
from poolkit.contracts.media import Expansion, MediaItem, PromptReplacement

from ...io_processors.image import (
    PREPROCESSOR_CONFIG,
    MediaProcessor,
    _limit,
    decode_limits,
    decode_video,
    read_processor_config,
)
from ..blocks.vision_language import CLIP_MEAN, CLIP_STD, to_rgb

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.model import ModelInfo

#: transformers' IMAGENET_STANDARD_MEAN / _STD, Qwen3-VL's default.
HALF = (0.5, 0.5, 0.5)
#: Most frames one video may have (transformers' ``max_frames``), unless ``POOLKIT_MAX_VIDEO_FRAMES`` says otherwise.
MAX_VIDEO_FRAMES = 768
#: The frame rate of a video given as frames, which carries none (transformers assumes the same).
VIDEO_FPS = 24.0
VIDEO_PROCESSOR_CONFIG = "video_preprocessor_config.json"
MEDIA_TOKENS = {"image": "<|image_pad|>", "video": "<|video_pad|>"}


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


@dataclasses.dataclass(frozen=True)
class Family:
    """What the Qwen-VL families' pre-processing does differently (their architecture's ``media_family``).

    Attributes:
        image: image settings where the checkpoint's processor config names none.
        video: video settings where the checkpoint's video processor config names none.
        video_budget: ``"frame"``: ``min_pixels`` / ``max_pixels`` bound each frame (Qwen2-VL's
            video processor); ``"video"``: all frames together (Qwen3-VL's).
        video_time: a video's temporal rotary positions: ``"patches"`` (0, 1, 2, ... per temporal
            patch: Qwen2-VL), ``"seconds"`` (``tokens_per_second`` per second: Qwen2.5-VL) or
            ``"timestamps"`` (each temporal patch its own run after a ``<t seconds>`` text: Qwen3-VL).
    """

    image: VisionSettings
    video: VisionSettings
    video_budget: str = "frame"
    video_time: str = "patches"


_QWEN2_VIDEO = VisionSettings(min_pixels=128 * 28 * 28, max_pixels=28 * 28 * 768)
QWEN2_VL = Family(VisionSettings(), _QWEN2_VIDEO)
QWEN2_5_VL = Family(VisionSettings(), _QWEN2_VIDEO, video_time="seconds")
QWEN3_VL = Family(
    VisionSettings(patch_size=16, min_pixels=65536, max_pixels=16777216, mean=HALF, std=HALF),
    VisionSettings(patch_size=16, min_pixels=128 * 32 * 32, max_pixels=32 * 32 * 768, mean=HALF, std=HALF),
    video_budget="video",
    video_time="timestamps",
)


def family(model: ModelInfo) -> Family:
    """The pre-processing rules of ``model``'s architecture (Qwen2-VL's unless it names others; a
    loaded model is a :class:`~poolkit.contracts.architecture.LoadedModel`, which has one)."""
    return getattr(getattr(model, "architecture", None), "media_family", QWEN2_VL)


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


def video_smart_resize(
    frames: int, height: int, width: int, temporal: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """The size every frame of a video is resized to when its budget counts all ``frames``
    together (Qwen3-VL's rule: small frames first scaled up to ``factor``).

    Raises:
        InvalidRequest: fewer frames than one temporal patch, or an aspect ratio of 200 or more.
    """
    if frames < temporal:
        raise InvalidRequest(f"a video needs at least {temporal} frames, got {frames}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise InvalidRequest(f"the video's aspect ratio must be below 200, got {max(height, width) / min(height, width):.0f}")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    t = round(frames / temporal) * temporal
    if t * h * w > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif t * h * w < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def load_video(index: int, value: Any, max_pixels: int, max_frames: int) -> np.ndarray:
    """One video as uint8 RGB frames ``[T, H, W, 3]``: a list of PIL images (converted as images
    are) or of ``[H, W, C]`` arrays, or one ``[T, H, W, C]`` array (C 3, or 1 for grey).

    Raises:
        InvalidRequest: not a video of that kind, frames of different sizes, too many frames or pixels.
    """
    where = f"prompt {index}"
    if isinstance(value, np.ndarray) and value.ndim == 4:
        frames = list(value)
    elif isinstance(value, (list, tuple)) and value:
        frames = list(value)
    else:
        raise InvalidRequest(f"{where}: a video must be a list of PIL images or a uint8 array [frames, height, width, channels]")
    if len(frames) > max_frames:
        raise InvalidRequest(f"{where}: the video has {len(frames)} frames, more than the limit of {max_frames}")
    arrays = []
    for frame in frames:
        if isinstance(frame, np.ndarray):
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] not in (1, 3):
                raise InvalidRequest(f"{where}: video frames must be uint8 [height, width, 3] arrays, got {frame.dtype} {list(frame.shape)}")
            arrays.append(np.repeat(frame, 3, axis=-1) if frame.shape[-1] == 1 else frame)
        elif hasattr(frame, "mode") and hasattr(frame, "size"):
            arrays.append(np.asarray(to_rgb(frame), dtype=np.uint8))
        else:
            raise InvalidRequest(f"{where}: a video frame must be a PIL image or a uint8 array, got {type(frame).__name__}")
    if len({a.shape for a in arrays}) != 1:
        raise InvalidRequest(f"{where}: the video's frames differ in size; give every frame the same height and width")
    height, width = arrays[0].shape[:2]
    if height * width > max_pixels or height < 1 or width < 1:
        raise InvalidRequest(f"{where}: the video's frames are too large ({width}x{height} pixels, limit {max_pixels})")
    return np.stack(arrays)


def patchify_video(
    frames: np.ndarray, settings: VisionSettings, budget: str = "frame"
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A video's frames (uint8 ``[T, H, W, 3]``) as flattened patches ``[t·h·w, C·T·P·P]`` float32
    and its patch grid ``(t, h, w)``, as transformers' Qwen2-VL / Qwen3-VL video processors give
    them (``budget``: ``"frame"`` or ``"video"``, see :class:`Family`)."""
    count, height, width = frames.shape[:3]
    p, m, tp = settings.patch_size, settings.merge_size, settings.temporal_patch_size
    if budget == "video":
        h, w = video_smart_resize(count, height, width, tp, settings.factor, settings.min_pixels, settings.max_pixels)
    else:
        h, w = smart_resize(height, width, settings.factor, settings.min_pixels, settings.max_pixels)
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    if (h, w) != (height, width):
        # torchvision's bicubic resize of uint8 frames (which transformers' video processors call): in float32,
        # antialiased, clamped, rounded back to uint8 (its native uint8 kernel, bilinear only, is not used)
        resized = F.interpolate(video.float(), size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        video = resized.clamp_(0, 255).round_().to(torch.uint8)
    # transformers' fused rescale-normalise: (x - mean / rescale) / (std / rescale), float32
    mean = torch.tensor(settings.mean, dtype=torch.float32) * (1.0 / settings.rescale)
    std = torch.tensor(settings.std, dtype=torch.float32) * (1.0 / settings.rescale)
    pixels = ((video.float() - mean[:, None, None]) / std[:, None, None]).numpy()  # [T, C, H, W]
    if pad := -count % tp:
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)])
    gt, gh, gw = pixels.shape[0] // tp, h // p, w // p
    blocks = pixels.reshape(gt, tp, 3, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(blocks).reshape(gt * gh * gw, 3 * tp * p * p), (gt, gh, gw)


def frame_timestamps(frames: int, temporal: int, fps: float = VIDEO_FPS) -> list[float]:
    """Qwen3-VL's timestamp of each temporal patch: the mean time of its first and last frame
    (the frame list padded with its last frame, as the processor pads it)."""
    indices = list(range(frames)) + [frames - 1] * (-frames % temporal)
    seconds = [i / fps for i in indices]
    return [(seconds[i] + seconds[i + temporal - 1]) / 2 for i in range(0, len(seconds), temporal)]


#: A video given whole, as encoded bytes, a data URI or a file (decoded by :func:`poolkit.io_processors.image.decode_video`).
ENCODED_VIDEO = (str, bytes, bytearray, memoryview, Path)


def split_videos(value: Any) -> list[Any]:
    """A prompt's ``video`` value as a list of videos: one video (a list of frames, a 4-D array, or
    encoded: bytes, a data URI, a file) or a list of them (encoded ones as bytes or data URIs)."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return [value] if value.ndim == 4 else list(value) if value.ndim == 5 else [value]
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (list, tuple)) or _encoded(v) or (isinstance(v, np.ndarray) and v.ndim == 4) for v in value):
            return list(value)
        return [value]
    return [value]


def _encoded(value: Any) -> bool:
    """Whether a list item is a whole encoded video (bytes or a data URI); a path in a list is a frame."""
    return isinstance(value, (bytes, bytearray, memoryview)) or (isinstance(value, str) and value.startswith("data:"))


class QwenVLProcessor(MediaProcessor):
    """Prompts with images and videos for the Qwen-VL architectures (their ``media_processor``).

    A video is a list of frames, a ``[T, H, W, C]`` array, or encoded: bytes, a
    ``data:video/...;base64`` URI or a file (an animated GIF, WebP or PNG; mp4, webm, ... with PyAV).

    ``pre_process`` takes what the image IO processor takes (``{"prompts", "model",
    "allow_local_files"}``) and returns the prompts, each prompt with media as token ids with
    :attr:`Prompt.media`: ``image_pixels`` ``[patches, C·T·P·P]`` and ``image_grid_thw``
    ``[images, 3]`` (``video_pixels`` and ``video_grid_thw`` likewise) and ``positions``
    ``[3, tokens]``.
    """

    reads_videos = True

    def replacements(self, model: ModelInfo) -> Sequence[PromptReplacement]:
        """Each ``<|image_pad|>`` / ``<|video_pad|>`` (the config's ``image_token_id`` /
        ``video_token_id``) becomes one per merged patch; for Qwen3-VL a video becomes, per
        temporal patch, its ``<t seconds>``, ``<|vision_start|>``, its patches and ``<|vision_end|>``."""
        config = model.hf_config
        hint = " (in <|vision_start|>...<|vision_end|>)"
        video = int(config.video_token_id)
        timestamps = None
        if family(model).video_time == "timestamps":
            timestamps = functools.partial(_timestamped, model.tokenizer, video, int(config.vision_config.temporal_patch_size))
        return tuple(
            PromptReplacement(kind, token, replace, default=f"<|vision_start|>{MEDIA_TOKENS[kind]}<|vision_end|>", hint=hint)
            for kind, token, replace in (("image", int(config.image_token_id), None), ("video", video, timestamps))
        )

    def split(self, kind: str, value: Any) -> list[Any]:
        return split_videos(value) if kind == "video" else super().split(kind, value)

    def process_image(self, image: Any, model: ModelInfo) -> MediaItem:
        flat, grid = patchify(image, self.settings(model, "image"))
        return _item(flat, grid, model)

    def load_video(self, index: int, value: Any, model: ModelInfo, allow_files: bool) -> np.ndarray:
        """A video as uint8 frames ``[T, H, W, 3]`` (:func:`load_video`), an encoded one decoded first."""
        max_pixels, max_bytes = decode_limits(model)
        max_frames = _limit("POOLKIT_MAX_VIDEO_FRAMES", MAX_VIDEO_FRAMES)
        if isinstance(value, ENCODED_VIDEO):
            value = decode_video(index, value, max_pixels, max_bytes, max_frames, allow_files)
        return load_video(index, value, max_pixels, max_frames)

    def process_video(self, video: np.ndarray, model: ModelInfo) -> MediaItem:
        flat, grid = patchify_video(video, self.settings(model, "video"), family(model).video_budget)
        return _item(flat, grid, model, frames=video.shape[0])

    def extra_media(self, expansion: Expansion, model: ModelInfo) -> dict[str, torch.Tensor]:
        """The multimodal rotary positions ``[3, tokens]`` (:func:`rope_positions`)."""
        return {"positions": torch.from_numpy(rope_positions(len(expansion.ids), self._spans(expansion, model)))}

    def _spans(self, expansion: Expansion, model: ModelInfo) -> list[tuple[int, int, int, int, Any]]:
        """The media runs of the expanded ids as ``(start, t, h, w, time step)`` (merged-grid sizes)."""
        config = model.hf_config
        rules = family(model)
        spans: list[tuple[int, int, int, int, Any]] = []
        for kind, item, start, length in expansion.placements:
            gt, gh, gw = item.data["grid_thw"]
            h, w = gh // item.meta["merge"], gw // item.meta["merge"]
            if kind == "video" and rules.video_time == "timestamps":  # each temporal patch its own run
                token = int(config.video_token_id)
                ids = expansion.ids
                spans += [(at, 1, h, w, 1) for at in range(start, start + length) if ids[at] == token and ids[at - 1] != token]
                continue
            step: Any = 1
            if kind == "video" and rules.video_time == "seconds":
                temporal = int(config.vision_config.temporal_patch_size)
                per_second = int(getattr(config.vision_config, "tokens_per_second", 1) or 1)
                step = per_second * torch.tensor(temporal / VIDEO_FPS, dtype=torch.float32)
            spans.append((start, gt, h, w, step))
        return spans

    def settings(self, model: ModelInfo, kind: str = "image") -> VisionSettings:
        """The model's pixel settings for images or videos, read once per model directory, with
        the load setting ``mm_processor_kwargs`` (``min_pixels``, ``max_pixels``) over the checkpoint's."""
        def read() -> VisionSettings:
            rules = family(model)
            if kind == "video":
                return read_settings(Path(model.path), model.hf_config, rules.video, (VIDEO_PROCESSOR_CONFIG, PREPROCESSOR_CONFIG))
            return read_settings(Path(model.path), model.hf_config, rules.image)

        found = self.cached(model, kind, read)
        kwargs = getattr(model, "mm_processor_kwargs", None) or {}
        budget = {k: int(kwargs[k]) for k in ("min_pixels", "max_pixels") if kwargs.get(k) is not None}
        return dataclasses.replace(found, **budget) if budget else found


def read_settings(
    path: Path, config: PretrainedConfig, defaults: VisionSettings | None = None, files: Sequence[str] = (PREPROCESSOR_CONFIG,)
) -> VisionSettings:
    """:class:`VisionSettings` from the first of ``files`` the model directory has (when it has
    one), the vision config, then ``defaults`` (Qwen2-VL's image settings unless given)."""
    raw = read_processor_config(path, files)
    vision = config.vision_config
    size = raw.get("size") or {}
    defaults = defaults or VisionSettings()
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


def _item(flat: np.ndarray, grid: tuple[int, int, int], model: ModelInfo, frames: int = 1) -> MediaItem:
    """An image's or video's patches as a media item: one feature per merged patch."""
    merge = int(model.hf_config.vision_config.spatial_merge_size)
    gt, gh, gw = grid
    return MediaItem(flat, gt * (gh // merge) * (gw // merge), {"grid_thw": grid}, {"merge": merge, "frames": frames})


def _timestamped(tok: Any, token: int, temporal: int, item: MediaItem) -> list[int]:
    """Qwen3-VL's tokens of a video: per temporal patch its ``<t seconds>``, ``<|vision_start|>``,
    its merged patches and ``<|vision_end|>``, as Qwen3-VL's processor writes them."""
    start, end = (tok.convert_tokens_to_ids(x) for x in ("<|vision_start|>", "<|vision_end|>"))
    _, gh, gw = item.data["grid_thw"]
    run = [token] * ((gh // item.meta["merge"]) * (gw // item.meta["merge"]))
    ids: list[int] = []
    for stamp in frame_timestamps(item.meta["frames"], temporal):
        ids += tok(f"<{stamp:.1f} seconds>", add_special_tokens=False)["input_ids"]
        ids += [start, *run, end]
    return ids


def rope_positions(length: int, spans: list[tuple[int, int, int, int, Any]]) -> np.ndarray:
    """The ``[3, length]`` multimodal rotary positions of a prompt whose media runs are ``spans``
    (``(start, t, h, w, step)`` in merged patches, in order): text counts on from the last
    position on all three axes; a run's tokens get the start plus their (temporal patch × step,
    row, column), and the text after it starts past the run's longer side, as transformers'
    ``get_rope_index`` counts."""
    out = np.empty((3, length), dtype=np.int64)
    at, pos = 0, 0
    for start, t, h, w, step in spans:
        out[:, at:start] = np.arange(pos, pos + start - at)
        pos += start - at
        temporal = (torch.arange(t) * step).long().numpy() if isinstance(step, torch.Tensor) else np.arange(t) * step
        tt, hh, ww = np.meshgrid(temporal, np.arange(h), np.arange(w), indexing="ij")
        count = t * h * w
        out[:, start : start + count] = np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + pos
        at = start + count
        pos += max(h, w)
    out[:, at:] = np.arange(pos, pos + length - at)
    return out

