"""Cohere's embed work (``/v2/embed``), whatever door asks for it: Cohere's HTTP route
(:mod:`poolkit.entrypoints.server.routes_cohere`) parses its JSON into an :class:`Embed`, calls
:func:`embed` with the :class:`~poolkit.entrypoints.serving.call.Call` and the served model, and
writes the embeddings in the types asked for, with Cohere's billed units.

A dual encoder (CLIP, SigLIP) embeds each image alone (one content part per input); a
vision-language model (one whose renderer reads media) also takes inputs of text and images
together (:meth:`poolkit.inputs.Renderer.accept`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Sequence

from ...contracts.errors import InputTooLong, InvalidRequest
from ...contracts.io import Prompt
from ...inputs.chat import checked_text
from ...inputs.media import check_image_url
from ...inputs.renderer import Renderer
from ...inputs.request import PoolRequest, Reads
from ...runtime.columns import Results
from .call import Call
from .errors import ApiError
from .inputs import check_bit_width, check_count, check_dimensions, pooling_params, run_request
from .state import ModelState
from .work import check_response, check_truncation

if TYPE_CHECKING:
    from ...api.llm import LLM

#: One content part of an input: its type (``text``, ``image_url`` or ``video_url``) and its text or
#: URL (``None`` where the part lacks the field its type names).
Part = tuple[str, Optional[str]]


@dataclasses.dataclass(frozen=True)
class Embed:
    """``/v2/embed``: one of ``texts``, ``images`` (data URIs) or ``inputs`` (each a list of content
    parts), the side they are encoded in, the embedding types and width, and the truncation."""

    texts: list[str] | None = None
    images: list[str] | None = None
    inputs: list[list[Part]] | None = None
    #: The side, as the wire names it: a record of that alone, which the inputs and parameters fill.
    side: PoolRequest = PoolRequest()
    embedding_types: Sequence[str] = ("float",)
    output_dimension: int | None = None
    #: ``NONE`` (a longer input is an error), ``START`` or ``END``.
    truncate: str = "END"
    max_tokens: int | None = None
    cache_salt: str | None = None

    @classmethod
    def of(cls, body: Any, side: PoolRequest) -> Embed:
        """The request of a body with the same fields (an HTTP route's parsed JSON) and the side it
        names; an input's part is an object with ``type`` and the field it names (a URL part's value
        may carry ``url``)."""
        fields = {f.name: getattr(body, f.name) for f in dataclasses.fields(cls) if f.name not in ("inputs", "side")}
        inputs = None if body.inputs is None else [[_part(part) for part in entry.content] for entry in body.inputs]
        return cls(**fields, inputs=inputs, side=side)


def _part(part: Any) -> Part:
    value = getattr(part, part.type)
    return part.type, getattr(value, "url", value)


class Embeddings(NamedTuple):
    """What ``/v2/embed`` computed: each input's embedding, the types to write them in (those asked
    for, each once, in their order), the input tokens, and whether an input was an image (then
    Cohere bills every token as an image token, as vLLM does)."""

    results: Results
    types: list[str]
    tokens: int
    images: bool


async def embed(req: Embed, call: Call, st: ModelState, llm: LLM, number_bytes: Callable[[list[str], int | None], float]) -> Embeddings:
    """``/v2/embed``: the embeddings of the request's inputs.

    Args:
        number_bytes: the bytes of one result number in the answer, written in the given embedding
            types with rows of the given width (the response-bytes limit counts every type written).
    """
    renderer = st.renderer
    assert renderer is not None  # set when the model loads, before any request
    items = _items(st, req, renderer.reads)
    types = list(dict.fromkeys(req.embedding_types))
    if not types:
        raise ApiError(400, "embedding_types must not be empty", param="embedding_types")
    check_dimensions(st, req.output_dimension, "output_dimension")
    width = req.output_dimension or st.embedding_size
    check_bit_width(width, types, "embedding_types")
    if req.max_tokens is not None and req.max_tokens < 1:
        raise ApiError(400, f"max_tokens must be a positive number, got {req.max_tokens}", param="max_tokens")
    truncate = None
    if req.truncate != "NONE":
        truncate = req.max_tokens or -1
        check_truncation(llm, truncate)
    params = pooling_params(
        dimensions=req.output_dimension,
        truncate_prompt_tokens=truncate,
        truncation_side={"START": "left", "END": "right"}.get(req.truncate),
    ).with_salt(req.cache_salt)
    per_number = number_bytes(types, width)
    check_response(st, len(items) * (width or 0), per_number, estimated=True)
    images = {i for i, (kind, _) in enumerate(items) if kind in ("image", "media")}
    limit = req.max_tokens if req.truncate == "NONE" else None
    check = (lambda prompts: _check_max_tokens(renderer, prompts, limit)) if limit is not None else None
    # the side, its text before texts and media, and the rule for text and media together: the renderer's
    record = dataclasses.replace(
        req.side, inputs=[value if kind == "text" else _content(kind, value) for kind, value in items], task="embed", params=params
    )
    try:
        _, results = await run_request(call, st, llm, record, per_number, check)
    except InputTooLong as exc:  # truncate=NONE and an input over the model's limit: Cohere's way out
        raise InvalidRequest(
            f"This model's maximum context length is {exc.limit} tokens. However, input {exc.index} has {exc.given} tokens "
            "(truncate=NONE). Please reduce the length of the input, or set truncate to END or START."
        ) from None
    # An image runs as one sequence without text tokens: it is billed as one token.
    tokens = sum(max(1, len(ids)) if i in images else len(ids) for i, (_, ids) in enumerate(results))
    return Embeddings(results, types, tokens, bool(images))


def _content(kind: str, value: Any) -> list[dict[str, Any]]:
    """An image (a dual encoder's, alone) or an input of text and media as chat content parts, in order."""
    parts = value if kind == "media" else [("image", value)]
    return [{"type": "text", "text": v} if part == "text" else {"type": f"{part}_url", f"{part}_url": {"url": v}} for part, v in parts]


def _items(st: ModelState, req: Embed, reads: Reads) -> list[tuple[str, Any]]:
    """The request's inputs as ``("text", text)`` / ``("image", data URI)``, checked; for a
    vision-language model (``reads.media``) every input with an image (or a video) is ``("media", parts)``,
    its ``("text", text)``, ``("image", url)`` and ``("video", url)`` parts in order."""
    given = [name for name in ("texts", "images", "inputs") if getattr(req, name) is not None]
    if not given:
        raise ApiError(400, "One of texts, images, or inputs must be provided", param="texts")
    if len(given) > 1:
        raise ApiError(400, f"send only one of texts, images or inputs, got {' and '.join(given)}", param=given[1])
    name = given[0]
    items: list[tuple[str, Any]] = []
    if req.texts is not None:
        items = [("text", t) for t in req.texts]
    elif req.images is not None:
        items = [("media", [("image", u)]) if reads.media else ("image", u) for u in req.images]
    elif reads.media:
        items = [_media_input(i, parts) for i, parts in enumerate(req.inputs or ())]
    else:
        items = [_single_part(i, parts) for i, parts in enumerate(req.inputs or ())]
    check_count(st, len(items), name)
    for i, (kind, value) in enumerate(items):
        where = f"{name}[{i}]"
        if kind == "text":
            checked_text(value, where)
        elif kind == "image" and not value.startswith("data:"):
            raise ApiError(400, f"{where}: images must be data:image/...;base64 URIs (URLs and files are not fetched)", param=where)
        elif kind == "media":
            for part, v in value:
                if part == "text":
                    checked_text(v, f"{where}.content")
                elif part == "video" and not reads.videos:
                    raise ApiError(400, f"{where}: this model reads no videos; send text and image_url parts", param=f"{where}.content")
                else:
                    check_image_url(v, where, st.server.media)
    return items


def _single_part(index: int, parts: list[Part]) -> tuple[str, Any]:
    """One Cohere input of a model that embeds text or an image, not both: ``("text", text)`` or
    ``("image", url)``."""
    where = f"inputs[{index}].content"
    if len(parts) != 1:
        raise ApiError(
            400,
            f"inputs[{index}] must have exactly one content part: a text or an image_url (a model embeds "
            "text-only or image-only inputs, not both)",
            param=where,
        )
    ((kind, value),) = parts
    if kind == "video_url":
        raise ApiError(400, f"inputs[{index}]: this model reads no videos; send a text or an image_url", param=where)
    if value is None:
        raise _missing(index, kind)
    return ("text" if kind == "text" else "image"), value


def _media_input(index: int, parts: list[Part]) -> tuple[str, Any]:
    """One Cohere input of a vision-language model: ``("text", text)`` for a single text part, else
    ``("media", parts)`` (any number of text and ``image_url`` parts, in order)."""
    media: list[tuple[str, str]] = []
    for kind, value in parts:
        if value is None:
            raise _missing(index, kind)
        media.append(("text" if kind == "text" else kind[: -len("_url")], value))
    if len(media) == 1 and media[0][0] == "text":
        return media[0]
    return "media", media


def _missing(index: int, kind: str) -> ApiError:
    """The refusal of input ``index``'s part of type ``kind`` without the field its type names."""
    return ApiError(400, f"inputs[{index}]: {'a' if kind == 'text' else 'an'} {kind} part needs '{kind}'", param=f"inputs[{index}].content")


def _check_max_tokens(renderer: Renderer, prompts: Sequence[Prompt], max_tokens: int) -> None:
    """``truncate=NONE`` with ``max_tokens``: an input longer than that is an error (one longer than
    the model's limit is the engine's refusal, :class:`~poolkit.contracts.errors.InputTooLong`)."""
    for prompt in prompts:
        if prompt.text is None:
            continue
        n = len(renderer.tokenize(prompt.text, prefix=prompt.prompt_prefix)["input_ids"])
        if n > max_tokens:
            raise InvalidRequest(
                f"Input of {n} tokens exceeds max_tokens={max_tokens} with truncate=NONE. "
                "Set truncate to END or START to allow truncation."
            )
