"""The requests of ``poolkit bench-serve``: one route (``--routes endpoint``) or every route (``every``).

A soak over one route misses what the others hold on to (TEI's, the tokenizer's, the score
paths, the cache of each model), so ``every`` sends each client's next request to the next entry
of a fixed mix: every route of the server, once per served model that can run it, with a valid
body for that model. Which model can run what comes from the server itself (``GET /v1/models``
lists each model's ``tasks`` and ``score_type``), so the mix fits any set of models; a route no
model can run is left out, with the reason. Requests name their model as their API does: the
body's ``model`` on the OpenAI, vLLM and Cohere routes, the ``X-Model`` header on TEI's.

Nothing here talks to the server: :mod:`.load` asks it and sends what this module builds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ...contracts.errors import InvalidRequest

#: What ``--routes`` takes.
ROUTE_MODES = ("endpoint", "every")

#: The ``/pooling`` tasks the mix sends, each where a model has it, with one text a request (a
#: token-level task answers a vector per token: more texts are megabytes of JSON).
#: ``token_classify`` is left out: on a masked-LM model (SPLADE) it answers a vocabulary-sized
#: row per token.
POOLING_TASKS = ("embed", "token_embed", "classify", "sparse_embed")

Body = Callable[[list[str]], dict[str, Any]]


@dataclass(frozen=True)
class ServedModel:
    """One model as the server describes it; ``token_ids`` come from its own ``/tokenize``."""

    name: str
    tasks: frozenset[str]
    score_type: Optional[str] = None
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Call:
    """One entry of the mix: the label the report counts it under, and the request it sends.

    ``body`` makes the JSON body from the texts of the client's turn (``None``: a ``GET``);
    ``inputs`` is how many of them it carries, for the report's inputs per second.
    """

    label: str
    method: str
    path: str
    body: Optional[Body] = None
    headers: dict[str, str] = field(default_factory=dict)
    inputs: int = 0


@dataclass(frozen=True)
class Route:
    """A route of the server: which models can run it and the body it takes from one."""

    label: str
    method: str
    path: str
    #: None: the server's own route, called once without a model.
    runs: Optional[Callable[[ServedModel], bool]] = None
    #: What a model needs for it, in the reason a route is skipped.
    needs: str = ""
    body: Optional[Callable[[ServedModel, list[str]], dict[str, Any]]] = None
    #: TEI's routes name their model in ``X-Model``; the others in the body's ``model``.
    tei: bool = False
    #: How many of the turn's texts ``body`` is given (None: all of them).
    texts: Optional[int] = None


def _tei_embed(m: ServedModel, texts: list[str]) -> dict[str, Any]:
    """TEI's ``/embed``: a SPLADE model's vector is unnormalized only (TEI refuses ``normalize``)."""
    return {"inputs": texts, "truncate": True, **({"normalize": False} if _has("sparse_embed")(m) else {})}


def _has(task: str) -> Callable[[ServedModel], bool]:
    return lambda m: task in m.tasks


def _scores(m: ServedModel) -> bool:
    return m.score_type is not None


def _any_task(m: ServedModel) -> bool:
    return bool(m.tasks)


def _every(m: ServedModel) -> bool:
    return True


def _tokenizes(m: ServedModel) -> bool:
    return bool(m.token_ids)


def _vllm(m: ServedModel, body: dict[str, Any]) -> dict[str, Any]:
    """A vLLM-style body naming its model, truncated to the model's limit (the corpus has long texts)."""
    return {"model": m.name, **body, "truncate_prompt_tokens": -1}


def _pooling(task: str) -> Route:
    return Route(
        f"POST /pooling {task}", "POST", "/pooling", _has(task), f"task '{task}'",
        lambda m, t: _vllm(m, {"task": task, "input": t}), texts=1,
    )


def _predict(m: ServedModel, t: list[str]) -> dict[str, Any]:
    """TEI's ``/predict`` batch: pairs for a classifier that scores (a cross-encoder: what it
    scores are pairs), single texts otherwise."""
    items = [[t[0], text] for text in t] if m.score_type is not None else [[text] for text in t]
    return {"inputs": items, "truncate": True}


def _root(m: ServedModel) -> bool:
    """TEI's root route: a classifier predicts, a SPLADE model embeds sparsely, an embedder embeds."""
    return bool(m.tasks & {"embed", "classify", "sparse_embed"})


#: Every route of ``poolkit serve``, in the order of the mix.
ROUTES: tuple[Route, ...] = (
    # OpenAI
    Route("POST /v1/embeddings", "POST", "/v1/embeddings", _has("embed"), "task 'embed'", lambda m, t: _vllm(m, {"input": t})),
    # vLLM
    *(_pooling(task) for task in POOLING_TASKS),
    Route("POST /classify", "POST", "/classify", _has("classify"), "task 'classify'", lambda m, t: _vllm(m, {"input": t})),
    *(
        Route(f"POST {path}", "POST", path, _scores, "a Scoring API",
              lambda m, t: _vllm(m, {"text_1": t[0], "text_2": t}))
        for path in ("/score", "/v1/score")
    ),
    *(
        Route(f"POST {path}", "POST", path, _scores, "a Scoring API",
              lambda m, t: _vllm(m, {"query": t[0], "documents": t, "top_n": 3}))
        for path in ("/rerank", "/v1/rerank", "/v2/rerank")
    ),
    Route("POST /tokenize", "POST", "/tokenize", _every, "",
          lambda m, t: {"model": m.name, "prompt": t[0]}, texts=1),
    Route("POST /detokenize", "POST", "/detokenize", _tokenizes, "token ids from its /tokenize",
          lambda m, t: {"model": m.name, "tokens": list(m.token_ids)}, texts=0),
    Route("POST /invocations", "POST", "/invocations", _any_task, "a pooling task", lambda m, t: _vllm(m, {"input": t})),
    # Cohere
    Route("POST /v2/embed", "POST", "/v2/embed", _has("embed"), "task 'embed'",
          lambda m, t: {"model": m.name, "texts": t, "embedding_types": ["float"]}),
    # TEI
    Route("POST /embed", "POST", "/embed", _has("embed"), "task 'embed'", lambda m, t: _tei_embed(m, t), tei=True),
    Route("POST /embed_all", "POST", "/embed_all", _has("token_embed"), "task 'token_embed'",
          lambda m, t: {"inputs": t, "truncate": True}, tei=True, texts=1),
    Route("POST /embed_sparse", "POST", "/embed_sparse", _has("sparse_embed"), "task 'sparse_embed'",
          lambda m, t: {"inputs": t, "truncate": True}, tei=True),
    Route("POST /predict", "POST", "/predict", _has("classify"), "task 'classify'", _predict, tei=True),
    Route("POST /rerank (TEI)", "POST", "/rerank", _scores, "a Scoring API",
          lambda m, t: {"query": t[0], "texts": t, "truncate": True}, tei=True),
    Route("POST /similarity", "POST", "/similarity", _has("embed"), "task 'embed'",
          lambda m, t: {"inputs": {"source_sentence": t[0], "sentences": t}, "parameters": {"truncate": True}}, tei=True),
    Route("POST /tokenize (TEI)", "POST", "/tokenize", _every, "", lambda m, t: {"inputs": t}, tei=True),
    Route("POST /decode", "POST", "/decode", _tokenizes, "token ids from its /tokenize",
          lambda m, t: {"ids": [list(m.token_ids)]}, tei=True, texts=0),
    Route("POST /", "POST", "/", _root, "task 'embed', 'classify' or 'sparse_embed'",
          lambda m, t: {"inputs": t[0], "truncate": True}, tei=True, texts=1),
    Route("GET /info", "GET", "/info", _every, "", tei=True),
    # the server's own
    Route("GET /v1/models", "GET", "/v1/models"),
    Route("GET /health", "GET", "/health"),
    Route("GET /metrics", "GET", "/metrics"),
)


def endpoint_call(endpoint: str, inputs_per_request: int) -> Call:
    """``--routes endpoint``: OpenAI-embeddings-shaped bodies to one route, as ``bench-serve`` always sent."""
    return Call(f"POST {endpoint}", "POST", endpoint, lambda t: {"input": t, "truncate_prompt_tokens": -1}, inputs=inputs_per_request)


def every_route(models: list[ServedModel], inputs_per_request: int) -> tuple[list[Call], dict[str, str]]:
    """``--routes every``: a call per route and model that can run it, and the routes none can, with why.

    Raises:
        InvalidRequest: when the server serves no model (nothing to send a model's routes to).
    """
    if not models:
        raise InvalidRequest("the server lists no model on /v1/models: there is nothing to send its routes to")
    calls: list[Call] = []
    skipped: dict[str, str] = {}
    for route in ROUTES:
        if route.runs is None:
            calls.append(Call(route.label, route.method, route.path))
            continue
        able = [m for m in models if route.runs(m)]
        if not able:
            skipped[route.label] = f"no served model has {route.needs}"
        n = inputs_per_request if route.texts is None else min(route.texts, inputs_per_request)
        for m in able:
            body = None if route.body is None else (lambda t, m=m, n=n, make=route.body: make(m, t[:n]))
            headers = {"x-model": m.name} if route.tei else {}
            calls.append(Call(f"{route.label} [{m.name}]", route.method, route.path, body, headers, 0 if body is None else n))
    return calls, skipped
