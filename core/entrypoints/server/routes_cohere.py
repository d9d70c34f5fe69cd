"""Cohere route: ``POST /v2/embed`` (Embed v2: texts, data-URI images, float/binary/ubinary/base64)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...contracts.errors import InvalidRequest
from ...contracts.io import Prompt
from ...contracts.params import PoolingParams
from ..encodings import binary, cohere_base64, ubinary
from ..protocol import CohereEmbedRequest
from .deps import Model, State
from .errors import ApiError, short
from .guard import StrictRoute
from .inputs import check_count, check_dimensions, check_model, check_text, pooling_params
from .state import ModelState
from .wire import JSON_NUMBER_BYTES, check_finite, request_id, respond
from .work import check_response, check_tokens, check_truncation, until_done

router = APIRouter(route_class=StrictRoute)

_ENCODERS: dict[str, Callable[[Any], Any]] = {
    "float": lambda t: t.tolist(),
    "binary": binary,
    "ubinary": ubinary,
    "base64": cohere_base64,
}

#: Bytes a dimension takes in the response in each type, about (``binary``: a number of up to four
#: characters per eight dimensions).
_TYPE_BYTES = {"float": JSON_NUMBER_BYTES, "base64": 16 / 3, "binary": 0.5, "ubinary": 0.5}


@router.post("/v2/embed", summary="Embeddings (Cohere Embed v2): float, binary, ubinary, base64.")
async def cohere_embed(body: CohereEmbedRequest, request: Request, st: State, llm: Model) -> Response:
    check_model(st, body.model)
    items = _items(st, body)
    prompt_name, prefix = _input_type(llm, body.input_type)
    types = list(dict.fromkeys(body.embedding_types))
    if not types:
        raise ApiError(400, "embedding_types must not be empty", param="embedding_types")
    check_dimensions(st, body.output_dimension, "output_dimension")
    width = body.output_dimension or st.embedding_size
    if width and width % 8 and ({"binary", "ubinary"} & set(types)):
        raise ApiError(
            400,
            f"Embedding dimension must be a multiple of 8 for binary embedding types, but got {width}.",
            param="embedding_types",
        )
    if body.max_tokens is not None and body.max_tokens < 1:
        raise ApiError(400, f"max_tokens must be a positive number, got {body.max_tokens}", param="max_tokens")
    truncate = None
    if body.truncate != "NONE":
        truncate = body.max_tokens or -1
        check_truncation(llm, truncate)
    params = pooling_params(
        dimensions=body.output_dimension,
        truncate_prompt_tokens=truncate,
        truncation_side={"START": "left", "END": "right"}.get(body.truncate),
    )
    raw = [(prefix + value if prefix else value) if kind == "text" else "" for kind, value in items]
    task, prompts, checked = llm.prepare(raw, params, pooling_task="embed", prompt_name=prompt_name)
    images = [i for i, (kind, _) in enumerate(items) if kind == "image"]
    tokens = llm.estimate_tokens(prompts, checked)
    check_tokens(st, tokens)
    check_response(st, len(items) * (width or 0), sum(_TYPE_BYTES[kind] for kind in types), estimated=True)
    if images or body.truncate == "NONE":
        untruncated = body.truncate == "NONE"
        work = _work(
            st, task, prompts, checked, [(i, items[i][1]) for i in images], untruncated, body.max_tokens if untruncated else None
        )
        results = await until_done(request, st, st.batcher.call(work, tokens + 256 * len(images)))
    else:
        results = await until_done(request, st, st.batcher.submit(task, prompts, checked))
    image_set = set(images)
    # An image runs as one sequence without text tokens: it is billed as one token.
    counts = [max(1, len(ids)) if i in image_set else len(ids) for i, (_, ids) in enumerate(results)]
    input_tokens = sum(counts)
    st.metrics.answered(len(results), input_tokens)
    rid = request_id(request, "embd")

    def build() -> dict:
        check_finite(results)
        embeddings = {kind: [_ENCODERS[kind](t) for t, _ in results] for kind in types}
        # vLLM's rule: a request with an image bills every token as an image token.
        billed = {"input_tokens": 0, "image_tokens": input_tokens} if images else {"input_tokens": input_tokens, "image_tokens": 0}
        out: dict[str, Any] = {"id": rid, "embeddings": embeddings}
        if body.texts is not None:
            out["texts"] = body.texts
        out["meta"] = {"api_version": {"version": "2"}, "billed_units": billed, "tokens": {"input_tokens": input_tokens}}
        out["response_type"] = "embeddings_by_type"
        return out

    return await respond(build, sum(t.numel() for t, _ in results) * len(types))


def _items(st: ModelState, body: CohereEmbedRequest) -> list[tuple[str, str]]:
    """The request's inputs as ``("text", text)`` / ``("image", data URI)``, checked."""
    given = [name for name in ("texts", "images", "inputs") if getattr(body, name) is not None]
    if not given:
        raise ApiError(400, "One of texts, images, or inputs must be provided", param="texts")
    if len(given) > 1:
        raise ApiError(400, f"send only one of texts, images or inputs, got {' and '.join(given)}", param=given[1])
    name = given[0]
    items: list[tuple[str, str]] = []
    if name == "texts":
        items = [("text", t) for t in body.texts]
    elif name == "images":
        items = [("image", u) for u in body.images]
    else:
        for i, entry in enumerate(body.inputs):
            if len(entry.content) != 1:
                raise ApiError(
                    400,
                    f"inputs[{i}] must have exactly one content part: a text or an image_url (a model embeds "
                    "text-only or image-only inputs, not both)",
                    param=f"inputs[{i}].content",
                )
            part = entry.content[0]
            if part.type == "text":
                if part.text is None:
                    raise ApiError(400, f"inputs[{i}]: a text part needs 'text'", param=f"inputs[{i}].content")
                items.append(("text", part.text))
            else:
                url = part.image_url.url if hasattr(part.image_url, "url") else part.image_url
                if url is None:
                    raise ApiError(400, f"inputs[{i}]: an image_url part needs 'image_url'", param=f"inputs[{i}].content")
                items.append(("image", url))
    check_count(st, len(items), name)
    for i, (kind, value) in enumerate(items):
        where = f"{name}[{i}]"
        if kind == "text":
            check_text(value, where)
        elif not value.startswith("data:"):
            raise ApiError(400, f"{where}: images must be data:image/...;base64 URIs (URLs and files are not fetched)", param=where)
    return items


def _instructions(llm: Any) -> dict[str, Any]:
    return dict(getattr(llm.model.hf_config, "task_instructions", None) or {})


def input_types(llm: Any) -> list[str]:
    """The ``input_type`` values a model takes: its sentence-transformers prompts and task instructions."""
    return sorted(set(llm.model.prompts) | set(_instructions(llm)))


def _input_type(llm: Any, input_type: str | None) -> tuple[str | None, str | None]:
    """``input_type`` -> (a sentence-transformers prompt name, or a task-instruction prefix)."""
    if input_type is None:
        return None, None
    prompts = llm.model.prompts
    instructions = _instructions(llm)
    if input_type in prompts:
        return input_type, None
    if input_type in instructions:
        return None, str(instructions[input_type])
    known = input_types(llm)
    if not known:
        raise ApiError(
            400,
            f"Unsupported input_type {short(input_type, 40)!r}. This model does not define any input_type task instructions.",
            param="input_type",
        )
    raise ApiError(
        400, f"Unsupported input_type {short(input_type, 40)!r}. Supported values: {', '.join(known)}", param="input_type"
    )


def _work(
    st: ModelState,
    task: Any,
    prompts: Sequence[Prompt],
    params: list[PoolingParams],
    images: list[tuple[int, str]],
    untruncated: bool,
    max_tokens: int | None,
) -> Callable[[], Any]:
    """Worker-thread work: decode images (never files), check untruncated lengths, run."""
    llm = st.llm

    def work() -> Any:
        batch = list(prompts)
        if images:
            from ...plugins.manager import registry

            processor = registry("io_processor").get("image")
            decoded = processor.pre_process(
                {"prompts": [Prompt(extras={"image": uri}) for _, uri in images], "model": llm.model, "allow_local_files": False}
            )
            for (i, _), prompt in zip(images, decoded):
                batch[i] = prompt
        if untruncated:
            _check_untruncated(st, batch, max_tokens)
        return llm.run(task, batch, params)

    return work


def _check_untruncated(st: ModelState, prompts: Sequence[Prompt], max_tokens: int | None) -> None:
    """``truncate=NONE``: an input longer than the model's limit (or ``max_tokens``) is an error."""
    model = st.llm.model
    tok = model.tokenizer
    for i, prompt in enumerate(prompts):
        if prompt.text is None:
            continue
        text = (prompt.prompt_prefix or "") + prompt.text
        if model.do_lower_case:
            text = text.lower()
        n = len(tok(text, add_special_tokens=True, verbose=False)["input_ids"])
        if max_tokens is not None and n > max_tokens:
            raise InvalidRequest(
                f"Input of {n} tokens exceeds max_tokens={max_tokens} with truncate=NONE. "
                "Set truncate to END or START to allow truncation."
            )
        if st.max_len is not None and n > st.max_len:
            raise InvalidRequest(
                f"This model's maximum context length is {st.max_len} tokens. However, input {i} has {n} tokens "
                "(truncate=NONE). Please reduce the length of the input, or set truncate to END or START."
            )
