"""``/openapi.json``: every operation with what it takes and every answer it can give.

FastAPI derives the request schemas from the request models (beside their routes, with the pieces
they share in :mod:`poolkit.entrypoints.protocol`), which state the rules of each field. This adds
what FastAPI cannot know, most of it from the endpoints' records
(:class:`~poolkit.entrypoints.server.endpoints.Endpoint`):

- the answers: the error body ``{"error": {...}}`` with the statuses each operation sends (never
  FastAPI's 422: validation failures are 400s), ``Retry-After`` and ``WWW-Authenticate`` where
  they come, ``/metrics`` as ``text/plain`` and raw tensors as ``application/octet-stream``;
- the API key, as a bearer security scheme on the routes that need it;
- the loaded model's own bounds: its served name, its tasks, its vocabulary, its context length,
  whether it takes ``dimensions``, chat ``messages`` or plugin ``data``, and the request limits.
  Operations it cannot run are left out (their routes answer 400 or 404 and say why); an endpoint
  whose operation depends on the model in other ways says so itself (its ``describe``).

What JSON Schema cannot state is in :data:`UNSTATED_RULES`, each with the words of the error the
server sends for it, and in the document's description.
"""

from __future__ import annotations

import copy
import typing
from typing import TYPE_CHECKING, Any, Callable, Iterator

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from ...contracts.errors import PoolkitError
from ...inputs.pairs import SIDE_LIMITS
from ..protocol import SCORE_PAIRS, TEXT, TEXT_DOCUMENT, list_of
from .endpoints import TEI, Endpoint
from .routes import ENDPOINTS, SHARED_ROUTES

if TYPE_CHECKING:
    from ...api.llm import LLM
    from ..serving.state import ModelState, ServerState

#: Rules across fields or over the tokens of an input, which a request schema cannot state, and
#: the words of the 400 that each one gets; the rest of a request's rules are in its schema.
UNSTATED_RULES = {
    "an integer is written without a fraction (256, not 256.0), which JSON Schema's 'integer' allows":
        "Input should be a valid integer",
    "an input longer than the model's limit is refused unless truncation is asked for": "Please reduce the length of the input",
    "a request's estimated tokens are at most --max-request-tokens": "per request (--max-request-tokens)",
    "the two sides of a score request are 1:1, 1:N or N:N": "Input lengths must be either 1:1, 1:N or N:N",
    "a /pooling parameter (step_tag_id, returned_token_ids, ...) applies to the tasks that take it": "parameters, does not support",
    "a /pooling output option (top_k, threshold, return_tokens) applies to the tasks that take it": " apply to task ",
    "the inputs of a score request (both sides when the first has several) are at most --max-inputs-per-request": "too many inputs",
    "a chat template can refuse the messages it renders": "cannot apply the chat template",
    "the rendered chat has tokens": "the rendered chat has no tokens",
    "a text is not only characters the tokenizer drops": "has no tokens",
    "an instruction needs a score template to go into, which a model scoring plain text pairs has not":
        "instruction needs a score template",
    "a response is at most --max-response-bytes (the results' numbers in the request's encoding)": "(--max-response-bytes)",
    "score template variables (chat_template_kwargs besides prompt, prompt_name and restore_suffix) need a template "
    "to fill, which a model scoring plain text pairs has not": "need a chat template",
    "input_type names what the model has: for token vectors a retrieval side ('query' or 'document') of a model with "
    "sides, for other tasks one of its prompt names or task instructions (the error lists them), and never a prompt "
    "beside Jina's task": "input_type",
    "a token_pool_factor is at most the model's input limit in tokens, beyond which every input would keep one vector":
        "every input would keep one vector",
    "on /invocations a body with messages goes to the first endpoint that takes messages (vLLM's dispatch), which "
    "refuses them on a model without a chat template, whatever other request's fields the body has": "has no chat template",
}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string", "description": "One line, at most 500 characters."},
                "type": {"type": "string", "examples": ["BadRequestError"]},
                "param": {"type": ["string", "null"], "description": "The request field at fault, if one is."},
                "code": {"type": "integer", "description": "The HTTP status."},
            },
        }
    },
}
_TEI_ERROR = {
    "type": "object",
    "required": ["error", "error_type"],
    "properties": {
        "error": {"type": "string", "description": "One line, at most 500 characters."},
        "error_type": {"enum": ["Empty", "Validation", "Tokenizer", "Backend", "Overloaded", "Unhealthy"]},
    },
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}}
_ANSWERS = {
    400: ("The request is not valid: a malformed body, a value out of range, or what the model cannot do.", None),
    401: ("No valid API key: send 'Authorization: Bearer <key>'.", {"WWW-Authenticate": {"schema": {"type": "string"}}}),
    404: ("The request names another model than the served one.", None),
    413: ("The body is larger than --max-body-bytes.", None),
    415: ("The body is not JSON (Content-Type must be application/json).", None),
    429: ("Too many requests in flight (--max-concurrent-requests): retry after Retry-After.", _RETRY_AFTER),
    500: ("The model produced a non-finite value, or the server failed.", None),
    501: ("The request needs a package that is not installed.", None),
    503: ("The model is loading or failed to load, or the server is shutting down.", None),
}
_INFERENCE = (400, 401, 404, 413, 415, 429, 500, 501, 503)
#: TEI's routes: their statuses and what each means there (TEI's ``ErrorType``s), answered with
#: TEI's error body ``{"error", "error_type"}``.
_TEI_ANSWERS = {
    400: "Empty: an empty list of texts (/rerank's texts, /similarity's sentences, a /tokenize batch).",
    401: "No valid API key: send 'Authorization: Bearer <key>'.",
    404: "The request names a model the server does not serve.",
    413: "Validation: an empty input (a text, token ids, or a pair whose two sides are empty: a pair with one empty "
    "side is scored), a batch over --max-client-batch-size, an input over the model's limit without truncation, an "
    "unknown prompt, too many tokens, a body over --payload-limit or a response over --max-response-bytes.",
    415: "Validation: the body is not JSON (Content-Type must be application/json).",
    422: "Validation: the body is not of the route's shape or types.",
    424: "Backend: the model is not of the route's type, or it produced a non-finite value.",
    429: "Overloaded: too many requests in flight or queued: retry after Retry-After.",
    500: "Backend: the server failed.",
    503: "Unhealthy: the model is loading or failed to load, or the server is shutting down.",
}
#: The endpoint of each operation, by path and (lower-case) method.
_OPERATIONS = {(e.path, e.method.lower()): e for e in ENDPOINTS}


def install_openapi(app: FastAPI, st: "ServerState") -> None:
    """Make ``app.openapi`` give :func:`openapi_document`, kept once the model is loaded."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = openapi_document(app, st)
            if not st.ready:  # the models' bounds are still to come
                return document
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def openapi_document(app: FastAPI, st: "ServerState") -> dict[str, Any]:
    """The OpenAPI document of ``app``, with the loaded model's bounds when it serves one model."""
    doc = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=_description(app.description),
        routes=app.routes,
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["ErrorResponse"] = copy.deepcopy(_ERROR)
    schemas["TeiErrorResponse"] = copy.deepcopy(_TEI_ERROR)
    if st.key_digest is not None:
        doc["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            endpoint = _OPERATIONS.get((path, method))
            if endpoint is not None:
                _answers(endpoint, operation, st)
            else:  # a route the application's user added
                operation.setdefault("responses", {}).pop("422", None)
    if len(st.models) == 1 and st.ready:  # several models: each request's model decides
        _bound(doc, st.first)
    _merge_shared(doc)
    return doc


def _merge_shared(doc: dict[str, Any]) -> None:
    """Describe each path TEI shares with vLLM (:data:`~poolkit.entrypoints.server.routes.SHARED_ROUTES`) as
    one operation: vLLM's body, or TEI's without any of vLLM's fields, and either API's answers."""
    paths = doc["paths"]
    for path, (alias, _, own_fields) in SHARED_ROUTES.items():
        tei = paths.pop(alias, {}).get("post")
        own = paths.get(path, {}).get("post")
        if tei is None or own is None:
            continue
        body = ("requestBody", "content", "application/json", "schema")
        own_body, tei_body = _at(own, body), _at(tei, body)
        not_own = {"not": {"anyOf": [{"required": [field]} for field in own_fields]}}
        own["requestBody"]["content"]["application/json"]["schema"] = {"anyOf": [own_body, {"allOf": [tei_body, not_own]}]}
        own["summary"] = f"{own.get('summary', '')} With TEI's fields instead: {tei.get('summary', '')}"
        for status, answer in tei["responses"].items():
            mine = own["responses"].setdefault(status, answer)
            if mine is answer:
                continue
            for media, content in answer.get("content", {}).items():
                held = mine.setdefault("content", {}).setdefault(media, content)
                if held is not content:
                    held["schema"] = {"anyOf": [held.get("schema", {}), content.get("schema", {})]}
            mine.setdefault("headers", {}).update(answer.get("headers", {}))
            if not mine["headers"]:
                del mine["headers"]
            if answer["description"] != mine["description"]:
                mine["description"] = f"{mine['description']} TEI: {answer['description']}"


def _at(tree: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        tree = tree[key]
    return tree


def _description(text: str) -> str:
    rules = "".join(f"\n- {rule}" for rule in UNSTATED_RULES)
    return (
        f"{text}\n\nEvery error is `{{\"error\": {{\"message\", \"type\", \"param\", \"code\"}}}}` with a 4xx or 5xx "
        "status, and on Text Embeddings Inference's routes TEI's `{\"error\", \"error_type\"}` with TEI's statuses; a "
        "method a path does not take is a 405, an unknown path a 404, headers not complete within --header-timeout or "
        "a body not complete within --body-timeout a 408 (and the connection is closed). /rerank and /tokenize take "
        "TEI's bodies too: one with TEI's fields (texts; inputs) and none of vLLM's goes to TEI's route. Besides each "
        "request's schema, these rules apply:" + rules
    )


def _answers(endpoint: Endpoint, operation: dict[str, Any], st: "ServerState") -> None:
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)
    if endpoint.answer is not None:
        responses["200"] = copy.deepcopy(endpoint.answer)
    if endpoint.tensors:  # encoding_format bytes / bytes_only
        responses["200"]["content"]["application/octet-stream"] = {
            "schema": {"type": "string", "format": "binary"},
        }
    tei, inference = endpoint.api == TEI, endpoint.inference
    if inference:
        statuses = tuple(_TEI_ANSWERS) if tei else _INFERENCE
    else:
        statuses = endpoint.errors
    protected = endpoint.protected and st.key_digest is not None
    for status in statuses:
        if status == 401 and not protected:
            continue
        text, headers = (_TEI_ANSWERS[status], _ANSWERS.get(status, ("", None))[1]) if tei else _ANSWERS[status]
        if status == 503 and inference:
            headers = _RETRY_AFTER
        error = "TeiErrorResponse" if tei else "ErrorResponse"
        answer: dict[str, Any] = {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{error}"}}},
        }
        if headers:
            answer["headers"] = copy.deepcopy(headers)
        responses[str(status)] = answer
    if protected:
        operation["security"] = [{"apiKey": []}]


# -- the loaded model's bounds ---------------------------------------------------------------------

_NULL = {"type": "null"}
#: The fields of a score request's two sides.
SCORE_SIDES = frozenset(name for pair in SCORE_PAIRS for name in pair)


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models a field's type holds, and the models their fields hold, to any depth."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        for field in annotation.model_fields.values():
            yield from _models_in(field.annotation)
    for argument in typing.get_args(annotation):
        yield from _models_in(argument)


#: The request schemas of TEI's routes (their request models and the models inside them), whose
#: fields (``inputs``, ``ids``, ``prompt_name``, ``sentences``) get the model's bounds.
TEI_SCHEMAS = frozenset(model.__name__ for e in ENDPOINTS if e.api == TEI for model in _models_in(e.request))


def _bound(doc: dict[str, Any], st: "ModelState") -> None:
    llm = st.llm
    tasks = list(llm.supported_tasks)
    unserved = {e.path for e in ENDPOINTS if not e.served_by(llm)}
    doc["paths"] = {path: ops for path, ops in doc["paths"].items() if path not in unserved}
    template = _has_chat_template(st, llm)
    plugin = llm.plugin_task if llm.plugin_task in tasks else None
    matryoshka = bool(st.embedding_size) and llm.model.is_matryoshka
    options, params = _task_fields(llm, tasks)
    templated = _takes_score_template(llm)
    images = "image" in llm.model.architecture.input_modalities
    reads = st.renderer.reads
    reads_media, videos = reads.media, reads.videos
    prompts = sorted(llm.model.prompts or {})
    for name, schema in doc["components"]["schemas"].items():
        props = schema.get("properties", {})
        for field, sub in props.items():
            if field == "model":
                served = {"const": st.served} if st.label == st.served else {"type": "string"}  # no directory on an open route
                props[field] = {"anyOf": [served, _NULL], "description": sub.get("description", "")}
            elif field == "truncate_prompt_tokens" and st.max_len:
                _each(sub, lambda s: s.get("minimum") == 1 and s.setdefault("maximum", st.max_len))
            elif field in ("dimensions", "output_dimension"):
                props[field] = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": st.embedding_size}, _NULL]} if matryoshka else _NULL
            elif field == "messages" and not template:
                props[field] = _NULL
            elif field == "data" and name == "PoolingRequest" and plugin is None:
                props[field] = _NULL
            elif field == "task" and name == "EmbeddingRequest":  # Jina's task: a prompt name
                props[field] = {"anyOf": [{"enum": prompts}, _NULL], "description": sub.get("description", "")} if prompts else _NULL
            elif field == "task":
                props[field] = {"anyOf": [{"enum": tasks}, _NULL]}
            elif field in ("top_k", "threshold", "return_tokens") and field not in options:
                props[field] = {"const": False} if field == "return_tokens" else _NULL
            elif field in ("step_tag_id", "returned_token_ids") and field not in params:
                props[field] = _NULL
            elif field in SIDE_LIMITS and st.max_len:
                _each(sub, lambda s: s.get("minimum") == 1 and s.update(maximum=st.max_len - 1))
            elif field in ("input", "tokens") and st.vocab:
                _each(sub, lambda s: s.get("type") == "integer" and s.update(maximum=min(s.get("maximum", st.vocab), st.vocab - 1)))
            elif field in ("images", "image_url") and not images:
                props[field] = _NULL
            elif field == "type" and name == "CohereContent" and not (images and videos):
                props[field] = {"enum": ["text", "image_url"]} if images else {"const": "text"}
            elif field == "video_url" and not videos:
                props[field] = _NULL
            elif field == "content" and name == "CohereInput" and not reads_media:  # one part: text or image alone
                _each(sub, lambda s: s.get("type") == "array" and s.update(maxItems=1), depth=0)
            elif field in SCORE_SIDES and name == "ScoreRequest" and not (images and not templated):
                props[field] = {"anyOf": [TEXT, list_of(TEXT), _NULL]}  # images need a model that embeds each side
            elif field == "documents" and name == "RerankRequest" and not (images and not templated):
                props[field] = {"anyOf": [TEXT, list_of({"anyOf": [TEXT, TEXT_DOCUMENT]})], "description": sub.get("description", "")}
            elif field in ("instruction", "chat_template_kwargs") and name in ("ScoreRequest", "RerankRequest") and not templated:
                props[field] = _NULL
            elif field == "prompt_name" and name in TEI_SCHEMAS:
                props[field] = {"anyOf": [{"enum": prompts}, _NULL]} if prompts else _NULL
            elif field in ("inputs", "ids") and name in TEI_SCHEMAS and st.vocab:
                _each(sub, lambda s: s.get("type") == "integer" and s.update(maximum=st.vocab - 1))
            limit = st.limits.max_inputs_per_request
            if field in ("input", "texts", "documents") or (field == "inputs" and name in TEI_SCHEMAS):
                _each(sub, lambda s: s.get("type") == "array" and s.get("items", {}).get("type") != "integer"
                      and s.setdefault("maxItems", limit), depth=1)
            elif field == "sentences" and name in TEI_SCHEMAS:  # with the source sentence, a batch
                _each(sub, lambda s: s.get("type") == "array" and s.setdefault("maxItems", limit - 1), depth=0)
    for endpoint in ENDPOINTS:
        if endpoint.describe is not None:
            endpoint.describe(doc, st)


def _takes_score_template(llm: LLM) -> bool:
    try:
        return bool(llm.scorer.takes_template)
    except (LookupError, PoolkitError):
        return False


def _has_chat_template(st: "ModelState", llm: LLM) -> bool:
    return bool(st.renderer.reads.chat_template)


def _task_fields(llm: LLM, tasks: list[str]) -> tuple[set[str], set[str]]:
    """The output options (``top_k``, ...) and the pooling parameters that some task of the model takes."""
    options: set[str] = set()
    params: set[str] = set()
    for name in tasks:
        try:
            task = llm.task(name)
        except (LookupError, PoolkitError):  # the plugin task: its fields are its IO processor's
            continue
        options |= set(task.output_options)
        params |= set(task.params)
    return options, params


def _each(schema: Any, visit: Callable[[dict], Any], depth: int = 8) -> None:
    """``visit`` every sub-schema of ``schema`` (through ``anyOf`` and ``items``), to ``depth`` levels."""
    for sub in _walk(schema, depth):
        visit(sub)


def _walk(schema: Any, depth: int) -> Iterator[dict]:
    if not isinstance(schema, dict) or depth < 0:
        return
    yield schema
    for branch in schema.get("anyOf", ()):
        yield from _walk(branch, depth)
    if "items" in schema:
        yield from _walk(schema["items"], depth - 1)
