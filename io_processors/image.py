"""The image IO processor: images in prompts' ``extras["image"]`` become ``pixel_values``.

An image may be a ``PIL.Image.Image``, a local file path (``str`` or ``pathlib.Path``), raw
``bytes``, or a ``data:image/...;base64,`` URI. Remote URLs are refused: poolkit fetches nothing
named by request data. Decoding is guarded: only common raster formats are opened, the pixel
count, the sides and the aspect ratio are checked from the header before anything is decoded, and
bytes and data URIs have a size cap. Pre-processing is the model's own (``preprocessor_config.json``, read with transformers'
``AutoImageProcessor``), so the pixels are exactly what transformers would feed the model.
The same guarded decoding is the built-in vision-language families' (:class:`MediaProcessor`, the
core's media processor decoding here).

Needs Pillow: ``pip install 'poolkit[vision]'``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import re
import threading
from pathlib import Path
from typing import Any, Sequence

import torch

from poolkit.config.environment import env_number
from poolkit.contracts import media
from poolkit.contracts.errors import InvalidRequest
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.io import IOProcessor, Prompt

#: Most pixels (width x height) an image may have; ``POOLKIT_MAX_IMAGE_PIXELS`` overrides it.
MAX_IMAGE_PIXELS = 40_000_000
#: Most bytes of an image given as bytes or a data URI (decoded); ``POOLKIT_MAX_IMAGE_BYTES`` overrides it.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Most times an image's longer side may be its shorter (Qwen2-VL's ``MAX_RATIO``); a thin strip passes
#: the pixel cap yet grows without bound where a processor scales its short side up (CLIP's 224).
#: ``POOLKIT_MAX_IMAGE_ASPECT_RATIO`` overrides it.
MAX_IMAGE_ASPECT_RATIO = 200
#: Most pixels either side of an image may have (the largest JPEG, GIF and WebP store is smaller);
#: ``POOLKIT_MAX_IMAGE_SIDE`` overrides it.
MAX_IMAGE_SIDE = 65_535
#: The formats Pillow may open (others, such as EPS which runs Ghostscript, are refused).
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
PREPROCESSOR_CONFIG = "preprocessor_config.json"

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_DATA_URI = re.compile(r"^data:(image/[a-zA-Z0-9.+-]+)?((?:;[^;,]*)*),", re.DOTALL)
_VIDEO_DATA_URI = re.compile(r"^data:((?:video|image)/[a-zA-Z0-9.+-]+)?((?:;[^;,]*)*),", re.DOTALL)
#: The animated image formats a video may come in (its frames decoded by Pillow); other containers
#: (mp4, webm, ...) are decoded with PyAV (``pip install 'poolkit[video]'``).
ANIMATED_FORMATS = ("GIF", "WEBP", "PNG")


def _limit(env: str, default: int, positive: bool = False) -> int:
    """The whole number ``env`` holds, else ``default``."""
    return env_number(env, default, "a positive integer" if positive else "an integer", integer=True, positive=positive)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise InvalidRequest("images need Pillow: install `poolkit[vision]` (pip install pillow)") from None
    return Image


class ImageProcessor(IOProcessor):
    """Turns each prompt's ``extras["image"]`` into ``extras["pixel_values"]`` (``[3, H, W]`` float32),
    with any other tensor the model's image processor gives beside them (a NaFlex processor's
    ``spatial_shapes`` and ``pixel_attention_mask``).

    ``pre_process`` takes ``{"prompts": [...], "model": PoolingModel}`` (and optionally
    ``"allow_local_files": False``, which a server should pass so request data cannot name files
    on its disk) and returns the prompts, images replaced by pixel values; prompts without an
    image pass through unchanged.

    Example:
        >>> prompts = registry("io_processor").get("image").pre_process(
        ...     {"prompts": [Prompt(extras={"image": "cat.png"})], "model": llm.model})
        >>> prompts[0].extras["pixel_values"].shape
        torch.Size([3, 224, 224])
    """

    def __init__(self) -> None:
        self._processors: dict[str, Any] = {}
        self._lock = threading.Lock()

    def parse_data(self, data: Any) -> dict[str, Any]:
        return media.media_data(data, "the image IO processor")

    def pre_process(self, data: Any, request_id: str | None = None) -> Sequence[Prompt]:
        data = self.parse_data(data)
        prompts: list[Prompt] = list(data["prompts"])
        with_media = any("image" in p.extras or "video" in p.extras for p in prompts)
        model = data["model"]
        if not with_media:
            return prompts
        allow_files = bool(data.get("allow_local_files", True))
        processor = self._image_processor(model)
        for i, prompt in enumerate(prompts):
            self._check_dual_encoder_prompt(i, prompt, model)
        max_pixels, max_bytes = decode_limits(model)
        out = []
        for i, prompt in enumerate(prompts):
            if "image" not in prompt.extras:
                out.append(prompt)
                continue
            given = prompt.extras["image"]
            with media.opened(given, self.load_image(i, given, max_pixels, max_bytes, allow_files)) as image:
                try:
                    processed = processor(images=[image], return_tensors="pt")
                except Exception as exc:  # the model's own pre-processing refused this image
                    raise InvalidRequest(f"prompt {i}: cannot pre-process the image: {_first_line(exc)}") from None
            extras = {k: v for k, v in prompt.extras.items() if k != "image"}
            # Every tensor the processor gives goes with the pixels (a NaFlex processor's patch grid and mask).
            extras.update((k, v[0]) for k, v in processed.items() if isinstance(v, torch.Tensor))
            extras["pixel_values"] = processed["pixel_values"][0].float()
            out.append(dataclasses.replace(prompt, extras=extras))
        return out

    @staticmethod
    def _check_dual_encoder_prompt(index: int, prompt: Prompt, model: Any) -> None:
        """A dual encoder's (CLIP's, SigLIP's) image prompt: one image, no text, no video (vLLM's rule)."""
        if not ("image" in prompt.extras or "video" in prompt.extras):
            return
        if "video" in prompt.extras:
            raise InvalidRequest(f"prompt {index}: model '{model.name}' takes no videos; pass images")
        if prompt.text or prompt.token_ids:
            raise InvalidRequest(
                f"prompt {index}: CLIP accepts text-only or image-only inputs, not both! "
                "You must pass an image with an empty text prompt."
            )
        image = prompt.extras["image"]
        if isinstance(image, (list, tuple)):
            if len(image) != 1:
                raise InvalidRequest(f"prompt {index}: one image per prompt, got {len(image)}")
            prompt.extras["image"] = image[0]

    # -- the model's pre-processing -----------------------------------------------------------

    def _image_processor(self, model: Any) -> Any:
        """The model's transformers image processor, loaded once per model directory."""
        modalities = model.architecture.input_modalities
        path = Path(model.path)
        if "image" not in modalities or not (path / PREPROCESSOR_CONFIG).is_file():
            why = "its architecture reads text only" if "image" not in modalities else f"it has no {PREPROCESSOR_CONFIG}"
            raise InvalidRequest(f"model '{model.name}' takes no images ({why}); pass text prompts")
        key = str(path.resolve())
        with self._lock:
            processor = self._processors.get(key)
            if processor is None:
                _pil()
                from transformers import AutoImageProcessor

                try:
                    processor = AutoImageProcessor.from_pretrained(key, local_files_only=True)
                except Exception as exc:
                    raise InvalidRequest(
                        f"cannot load the image processor of model '{model.name}': {_first_line(exc)}"
                    ) from None
                self._processors[key] = processor
        return processor

    # -- decoding -------------------------------------------------------------------------------

    @staticmethod
    def load_image(index: int, value: Any, max_pixels: int, max_bytes: int, allow_files: bool = True) -> Any:
        """Decode one image safely into a loaded ``PIL.Image.Image``.

        Raises:
            InvalidRequest: the value is of an unsupported kind, a remote URL, too large (bytes or
                pixels), of a shape over the limits (a side, the aspect ratio), not a file, or not a
                decodable image of a supported format.
        """
        Image = _pil()
        where = f"prompt {index}"
        if isinstance(value, Image.Image):
            _check_pixels(where, value.size, max_pixels)
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            if len(raw) > max_bytes:
                raise InvalidRequest(f"{where}: the image is {len(raw)} bytes, more than the limit of {max_bytes}")
            return _decode(where, io.BytesIO(raw), max_pixels)
        if isinstance(value, str) and value.startswith("data:"):
            return _decode(where, io.BytesIO(_data_uri(where, value, max_bytes)), max_pixels)
        if isinstance(value, str):
            scheme = _SCHEME.match(value)
            if scheme:
                kind = scheme.group(1).lower()
                if kind in ("http", "https"):
                    raise InvalidRequest(
                        f"{where}: remote image URLs are disabled (poolkit fetches nothing named by request data); "
                        "download the image and pass its bytes, a file path or a data: URI"
                    )
                raise InvalidRequest(f"{where}: '{kind}://' image URLs are not supported; pass a file path, bytes or a data: URI")
        if isinstance(value, (str, Path)):
            if not allow_files:
                raise InvalidRequest(f"{where}: local image files are not accepted here; pass bytes or a data: URI")
            path = Path(value)
            if not path.is_file():
                raise InvalidRequest(f"{where}: image file '{_short(str(value))}' does not exist")
            return _decode(where, path, max_pixels)
        raise InvalidRequest(
            f"{where}: an image must be a PIL image, a file path, bytes or a data:image/...;base64 URI, "
            f"got {type(value).__name__}"
        )


def decode_video(index: int, value: Any, max_pixels: int, max_bytes: int, max_frames: int, allow_files: bool = True) -> list[Any]:
    """Decode a video given as bytes, a ``data:video/...;base64`` (or animated image) URI or a file
    into its frames (RGB PIL images): an animated GIF, WebP or PNG with Pillow, any other container
    with PyAV. Each frame's size is checked from the header before it is decoded, and decoding
    stops past ``max_frames``.

    Raises:
        InvalidRequest: a value of another kind, too many bytes or frames, frames too large, a
            container that does not decode, or one that needs PyAV where it is not installed.
    """
    where = f"prompt {index}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) > max_bytes:
            raise InvalidRequest(f"{where}: the video is {len(raw)} bytes, more than the limit of {max_bytes}")
    elif isinstance(value, str) and value.startswith("data:"):
        raw = _data_uri(where, value, max_bytes, video=True)
    elif isinstance(value, (str, Path)) and not _SCHEME.match(str(value)):
        if not allow_files:
            raise InvalidRequest(f"{where}: local video files are not accepted here; pass bytes or a data: URI")
        path = Path(value)
        if not path.is_file() or path.stat().st_size > max_bytes:
            why = "does not exist" if not path.is_file() else f"is more than the limit of {max_bytes} bytes"
            raise InvalidRequest(f"{where}: video file '{_short(str(value))}' {why}")
        raw = path.read_bytes()
    else:
        raise InvalidRequest(f"{where}: a video must be a list of frames, bytes, a file path or a data:video/...;base64 URI")
    Image = _pil()
    try:
        animated = Image.open(io.BytesIO(raw), formats=ANIMATED_FORMATS)
    except Image.UnidentifiedImageError:
        return _container_frames(where, raw, max_pixels, max_frames)
    except Exception as exc:
        raise InvalidRequest(f"{where}: cannot read the video ({_first_line(exc)})") from None
    with animated:
        _check_pixels(where, animated.size, max_pixels)
        count = getattr(animated, "n_frames", 1)
        if count > max_frames:
            raise InvalidRequest(f"{where}: the video has {count} frames, more than the limit of {max_frames}")
        frames = []
        try:
            for n in range(count):
                animated.seek(n)
                frames.append(animated.convert("RGB"))
        except Exception as exc:
            raise InvalidRequest(f"{where}: cannot decode the video ({_first_line(exc)})") from None
    return frames


def _container_frames(where: str, raw: bytes, max_pixels: int, max_frames: int) -> list[Any]:
    """The frames of a video container (mp4, webm, ...) decoded with PyAV."""
    try:
        import av
    except ImportError:
        raise InvalidRequest(
            f"{where}: not an animated GIF, WebP or PNG; other video containers (mp4, webm, ...) need PyAV: "
            "install `poolkit[video]` (pip install av)"
        ) from None
    frames = []
    try:
        with av.open(io.BytesIO(raw)) as container:
            stream = container.streams.video[0]
            _check_pixels(where, (stream.codec_context.width, stream.codec_context.height), max_pixels)
            for frame in container.decode(stream):
                if len(frames) == max_frames:
                    raise InvalidRequest(f"{where}: the video has more than the limit of {max_frames} frames")
                _check_pixels(where, (frame.width, frame.height), max_pixels)
                frames.append(frame.to_image().convert("RGB"))
    except InvalidRequest:
        raise
    except Exception as exc:  # PyAV's errors: not a container it knows, a broken stream
        raise InvalidRequest(f"{where}: not a decodable video ({_first_line(exc)})") from None
    if not frames:
        raise InvalidRequest(f"{where}: the video has no frames")
    return frames


def read_processor_config(path: Path, files: Sequence[str] = (PREPROCESSOR_CONFIG,)) -> dict[str, Any]:
    """The first of ``files`` (``preprocessor_config.json``) the model directory ``path`` has, parsed;
    ``{}`` when it has none.

    Raises:
        InvalidRequest: the file is unreadable or not JSON.
    """
    for name in files:
        file = path / name
        if file.is_file():
            try:
                return json.loads(file.read_text())
            except (OSError, ValueError) as exc:
                raise InvalidRequest(f"cannot read {file.name}: {exc}") from None
    return {}


def decode_limits(model: Any) -> tuple[int, int]:
    """The most pixels and bytes an image given to ``model`` may have (``load_image``'s ``max_pixels``
    and ``max_bytes``): the load settings ``max_image_pixels`` / ``max_image_bytes``, else
    ``POOLKIT_MAX_IMAGE_PIXELS`` / ``POOLKIT_MAX_IMAGE_BYTES``, else 40,000,000 pixels and 20 MiB."""
    pixels = getattr(model, "max_image_pixels", None) or _limit("POOLKIT_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS)
    size = getattr(model, "max_image_bytes", None) or _limit("POOLKIT_MAX_IMAGE_BYTES", MAX_IMAGE_BYTES)
    return int(pixels), int(size)


#: Most images (or videos) one prompt of a vision-language model may carry unless the load setting
#: ``limit_mm_per_prompt`` or ``POOLKIT_MAX_IMAGES_PER_PROMPT`` says otherwise.
MAX_MEDIA_PER_PROMPT = 16


def media_per_prompt(model: Any, kind: str) -> int:
    """Most images (``kind="image"``) or videos one prompt may carry: the load setting
    ``limit_mm_per_prompt`` (vLLM's), else ``POOLKIT_MAX_IMAGES_PER_PROMPT``, else 16."""
    limits = getattr(model, "limit_mm_per_prompt", None) or {}
    if limits.get(kind) is not None:
        return int(limits[kind])
    return _limit("POOLKIT_MAX_IMAGES_PER_PROMPT", MAX_MEDIA_PER_PROMPT)


class MediaProcessor(media.MediaProcessor):
    """The built-in vision-language families' media processor (:attr:`poolkit.Architecture.media_processor`):
    the core's (:class:`poolkit.contracts.media.MediaProcessor`, which runs the steps every family
    shares), decoding images under this module's guards and limits (:func:`decode_limits`) and
    taking as many items per prompt as :func:`media_per_prompt` allows."""

    def load_image(self, index: int, value: Any, model: Any, allow_files: bool) -> Any:
        return ImageProcessor.load_image(index, value, *decode_limits(model), allow_files)

    def limit(self, model: Any, kind: str) -> int:
        return media_per_prompt(model, kind)


def _data_uri(where: str, uri: str, max_bytes: int, video: bool = False) -> bytes:
    match = (_VIDEO_DATA_URI if video else _DATA_URI).match(uri[:512])
    if match is None or match.group(1) is None:
        example = "data:video/mp4;base64,..." if video else "data:image/png;base64,..."
        raise InvalidRequest(f"{where}: a data URI must look like '{example}'")
    if "base64" not in [p.strip().lower() for p in match.group(2).split(";")]:
        raise InvalidRequest(f"{where}: the image data URI must be base64-encoded (';base64,')")
    payload = uri[match.end():]
    if len(payload) > (max_bytes + 2) // 3 * 4 + 4:
        raise InvalidRequest(f"{where}: the image data URI is larger than the limit of {max_bytes} bytes")
    try:
        raw = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{where}: the image data URI is not valid base64") from None
    if len(raw) > max_bytes:
        raise InvalidRequest(f"{where}: the image is {len(raw)} bytes, more than the limit of {max_bytes}")
    return raw


def _check_pixels(where: str, size: tuple[int, int], max_pixels: int) -> None:
    """Refuse an image by its size alone (from the header, before decoding): more pixels than
    ``max_pixels``, an empty one, a side over ``POOLKIT_MAX_IMAGE_SIDE`` or an aspect ratio over
    ``POOLKIT_MAX_IMAGE_ASPECT_RATIO``."""
    width, height = size
    if width * height > max_pixels:
        raise InvalidRequest(
            f"{where}: the image is too large ({width}x{height} = {width * height} pixels, limit {max_pixels})"
        )
    if width < 1 or height < 1:
        raise InvalidRequest(f"{where}: the image is empty ({width}x{height})")
    longer, shorter = max(width, height), min(width, height)
    max_ratio = _limit("POOLKIT_MAX_IMAGE_ASPECT_RATIO", MAX_IMAGE_ASPECT_RATIO, positive=True)
    if longer > shorter * max_ratio:
        raise InvalidRequest(
            f"{where}: the image is {width}x{height} pixels: its aspect ratio must be at most {max_ratio}, "
            f"got {round(longer / shorter, 1):g}"
        )
    max_side = _limit("POOLKIT_MAX_IMAGE_SIDE", MAX_IMAGE_SIDE, positive=True)
    if longer > max_side:
        raise InvalidRequest(f"{where}: the image is {width}x{height} pixels, a side longer than the limit of {max_side}")


def _decode(where: str, source: Any, max_pixels: int) -> Any:
    """Open (header only), check the pixel count, then decode; every failure is an InvalidRequest."""
    Image = _pil()
    try:
        image = Image.open(source, formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise InvalidRequest(f"{where}: the image is too large ({_first_line(exc)})") from None
    except Image.UnidentifiedImageError:
        raise InvalidRequest(f"{where}: not a decodable image (supported formats: {', '.join(FORMATS)})") from None
    except Exception as exc:
        raise InvalidRequest(f"{where}: cannot read the image ({_first_line(exc)})") from None
    try:
        _check_pixels(where, image.size, max_pixels)
        image.load()
    except InvalidRequest:
        image.close()
        raise
    except Exception as exc:
        image.close()
        raise InvalidRequest(f"{where}: not a decodable image ({_first_line(exc)})") from None
    return image


@hookimpl
def poolkit_register_io_processors(register):
    register("image", ImageProcessor)
