"""A score request's two sides: checked, paired and cut, with vLLM's rules and wording.

A side's inputs are texts, or :class:`MediaItem` for inputs with images (vLLM's multimodal score
input, ``{"content": [{"type": "image_url", "image_url": {"url": ...}}]}``); any scorer that embeds
each side (bi-encoder cosine, late interaction) reads them through ``ScoreRunner.prepare``.

``LLM.score``, ``LLM.rerank`` and the server's score routes take their sides through these
functions, so pairing (1:1, 1:N, N:N) and the per-side token limits (``max_tokens_per_query`` /
``max_tokens_per_doc``) have one home; so do the prompts of pairs read together (a cross-encoder's:
:func:`pair_prompts`), which every scorer gets through the renderer (its ``ScoreRunner``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from ..contracts.errors import InvalidRequest
from ..contracts.io import Prompt
from ..contracts.scoring import CROSS_ENCODER_KEYS, score_extra
from ..plugins.lookup import registry
from .chat import content_part
from .request import MediaItem

if TYPE_CHECKING:
    import torch

    from ..contracts.model import ModelInfo
    from ..runtime.engine import Engine
    from .renderer import Renderer

#: The per-side limits a score request may set in ``PoolingParams.extra_kwargs`` (vLLM's names).
SIDE_LIMITS = ("max_tokens_per_query", "max_tokens_per_doc")


#: Content part types that carry an image: vLLM's ``image_url`` (a data URI, a file path or, on
#: the server, fetched bytes) and its offline ``image_pil`` (a PIL image).
IMAGE_PARTS = ("image_url", "image_pil")


def _part(part: Any, where: str) -> tuple[str, Any]:
    """A content part (:func:`~poolkit.inputs.chat.content_part`) as ``("text", str)`` or ``("image", value)``."""
    kind, value = content_part(part)
    if kind == "text" and value is not None:
        return "text", value
    if kind in IMAGE_PARTS:
        if value is None or (isinstance(value, str) and not value):
            raise InvalidRequest(f"{where}: an {kind} part needs its image ({{'url': ...}})")
        return "image", value
    raise InvalidRequest(
        f"{where}: a content part must be {{'type': 'text', 'text': ...}} or {{'type': 'image_url', 'image_url': {{'url': ...}}}}, "
        f"got {('type ' + repr(kind)) if kind else type(part).__name__}"
    )


def _content(parts: Any, where: str, names: list[str] | None = None) -> str | MediaItem:
    """One input of several content parts (named ``names``, else ``where.content[j]``): their
    text, or a :class:`MediaItem` when one is an image."""
    if not isinstance(parts, (list, tuple)) or not parts:
        raise InvalidRequest(f"{where}: 'content' must be a non-empty list of content parts")
    found = [_part(p, names[j] if names else f"{where}.content[{j}]") for j, p in enumerate(parts)]
    texts = [v for kind, v in found if kind == "text"]
    images = tuple(v for kind, v in found if kind == "image")
    return MediaItem("\n".join(texts) or None, images) if images else "\n".join(texts)


#: The keys of the prompt dicts ``LLM.embed`` takes (vLLM's ``TextPrompt`` / ``TokensPrompt``), which a
#: score side does not: it takes texts, and images as ``{"content": [...]}``.
PROMPT_KEYS = ("prompt", "prompt_token_ids", "multi_modal_data")

#: How a score side takes an input with images, for messages that refuse another shape.
CONTENT_SHAPE = "{'content': [{'type': 'image_url', 'image_url': {'url': ...}}, {'type': 'text', 'text': ...}]}"


def _refuse_prompt(item: Any, where: str) -> None:
    """Refuse ``LLM.embed``'s prompt dict as a score input, saying what scoring takes instead."""
    if not isinstance(item, dict) or not any(key in item for key in PROMPT_KEYS):
        return
    if "multi_modal_data" in item:
        raise InvalidRequest(
            f"{where}: scoring takes an input with images as {CONTENT_SHAPE} (vLLM's ScoreMultiModalParam), "
            "not as {'prompt', 'multi_modal_data'}"
        )
    raise InvalidRequest(f"{where}: scoring takes texts as strings, and inputs with images as {CONTENT_SHAPE}, not prompt dicts")


def score_side(data: Any, what: str) -> list[Any]:
    """One side of a score request as a list of inputs: strings, and :class:`MediaItem` for inputs
    with images.

    A side is a string, vLLM's multimodal ``{"content": [parts]}`` (one input: all its parts, say an
    image and a text, in one prompt, as vLLM's ``ScoreMultiModalParam``), or a list mixing strings,
    ``{"content": [parts]}`` and single parts, one input each.

    Raises:
        InvalidRequest: another shape (``LLM.embed``'s ``{"prompt", "multi_modal_data"}`` dict: the
            message shows the ``{"content": [...]}`` shape), an unknown content part, or an empty list
            (vLLM's wording).
    """
    one = isinstance(data, (str, MediaItem)) or (isinstance(data, dict) and "content" in data)
    _refuse_prompt(data, what)
    items: Any = [data] if one else data
    if items is None or not isinstance(items, (list, tuple)):
        raise InvalidRequest(f"score inputs must be a string or a list of strings, got {type(data).__name__}")
    if not items:
        raise InvalidRequest(f"At least one {what} element must be given")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, (str, MediaItem)):
            out.append(item)
        elif isinstance(item, dict) and "content" in item:
            out.append(_content(item["content"], f"{what} {i}"))
        elif isinstance(item, dict) and "type" in item:
            out.append(_content([item], what, [f"{what} {i}"]))
        else:
            _refuse_prompt(item, f"{what} {i}")
            raise InvalidRequest(f"{what} {i} must be a string, got {type(item).__name__}")
    return out


def has_media(*sides: Sequence[Any]) -> bool:
    """Whether any input of the sides has images."""
    return any(isinstance(item, MediaItem) for side in sides for item in side)


def pair(first: Any, second: Any) -> tuple[list[Any], list[Any]]:
    """Both sides as equal-length lists: 1:1, one against N (1:N), or N:N.

    Raises:
        InvalidRequest: with vLLM's wording, for an empty side or lengths that do not pair.
    """
    first = score_side(first, "text")
    second = score_side(second, "text_pair")
    if len(first) != 1 and len(first) != len(second):
        raise InvalidRequest("Input lengths must be either 1:1, 1:N or N:N")
    return (first * len(second) if len(first) == 1 else first), second


def check_side_limit(name: str, limit: Any, max_model_len: int | None) -> None:
    """Check a ``max_tokens_per_query`` / ``max_tokens_per_doc`` value (vLLM's wording).

    Raises:
        InvalidRequest: not a positive integer, or not below the model's ``max_model_len``.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidRequest(f"{name} must be a positive integer, got {limit!r}")
    if max_model_len is not None and limit >= max_model_len:
        raise InvalidRequest(f"{name} ({limit}) must be less than max_model_len ({max_model_len})")


def cut_sides(engine: Engine, first: list[Any], second: list[Any], pooling_params: Any) -> tuple[list[Any], list[Any]]:
    """Queries and documents cut to ``max_tokens_per_query`` / ``max_tokens_per_doc`` tokens of
    their own (``PoolingParams.extra_kwargs``, as in vLLM), before any template or pairing; an
    input with images is never cut (the engine refuses to truncate one).

    Raises:
        InvalidRequest: a limit that is not a positive integer below ``max_model_len``.
    """
    extra = score_extra(pooling_params)
    out = []
    for name, texts in zip(SIDE_LIMITS, (first, second)):
        limit = extra.get(name)
        if limit is None:
            out.append(texts)
            continue
        check_side_limit(name, limit, engine.model.max_model_len.value)
        out.append([engine.cut_text(text, limit) if isinstance(text, str) else text for text in texts])
    return out[0], out[1]


def skiplist(model: ModelInfo, kind: str) -> torch.Tensor | None:
    """The token ids whose vectors a late-interaction model leaves out of MaxSim for a ``kind``
    (``"query"`` / ``"document"``) input, as a tensor, or ``None`` (its ColBERT skiplist)."""
    return registry("io_processor").get("colbert").skipped(model, kind)


def pair_prompts(
    model: ModelInfo,
    first: list[Any],
    second: list[Any],
    chat_template: str | None,
    instruction: str | None,
    kwargs: dict[str, Any] | None = None,
    renderer: Renderer | None = None,
) -> list[Prompt]:
    """Prompts of (query, document) pairs read together (a cross-encoder's): through the given score
    template, a sentence-transformers CrossEncoder export's own chat template, the model's score
    template, or as tokenizer pairs.

    ``kwargs`` are the request's ``chat_template_kwargs``: variables of the template, and the
    CrossEncoder keys (``prompt``, ``prompt_name``, ``restore_suffix``) where a pair gets the
    model's sentence-transformers prompt.

    With the model's ``renderer``, for a model that reads text and images in one prompt (a
    vision-language cross-encoder), the prompts are made as its renderer makes them, and a side may
    be a :class:`MediaItem`: its text (its images' placeholders in it) or, without text, one
    placeholder per image (joined by new lines, as vLLM writes them) fills the template, and the
    pair's images follow in the order the template places the sides (:func:`_media_pair_prompts`).

    Raises:
        InvalidRequest: settings that do not go together, or that the model's way of pairing ignores.
    """
    if renderer is not None and renderer.reads.media:
        return list(renderer.prompts(_media_pair_prompts(model, first, second, chat_template, instruction, kwargs, renderer)))
    return _text_pair_prompts(model, first, second, chat_template, instruction, kwargs)


def _media_pair_prompts(
    model: ModelInfo,
    first: list[Any],
    second: list[Any],
    chat_template: str | None,
    instruction: str | None,
    kwargs: dict[str, Any] | None,
    renderer: Renderer,
) -> list[Prompt]:
    """Pair prompts whose sides may hold images: each such side is a mark in the template, then its
    text, and the images of the marks go to ``Prompt.extras["image"]`` in the order the marks appear.

    Raises:
        InvalidRequest: a template that leaves out a side with images, or a way of pairing without a
            template (tokenizer pairs cannot hold images).
    """
    marks: dict[str, MediaItem] = {}

    def marked(side: list[Any], role: str) -> list[Any]:
        out = []
        for i, item in enumerate(side):
            if isinstance(item, MediaItem):
                mark = f"\x00{role}{i}\x00"  # no template writes a NUL: the side's place in the prompt
                marks[mark] = item
                item = mark
            out.append(item)
        return out

    prompts = _text_pair_prompts(model, marked(first, "q"), marked(second, "d"), chat_template, instruction, kwargs)
    if not marks:
        return prompts
    placeholder = _image_placeholder(renderer)
    for i, prompt in enumerate(prompts):
        own = [m for m in (f"\x00q{i}\x00", f"\x00d{i}\x00") if m in marks]
        if not own:
            continue
        if prompt.text is None or prompt.text_pair is not None:
            raise InvalidRequest(
                f"model '{model.name}' scores plain text pairs: inputs with images need a score template (chat_template=...)"
            )
        if any(m not in prompt.text for m in own):
            raise InvalidRequest(f"pair {i}: the score template leaves out the input with images")
        images: list[Any] = []
        for mark in sorted(own, key=prompt.text.index):
            item = marks[mark]
            prompt.text = prompt.text.replace(mark, item.text if item.text is not None else "\n".join([placeholder] * len(item.images)))
            images += item.images
        prompt.extras["image"] = images
    return prompts


def _image_placeholder(renderer: Renderer) -> str:
    """What stands for one image in the model's prompts (its media processor's default placeholder)."""
    processor = renderer.media_processor
    for replacement in processor.replacements(renderer.model):
        if replacement.modality == "image":
            if replacement.default is not None:
                return replacement.default
            target = replacement.target
            return target if isinstance(target, str) else renderer.model.tokenizer.convert_ids_to_tokens(int(target))
    raise InvalidRequest(f"model '{renderer.model.name}' takes no images")


def _text_pair_prompts(
    model: ModelInfo,
    first: list[str],
    second: list[str],
    chat_template: str | None,
    instruction: str | None,
    kwargs: dict[str, Any] | None = None,
) -> list[Prompt]:
    """:func:`pair_prompts` of text pairs."""
    processors = registry("io_processor")
    kwargs = dict(kwargs or {})
    chosen = {key: kwargs.pop(key) for key in CROSS_ENCODER_KEYS if key in kwargs}
    restore = chosen.pop("restore_suffix", None)
    asks_prompt = any(v is not None for v in chosen.values())
    name = getattr(model.hf_config, "score_template", None)
    if chat_template is not None or (name and not (model.st is not None and model.st.renders_pairs)):
        if asks_prompt:
            raise InvalidRequest(
                "chat_template_kwargs prompt and prompt_name choose a sentence-transformers CrossEncoder's "
                "prompt; a score template takes instruction"
            )
        instruction = instruction if instruction is not None else kwargs.pop("instruction", None)
        data = (first, second, instruction, kwargs)
        if chat_template is not None:
            return list(processors.get("score_template").with_template(chat_template).pre_process(data))
        return list(processors.get(name).pre_process(data))
    if asks_prompt and instruction is not None:
        raise InvalidRequest("send either instruction or chat_template_kwargs prompt / prompt_name, not both", param="instruction")
    prompt = instruction if instruction is not None else _request_prompt(model, chosen)
    if model.st is not None and model.st.renders_pairs:
        data = {"queries": first, "documents": second, "model": model, "prompt": prompt,
                "template_kwargs": kwargs, "restore_suffix": restore}
        return list(processors.get("chat_template_pair").pre_process(data))
    if instruction is not None:
        raise InvalidRequest("instruction needs a score template (chat_template=...)")
    if kwargs:
        raise InvalidRequest(
            f"chat_template_kwargs {', '.join(sorted(kwargs))} need a chat template: model '{model.name}' "
            "scores plain text pairs (pass chat_template=...)"
        )
    prompts = list(processors.get("text_pair").pre_process((first, second)))
    for p in prompts:
        p.prompt_prefix = prompt  # sentence-transformers puts a pair's prompt before its query
    return prompts


def _request_prompt(model: ModelInfo, chosen: dict[str, Any]) -> str | None:
    """A pair's sentence-transformers prompt: the request's ``prompt`` (``""``: none), else its
    ``prompt_name`` among the model's saved prompts, else the saved default, as
    sentence-transformers resolves them."""
    if chosen.get("prompt") is not None:
        return chosen["prompt"]
    name = chosen.get("prompt_name")
    if name is None:
        name = model.default_prompt_name
        return model.prompts.get(name) if name else None
    if name not in model.prompts:
        known = ", ".join(sorted(model.prompts)) or "none"
        raise InvalidRequest(
            f"Unknown saved CrossEncoder prompt '{name}' (chat_template_kwargs prompt_name); the model's prompts: {known}"
        )
    return model.prompts[name]
