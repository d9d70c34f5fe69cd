"""A loaded model's media rules: which media it reads, how many in one prompt, which URLs, and the
prompt that text and media make together for a model that reads them without a chat template.

The renderer (:class:`poolkit.inputs.renderer.Renderer`) holds one :class:`MediaRules` and applies
it to every input with media, whichever surface it came from; :func:`guess_tokens` is what the
server admits the work of a request's inputs by before they are rendered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from ..contracts.errors import InvalidRequest
from ..contracts.io import IOProcessor, Prompt
from ..runtime.estimates import estimate_costs
from . import chat as chats
from .media import IMAGE_TOKEN_GUESS, MediaPolicy, check_image_url, image_values

if TYPE_CHECKING:
    from ..contracts.architecture import LoadedModel


class MediaRules:
    """The media rules of ``model`` under ``policy``, with ``processor`` its media IO processor
    (a vision-language model's; ``None`` for any other)."""

    def __init__(self, model: LoadedModel, policy: MediaPolicy, processor: IOProcessor | None) -> None:
        self.model, self.policy, self.processor = model, policy, processor

    @property
    def reads_media(self) -> bool:
        return self.processor is not None

    @property
    def takes_images(self) -> bool:
        return self.reads_media or "image" in self.model.architecture.input_modalities

    @property
    def takes_videos(self) -> bool:
        return bool(getattr(self.processor, "reads_videos", False))

    @property
    def part_types(self) -> tuple[str, ...]:
        return ("image_url", "video_url") if self.takes_videos else ("image_url",)

    def check_count(self, kinds: Sequence[str], where: str) -> None:
        """Refuse more images (or videos) in one prompt than the load setting ``limit_mm_per_prompt``
        allows, before any is fetched or decoded (the media IO processor applies its default limit itself)."""
        for kind in ("image", "video"):
            count = sum(1 for k in kinds if k == kind)
            limit = self.model.limit_mm_per_prompt.get(kind)
            if limit is not None and count > limit:
                raise InvalidRequest(
                    f"{where}: {count} {kind}s, more than the limit of {limit} per prompt (limit_mm_per_prompt)", param=where
                )

    def check_url(self, url: str, where: str) -> None:
        """Refuse, before any work, a media URL the policy will not read (:func:`poolkit.inputs.media.check_image_url`)."""
        check_image_url(url, where, self.policy)

    async def values(self, urls: Sequence[tuple[str, str]]) -> list[str | bytes]:
        """The media of ``(url, where)`` pairs: data URIs as they are, allowed remote ones fetched."""
        return await image_values(urls, self.policy, self.model.max_image_bytes)

    def offline_values(self, media: Sequence[tuple[str, Any, str]]) -> list[Any]:
        """The media of an offline input as they are: images, and data URIs the policy reads."""
        for _, url, where in media:
            if isinstance(url, str):
                self.check_url(url, where)
                if not url.startswith("data:"):
                    raise InvalidRequest(f"{where}: remote media are fetched by the server only; send a data URI", param=where)
        return [url for _, url, _ in media]

    def to_prompt(
        self, text: str | None, media: list[Any], where: str, add_special_tokens: bool = True, kinds: Sequence[str] | None = None
    ) -> Prompt:
        """The prompt of ``text`` with ``media`` (images, or videos where ``kinds`` says so) for the
        model: a vision-language model reads both (its media processor checks the placeholders); a
        dual encoder one image and no text (vLLM's rule for CLIP); a text-only model none.

        Raises:
            InvalidRequest: media the model does not read.
        """
        kinds = list(kinds) if kinds is not None else ["image"] * len(media)
        if self.reads_media:
            extras: dict[str, Any] = {}
            for kind, value in zip(kinds, media):
                extras.setdefault(kind, []).append(value)
            if not extras:
                extras["image"] = []
            return Prompt(text=text or None, extras=extras, add_special_tokens=add_special_tokens)
        if not self.takes_images:
            # the whole name, which the server's error handler replaces with the served one
            raise InvalidRequest(f"{where}: model '{self.model.name}' reads text only; send no images", param=where)
        if "video" in kinds:
            raise InvalidRequest(f"{where}: model '{self.model.name}' takes no videos; send images", param=where)
        if text or len(media) != 1:
            raise InvalidRequest(
                f"{where}: this model (a dual encoder such as CLIP) embeds one image without text, or text without "
                "images; send them as separate inputs", param=where,
            )
        return Prompt(extras={"image": media[0]})


def media_cost(prompts: Sequence[Any]) -> int:
    """Tokens the media of ``prompts`` are guessed at before they are decoded."""
    count = 0
    for p in prompts:
        if isinstance(p, Prompt):
            for kind in ("image", "video"):
                if kind in p.extras:
                    count += len(p.extras[kind]) if isinstance(p.extras[kind], list) else 1
    return IMAGE_TOKEN_GUESS * count


def guess_tokens(inputs: Sequence[Any]) -> int:
    """Tokens of a request's inputs (texts, ``{"prompt_token_ids": [...]}``, prompts with media)
    guessed before they are rendered: what the server admits work on the worker thread by."""
    return sum(estimate_costs([chats.as_prompt(item) for item in inputs])) + media_cost(inputs)
