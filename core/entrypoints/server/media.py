"""Images in requests: chat ``image_url`` parts, Cohere's and the Scoring API's image inputs.

An image arrives as a ``data:image/...;base64,`` URI, which the image IO processor decodes under
its limits (bytes, pixels, formats). A remote ``http(s)`` URL is refused unless the server was
started with ``--allowed-media-domains`` naming its host (vLLM's option; poolkit fetches nothing by
default): then it is fetched off the event loop with a size cap (``max_image_bytes``) and a
deadline (``POOLKIT_MEDIA_FETCH_TIMEOUT`` seconds, default 5, vLLM's ``VLLM_IMAGE_FETCH_TIMEOUT``),
following redirects only to allowed hosts. Files and other schemes are always refused.

Which prompt a request's images make is the model's: a vision-language model (an architecture
with a ``media_processor``) reads text and images in one prompt, its chat template placing the
images the way vLLM renders chat content parts (``{"type": "image"}`` for each image, which the
template turns into its own placeholder); a dual encoder (CLIP, SigLIP) reads one image without text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import urllib.error
import urllib.request
from typing import Any, Sequence
from urllib.parse import urlsplit

from ...contracts.errors import InvalidRequest
from ...contracts.io import Prompt
from .errors import ApiError, short

#: Seconds a remote image may take to arrive in full (vLLM's ``VLLM_IMAGE_FETCH_TIMEOUT``).
FETCH_TIMEOUT = 5.0
#: Most bytes of a fetched image unless ``POOLKIT_MAX_IMAGE_BYTES`` says otherwise (the image IO
#: processor's cap on bytes and data URIs, which then decodes what was fetched under its own limits).
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Redirects a fetch follows, each to an allowed host.
MAX_REDIRECTS = 3
#: The content part types that carry an image (OpenAI's chat parts, vLLM's score parts).
IMAGE_PARTS = ("image_url",)
#: Tokens an image is guessed at before it is decoded (the batcher's cost, the token limit's estimate).
IMAGE_TOKEN_GUESS = 256


@dataclasses.dataclass(frozen=True)
class MediaPolicy:
    """What a server fetches: the hosts of ``--allowed-media-domains`` (none: data URIs only)."""

    allowed_domains: frozenset[str] = frozenset()

    @classmethod
    def of(cls, domains: Sequence[str] | None) -> "MediaPolicy":
        """The policy of ``--allowed-media-domains`` values (repeated, or separated by commas or spaces).

        Raises:
            InvalidRequest: a value that is a URL or has a path rather than a host name.
        """
        hosts = {d.strip().lower() for value in domains or () for d in value.replace(",", " ").split() if d.strip()}
        for host in hosts:
            if "/" in host or host.count(":") == 1:  # a URL, a path or a port; IPv6 addresses have several colons
                raise InvalidRequest(f"--allowed-media-domains takes host names (example.com), got '{short(host, 60)}'")
        return cls(frozenset(h.strip("[]") for h in hosts))

    def allows(self, host: str | None) -> bool:
        return bool(host) and host.lower() in self.allowed_domains


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number, got {value!r}") from None


def part_image_url(part: dict, where: str) -> str:
    """The URL of an ``image_url`` part: ``{"image_url": {"url": ...}}`` or ``{"image_url": "..."}``."""
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise ApiError(400, f"{where}: an image_url part needs 'image_url': {{'url': 'data:image/...;base64,...'}}", param=where)
    return url


def check_image_url(url: str, where: str, policy: MediaPolicy) -> None:
    """Refuse, before any work, an image URL the server will not read: a remote URL whose host is not
    in ``--allowed-media-domains``, a file, or any other scheme."""
    if url.startswith("data:"):
        return
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        if not policy.allows(parts.hostname):
            hint = (
                "the server fetches no remote images: send a data:image/...;base64 URI (or start the server with "
                "--allowed-media-domains)"
                if not policy.allowed_domains
                else f"'{short(parts.hostname or '', 60)}' is not in --allowed-media-domains"
            )
            raise ApiError(400, f"{where}: remote image URLs are refused: {hint}", param=where)
        return
    raise ApiError(400, f"{where}: an image must be a data:image/...;base64 URI (files and other URLs are not read)", param=where)


async def image_values(urls: Sequence[tuple[str, str]], policy: MediaPolicy, llm: Any = None) -> list[str | bytes]:
    """The images of ``(url, where)`` pairs as the image IO processor takes them: data URIs as they
    are, allowed remote images fetched (concurrently, off the event loop) as bytes, each at most the
    model's ``max_image_bytes`` (load setting; else ``POOLKIT_MAX_IMAGE_BYTES``).

    Raises:
        ApiError: 400 for a refused URL or a failed, too large or too slow fetch.
    """
    for url, where in urls:
        check_image_url(url, where, policy)
    remote = [(i, url, where) for i, (url, where) in enumerate(urls) if not url.startswith("data:")]
    values: list[str | bytes] = [url for url, _ in urls]
    if remote:
        setting = getattr(getattr(llm, "model", None), "max_image_bytes", None)
        max_bytes = int(setting or _env_number("POOLKIT_MAX_IMAGE_BYTES", MAX_IMAGE_BYTES))
        timeout = _env_number("POOLKIT_MEDIA_FETCH_TIMEOUT", FETCH_TIMEOUT)
        fetched = await asyncio.gather(*(asyncio.to_thread(fetch, url, where, policy, max_bytes, timeout) for _, url, where in remote))
        for (i, _, _), data in zip(remote, fetched):
            values[i] = data
    return values


def fetch(url: str, where: str, policy: MediaPolicy, max_bytes: int, timeout: float) -> bytes:
    """One remote image's bytes, at most ``max_bytes``, within ``timeout`` seconds in all.

    Raises:
        ApiError: 400 for a redirect to a host not allowed, an HTTP error, a failure to connect,
            more than ``max_bytes`` bytes, or a fetch slower than ``timeout``.
    """
    opener = urllib.request.build_opener(_Redirects(policy, where))
    deadline = time.monotonic() + timeout
    try:
        with opener.open(urllib.request.Request(url, headers={"User-Agent": "poolkit"}), timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise ApiError(400, f"{where}: the image is {length} bytes, more than the limit of {max_bytes}", param=where)
            chunks, size = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise ApiError(400, f"{where}: fetching the image took longer than {timeout:g} s", param=where)
                chunk = response.read1(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise ApiError(400, f"{where}: the image is more than the limit of {max_bytes} bytes", param=where)
                chunks.append(chunk)
            return b"".join(chunks)
    except ApiError:
        raise
    except urllib.error.HTTPError as exc:
        raise ApiError(400, f"{where}: fetching the image failed: HTTP {exc.code}", param=where) from None
    except TimeoutError:
        raise ApiError(400, f"{where}: fetching the image took longer than {timeout:g} s", param=where) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ApiError(400, f"{where}: cannot fetch the image: {short(reason, 120)}", param=where) from None


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to an allowed host over http(s), at most :data:`MAX_REDIRECTS` times."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, policy: MediaPolicy, where: str) -> None:
        self.policy = policy
        self.where = where

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        target = urlsplit(newurl)
        if target.scheme not in ("http", "https") or not self.policy.allows(target.hostname):
            raise ApiError(
                400, f"{self.where}: the image URL redirects to '{short(target.hostname or newurl, 60)}', which is not in "
                "--allowed-media-domains", param=self.where,
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# -- what a model makes of images -----------------------------------------------------------------


def reads_media(llm: Any) -> bool:
    """Whether the model reads text and images in one prompt (its architecture names a media processor)."""
    return getattr(llm.model.architecture, "media_processor", None) is not None


def takes_images(llm: Any) -> bool:
    """Whether the model reads images at all (a vision-language model, or a dual encoder)."""
    return reads_media(llm) or "image" in getattr(llm.model.architecture, "input_modalities", ("text",))


def has_images(messages: Sequence[Any]) -> bool:
    """Whether chat messages carry an image part."""
    return any(
        isinstance(m, dict) and isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and (p.get("type") in IMAGE_PARTS or (p.get("type") is None and "image_url" in p)) for p in m["content"])
        for m in messages
    )


def chat_parts(messages: list[dict[str, Any]], where: str) -> tuple[list[dict[str, Any]], list[tuple[str, str]], list[str]]:
    """Messages as a chat template reads them (vLLM's "openai" content format: each text part
    ``{"type": "text", "text": ...}``, each image ``{"type": "image"}``), the image URLs in order
    with the field each came from, and the texts of the messages.

    Raises:
        ApiError: a part that is neither text nor an image.
    """
    rendered: list[dict[str, Any]] = []
    urls: list[tuple[str, str]] = []
    texts: list[str] = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            rendered.append(message)
            texts += [content] if isinstance(content, str) and content else []
            continue
        parts = []
        for j, part in enumerate(content):
            at = f"{where}[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(part, dict) and (kind in IMAGE_PARTS or (kind is None and "image_url" in part)):
                urls.append((part_image_url(part, at), at))
                parts.append({"type": "image"})
            elif isinstance(part, dict) and kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
                texts += [part["text"]] if part["text"] else []
            else:
                raise ApiError(
                    400, f"{at}: a content part must be {{'type': 'text', 'text': ...}} or {{'type': 'image_url', "
                    f"'image_url': {{'url': ...}}}}, got type {short(kind, 30)!r}", param=at,
                )
        rendered.append({**message, "content": parts})
    return rendered, urls, texts


def check_image_count(llm: Any, count: int, where: str) -> None:
    """Refuse more images in one prompt than the load setting ``limit_mm_per_prompt`` allows, before
    any is fetched or decoded (the media IO processor applies its default limit itself)."""
    limit = llm.model.limit_mm_per_prompt.get("image")
    if limit is not None and count > limit:
        raise ApiError(400, f"{where}: {count} images, more than the limit of {limit} per prompt (limit_mm_per_prompt)", param=where)


def image_prompt(llm: Any, text: str | None, images: list[Any], where: str, add_special_tokens: bool = True) -> Prompt:
    """The prompt of ``text`` with ``images`` for the model: a vision-language model reads both (its
    media IO processor checks the image placeholders); a dual encoder one image and no text (vLLM's
    rule for CLIP); a text-only model none.

    Raises:
        ApiError: 400 for images the model does not read.
    """
    if reads_media(llm):
        return Prompt(text=text or None, extras={"image": list(images)}, add_special_tokens=add_special_tokens)
    if not takes_images(llm):
        raise ApiError(400, f"{where}: model '{short(llm.model.name, 60)}' reads text only; send no images", param=where)
    if text or len(images) != 1:
        raise ApiError(
            400, f"{where}: this model (a dual encoder such as CLIP) embeds one image without text, or text without "
            "images; send them as separate inputs", param=where,
        )
    return Prompt(extras={"image": images[0]})
