"""Text Embeddings Inference's work, whatever door asks for it: TEI's HTTP routes
(:mod:`poolkit.entrypoints.server.routes_tei`) and its gRPC API (:mod:`poolkit.entrypoints.grpc`)
parse their wire format into the requests here (:class:`Embed`, :class:`Predict`, ...), call the
work with the :class:`~poolkit.entrypoints.serving.call.Call` and the served model, and write what
it returns in their own format. So both APIs check and compute alike: TEI's rules for empty inputs
(``core/src/tokenization.rs``: an input with nothing in it is a 413 ``Validation``, an empty list a
route checks itself a 400 ``Empty``, a pair with one empty side is scored), its batch-size rule, its
model types (``424 Backend`` for a model of the wrong type) and its words for an input too long.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from ... import __version__
from ...contracts.errors import InputTooLong, InvalidRequest
from ...contracts.io import Prompt
from ...contracts.params import PoolingParams
from ...contracts.tasks import ROLES
from ...inputs.chat import checked_text
from ...runtime.estimates import tokens_of_text
from .call import Call
from .errors import ApiError
from .inputs import check_token_ids, pooling_params
from .scoring import has_scorer, score_pairs
from .state import ModelState
from .work import check_tokens, run_task, until_done

if TYPE_CHECKING:
    from ...api.llm import LLM

#: The task each route runs (TEI's model types in poolkit's task names).
EMBED, TOKEN_EMBED, SPARSE_EMBED, CLASSIFY = "embed", "token_embed", "sparse_embed", "classify"
#: TEI's error types for what its routes refuse before running anything.
EMPTY, VALIDATION, BACKEND = (400, "Empty"), (413, "Validation"), (424, "Backend")


# -- TEI's requests, whatever their wire ----------------------------------------------------------


class _Request:
    @classmethod
    def of(cls, body: Any) -> Any:
        """The request of a body with the same fields (an HTTP route's parsed JSON)."""
        return cls(**{f.name: getattr(body, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class _Truncated(_Request):
    #: Truncate inputs longer than the model's limit (``None``: ``--auto-truncate``).
    truncate: bool | None = None
    truncation_direction: str = "right"


@dataclasses.dataclass(frozen=True)
class EmbedSparse(_Truncated):
    """``/embed_sparse``, ``Embed/EmbedSparse``: a text, token ids, or a batch of them."""

    inputs: Any = None
    prompt_name: str | None = None


@dataclasses.dataclass(frozen=True)
class Embed(EmbedSparse):
    """``/embed``, ``Embed/Embed``."""

    normalize: bool = True
    dimensions: int | None = None


@dataclasses.dataclass(frozen=True)
class EmbedAll(EmbedSparse):
    """``/embed_all``, ``Embed/EmbedAll``."""

    token_pool_factor: int | None = None


@dataclasses.dataclass(frozen=True)
class Predict(_Truncated):
    """``/predict``, ``Predict/Predict``: a text, ``[text]``, ``[text, pair]``, or a batch of those."""

    inputs: Any = None
    raw_scores: bool = False


@dataclasses.dataclass(frozen=True)
class Rerank(_Truncated):
    """``/rerank``'s options, ``Rerank/Rerank``'s (the query and texts are the work's arguments)."""

    raw_scores: bool = False
    return_text: bool = False


@dataclasses.dataclass(frozen=True)
class Tokenize(_Request):
    """``/tokenize``, ``Tokenize/Tokenize``."""

    inputs: Any = None
    add_special_tokens: bool = True
    prompt_name: str | None = None


@dataclasses.dataclass(frozen=True)
class Decode(_Request):
    """``/decode``, ``Tokenize/Decode``."""

    ids: Any = None
    skip_special_tokens: bool = True


# -- shared checks ---------------------------------------------------------------------------------


def needs(llm: LLM, task: str, message: str) -> None:
    """TEI's 424 for a model of the wrong type for the route."""
    if task not in llm.supported_tasks:
        raise ApiError(424, message, tei=BACKEND)


def check_batch(st: ModelState, n: int, batched: bool) -> None:
    """TEI's batch-size rule (``--max-client-batch-size``, poolkit's ``--max-inputs-per-request``)."""
    if batched and n > st.limits.max_inputs_per_request:
        raise batch_too_large(st, n)


def empty_list(what: str) -> ApiError:
    """TEI's 400 ``Empty``: a list the route checks itself before anything runs has no items."""
    return ApiError(400, f"`{what}` cannot be empty", param=what, tei=EMPTY)


def empty_input(what: str = "inputs") -> ApiError:
    """TEI's tokenizer's refusal of an input with nothing in it: a 413 ``Validation``."""
    return ApiError(413, f"Input validation error: `{what}` cannot be empty", param=what, tei=VALIDATION)


def _items(st: ModelState, inputs: Any) -> tuple[list[Any], bool]:
    """The prompts of an ``inputs`` field (a text, token ids, or a batch of them) and whether it was a batch."""
    if isinstance(inputs, str) or all(isinstance(i, int) for i in inputs):  # TEI reads [] as no token ids
        items, batched = [inputs], False
    else:
        items, batched = list(inputs), True
    check_batch(st, len(items), batched)
    prompts: list[Any] = []
    for item in items:
        if not item:
            raise empty_input()
        if isinstance(item, str):
            checked_text(item, "inputs")
            prompts.append(item)
        else:
            check_token_ids(st, item, "inputs")
            prompts.append({"prompt_token_ids": list(item)})
    return prompts, batched


def truncated(st: ModelState, truncate: bool | None, direction: str) -> dict[str, Any]:
    """TEI's ``truncate`` (default ``--auto-truncate``) as pooling parameters: to the model's limit."""
    if truncate if truncate is not None else st.options.auto_truncate:
        return {"truncate_prompt_tokens": -1, "truncation_side": direction}
    return {}


def _activation(llm: LLM, task: str, wanted: bool) -> bool | None:
    """``use_activation`` for what a TEI request asks (``normalize``, ``raw_scores``): ``None`` when
    that is the model's default, so that equal requests of every route share cache entries."""
    default = llm.task(task).settings(llm.model).get("use_activation")
    return None if default is not None and default.value == wanted else wanted


def prompt_name_of(st: ModelState, name: str | None) -> str | None:
    return name if name is not None else st.options.default_prompt_name


class Rows(NamedTuple):
    """What a TEI route computed: one result row per input, and the prompt tokens they took."""

    rows: list[torch.Tensor]
    tokens: int


@contextlib.contextmanager
def _tei_lengths() -> Any:
    """An input over the model's length, without ``truncate``, refused in TEI's words (its
    ``core/src/tokenization.rs``) instead of vLLM's."""
    try:
        yield
    except InputTooLong as exc:
        raise ApiError(
            413, f"Input validation error: `inputs` must have less than {exc.limit} tokens. Given: {exc.given}",
            param="inputs", tei=VALIDATION,
        ) from None


async def rows_of(call: Call, st: ModelState, llm: LLM, task: str, prompts: list[Any], params: PoolingParams,
                prompt_name: str | None = None, side: str | None = None) -> Rows:
    with _tei_lengths():
        _, results = await run_task(call, st, llm, task, prompts, params, prompt_name=prompt_name, side=side)
    rows = results.rows()
    if not all(bool(torch.isfinite(r).all()) for r in rows if r.is_floating_point()):
        raise ApiError(424, "the model produced a non-finite value (NaN or Infinity)", tei=BACKEND)
    return Rows(rows, results.num_tokens)


# -- embeddings ------------------------------------------------------------------------------------


async def embed_rows(body: Embed, call: Call, st: ModelState, llm: LLM) -> Rows:
    """``/embed``: the embeddings of the inputs.

    As TEI (``core/src/infer.rs``, ``embed_pooled``): a SPLADE model embeds its vocabulary-wide
    vector, unnormalized only (``normalize`` is refused); ``dimensions`` cuts any model's vectors
    (then normalized, where asked), a matryoshka model's or not, up to their width.
    """
    needs(llm, EMBED, "Model is not an embedding model")
    splade = SPARSE_EMBED in llm.supported_tasks
    if body.normalize and splade:
        raise ApiError(424, "`normalize` is not available for SPLADE models", tei=BACKEND)
    prompts, _ = _items(st, body.inputs)
    dimensions = body.dimensions
    if dimensions is not None:
        if dimensions < 1:
            raise ApiError(413, "Input validation error: `dimensions` should be positive", param="dimensions", tei=VALIDATION)
        if st.embedding_size and dimensions > st.embedding_size:
            raise ApiError(413, "Input validation error: `dimensions` should be smaller than the maximum embedding dimension.",
                           param="dimensions", tei=VALIDATION)
    cut = dimensions is not None and (splade or not llm.model.is_matryoshka)  # cut here: the LLM refuses to (vLLM's rule)
    truncation = truncated(st, body.truncate, body.truncation_direction)
    if splade:  # TEI pools a SPLADE model's embedding with its SPLADE pooling
        params = pooling_params(**truncation)
    else:
        params = pooling_params(
            dimensions=None if cut else dimensions, use_activation=False if cut else _activation(llm, EMBED, body.normalize), **truncation
        )
    task = SPARSE_EMBED if splade else EMBED
    rows, tokens = await rows_of(call, st, llm, task, prompts, params, *_prompt_or_side(st, llm, task, body.prompt_name))
    if cut:
        rows = [row[:dimensions] for row in rows]
        if body.normalize:
            rows = [torch.nn.functional.normalize(row.double(), dim=-1).to(row.dtype) for row in rows]
    return Rows(rows, tokens)


async def embed_all_rows(body: EmbedAll, call: Call, st: ModelState, llm: LLM) -> Rows:
    """``/embed_all``: every token's vector of each input."""
    needs(llm, TOKEN_EMBED, "Model is not an embedding model")
    prompts, _ = _items(st, body.inputs)
    params = pooling_params(
        use_activation=False, token_pool_factor=body.token_pool_factor, **truncated(st, body.truncate, body.truncation_direction)
    )
    return await rows_of(call, st, llm, TOKEN_EMBED, prompts, params, *_prompt_or_side(st, llm, TOKEN_EMBED, body.prompt_name))


async def sparse_rows(body: EmbedSparse, call: Call, st: ModelState, llm: LLM) -> Rows:
    """``/embed_sparse``: each input's vocabulary-wide weights (dense rows; :func:`nonzero` reads them)."""
    needs(llm, SPARSE_EMBED, "Model is not an embedding model with SPLADE pooling")
    prompts, _ = _items(st, body.inputs)
    params = pooling_params(**truncated(st, body.truncate, body.truncation_direction))
    return await rows_of(call, st, llm, SPARSE_EMBED, prompts, params, *_prompt_or_side(st, llm, SPARSE_EMBED, body.prompt_name))


def _prompt_or_side(st: ModelState, llm: LLM, task: str, name: str | None) -> tuple[str | None, str | None]:
    """TEI's ``prompt_name`` as the prompt it names or the retrieval side it names: ``(prompt, side)``.

    TEI names a model's prompts; ``"query"`` and ``"document"`` are a retrieval side where the model
    writes its sides itself (a sparse ``Router``'s routes) or, for token vectors, where it has sides
    (a multi-vector model's markers, lengths, query expansion) or no prompt of that name: PyLate and
    sentence-transformers 6 saves always carry prompts so named (``""`` or ``"[Q] "``, the side's
    marker), and they encode the side, as a request's retrieval side does.
    """
    name = prompt_name_of(st, name)
    if name not in ROLES:
        return name, None
    model = llm.model
    if model.architecture.role_prompts([], name, model) is not None and not model.prompts.get(name):
        return None, name
    if task == TOKEN_EMBED and (name not in model.prompts or llm.task(TOKEN_EMBED).has_roles(model)):
        return None, name
    return name, None


def nonzero(row: torch.Tensor) -> tuple[list[int], list[float]]:
    """A sparse row's non-zero weights: their indices, ascending, and values (TEI's ``SparseValue``s)."""
    index = torch.nonzero(row, as_tuple=True)[0]
    return index.tolist(), row[index].float().numpy().astype(np.float64).tolist()



# -- classification and reranking ------------------------------------------------------------------


def _predict_items(inputs: Any) -> tuple[list[Any], bool]:
    """TEI's ``/predict`` inputs: a text, ``[text]``, ``[text, pair]``, or a batch of those."""
    if isinstance(inputs, str):
        return [[inputs]], False
    if not inputs:
        inputs = [inputs]  # TEI reads [] as an input of length 0
    if all(isinstance(i, str) for i in inputs):
        items, batched = [inputs], False
    else:
        items, batched = list(inputs), True
    for item in items:
        if not 1 <= len(item) <= 2:
            raise ApiError(
                422,
                f"inputs: invalid length {len(item)}, expected a string, a pair of strings [string, string] or a batch "
                "of mixed strings and pairs [[string], [string, string], ...]",
                param="inputs", tei=(422, "Validation"),
            )
    return items, batched


async def predict_rows(body: Predict, call: Call, st: ModelState, llm: LLM) -> tuple[Rows, bool]:
    """``/predict``: each input's class scores (:func:`predictions` ranks them), and whether the inputs were a batch."""
    needs(llm, CLASSIFY, "Model is not a classifier model")
    items, batched = _predict_items(body.inputs)
    check_batch(st, len(items), batched)
    prompts: list[Any] = []
    for item in items:
        if not any(item):  # TEI: a pair is empty when both sides are; one empty side is scored
            raise empty_input()
        for text in item:
            if text:
                checked_text(text, "inputs")
        prompts.append(item[0] if len(item) == 1 else Prompt(text=item[0], text_pair=item[1]))
    params = pooling_params(
        use_activation=_activation(llm, CLASSIFY, not body.raw_scores), **truncated(st, body.truncate, body.truncation_direction)
    )
    return await rows_of(call, st, llm, CLASSIFY, prompts, params), batched


def predictions(row: torch.Tensor, id2label: dict[int, str]) -> list[tuple[float, str]]:
    """One input's ``(score, label)`` for every class, the highest score first (TEI's order)."""
    scores = row.reshape(-1).double().tolist()
    return [(scores[i], id2label.get(i, f"LABEL_{i}")) for i in sorted(range(len(scores)), key=lambda i: -scores[i])]


def check_pair(query: str, text: str, query_checked: bool = False) -> None:
    """Refuse a (query, text) pair TEI's rerank refuses: both sides empty, or a side that is not text."""
    if query and not query_checked:
        checked_text(query, "query")
    if text:
        checked_text(text, "texts")
    elif not query:  # TEI: a pair is empty when both sides are; one empty side is scored
        raise empty_input()


def batch_too_large(st: ModelState, n: int) -> ApiError:
    """TEI's refusal of more inputs than ``--max-client-batch-size`` (poolkit's ``--max-inputs-per-request``)."""
    limit = st.limits.max_inputs_per_request
    return ApiError(413, f"batch size {n} > maximum allowed batch size {limit}", param="inputs", tei=VALIDATION)


async def rerank_pairs(
    call: Call, st: ModelState, llm: LLM, queries: list[str], texts: list[str], body: Rerank
) -> tuple[list[dict[str, Any]], int]:
    """``/rerank``: ``texts`` ranked by their score against the query (one query, or one a text), the
    highest first, and the prompt tokens scored; ``body`` says the rest (``raw_scores``,
    ``return_text``, the truncation)."""
    if not texts:
        raise empty_list("texts")
    if not has_scorer(llm):
        raise ApiError(424, "model is not a re-ranker model", tei=BACKEND)
    check_batch(st, len(texts), True)
    for query in set(queries):
        if query:
            checked_text(query, "query")
    for query, text in zip(queries * len(texts) if len(queries) == 1 else queries, texts):
        check_pair(query, text, query_checked=True)
    params = pooling_params(use_activation=False if body.raw_scores else None, **truncated(st, body.truncate, body.truncation_direction))
    with _tei_lengths():
        outputs = await score_pairs(call, st, llm, llm.pair(queries[0] if len(queries) == 1 else queries, texts), params, None)
    scores = [float(o.outputs.score) for o in outputs]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ranks = [{"index": i, **({"text": texts[i]} if body.return_text else {}), "score": scores[i]} for i in order]
    return ranks, sum(len(o.prompt_token_ids) for o in outputs)


# -- tokenizer -------------------------------------------------------------------------------------


def utf8_offsets(text: str) -> np.ndarray | None:
    """The UTF-8 byte offset of each character offset of ``text`` (``len(text) + 1`` of them), in
    one pass; ``None`` for ASCII text, whose offsets are the same. (Encoding each token's prefix
    instead made a long text's offsets quadratic in its length.)"""
    if text.isascii():
        return None
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    widths = 1 + (points >= 0x80).astype(np.int64) + (points >= 0x800) + (points >= 0x10000)
    return np.concatenate(([0], np.cumsum(widths)))


async def tokens_of(body: Tokenize, call: Call, st: ModelState, llm: LLM) -> list[list[dict[str, Any]]]:
    """``/tokenize``: each input's tokens, with their text and UTF-8 byte offsets (none for special tokens)."""
    texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
    if not texts:
        raise empty_list("inputs")
    check_batch(st, len(texts), not isinstance(body.inputs, str))
    for text in texts:
        if not text:
            raise empty_input()
        checked_text(text, "inputs")
    try:  # what /embed prepends
        prefix = st.renderer.reads.prefix(prompt_name_of(st, body.prompt_name)) or ""
    except InvalidRequest as exc:
        raise ApiError(413, f"Input validation error: {exc}", param="prompt_name", tei=VALIDATION) from None
    renderer = st.renderer
    tokens = sum(tokens_of_text(len(t)) for t in texts)
    check_tokens(st, tokens, "inputs")

    def run() -> list:
        out = []
        for text in texts:
            full = prefix + text  # what the tokenizer reads is lower case where the model wants it; the offsets are the text's
            enc = renderer.tokenize(full, add_special_tokens=body.add_special_tokens, offsets=True)
            offsets = utf8_offsets(full)
            tokens = []
            for token_id, special, (start, stop) in zip(enc["input_ids"], enc["special_tokens_mask"], enc["offset_mapping"]):
                if special:
                    tokens.append({"id": token_id, "text": renderer.detokenize([token_id], each=True)[0], "special": True, "start": None, "stop": None})
                else:  # TEI's offsets count UTF-8 bytes
                    begin, end = (start, stop) if offsets is None else (int(offsets[start]), int(offsets[stop]))
                    tokens.append({"id": token_id, "text": full[start:stop], "special": False, "start": begin, "stop": end})
            out.append(tokens)
        return out

    return await until_done(call, st, st.batcher.call(run, tokens))


async def texts_of(body: Decode, call: Call, st: ModelState, llm: LLM) -> list[str]:
    """``/decode``: the text of each list of token ids."""
    ids = body.ids
    batched = bool(ids) and not all(isinstance(i, int) for i in ids)
    items = list(ids) if batched else [ids]
    check_batch(st, len(items), batched)
    if any(not item for item in items):  # TEI reads [] as no ids, not as an empty batch
        raise empty_input("input_ids")
    for item in items:
        check_token_ids(st, item, "ids")
    count = sum(map(len, items))
    check_tokens(st, count, "ids")
    renderer = st.renderer
    return await until_done(
        call, st, st.batcher.call(lambda: [renderer.detokenize(item, skip_special_tokens=body.skip_special_tokens) for item in items], count)
    )


# -- the model ------------------------------------------------------------------------------------


def model_kind(llm: LLM) -> str:
    """TEI's model type of ``llm``: ``"reranker"`` (a classifier of one label), ``"classifier"`` or ``"embedding"``."""
    if CLASSIFY in llm.supported_tasks and llm.model.id2label:
        return "reranker" if len(llm.model.id2label) == 1 else "classifier"
    return "embedding"


def info_of(st: ModelState, llm: LLM) -> dict[str, Any]:
    """``/info``: the served model and the server's limits, in TEI's fields."""
    model = llm.model
    tasks = llm.supported_tasks
    labels = {str(i): label for i, label in sorted(model.id2label.items())} if CLASSIFY in tasks else {}
    if labels:
        model_type: dict = {model_kind(llm): {"id2label": labels, "label2id": {label: int(i) for i, label in labels.items()}}}
    else:
        pooling = model.pooling_type(llm.task(EMBED)).value if EMBED in tasks and SPARSE_EMBED not in tasks else "splade"
        pooling = pooling[0] if isinstance(pooling, (tuple, list)) and pooling else pooling
        model_type = {"embedding": {"pooling": str(pooling).lower()}}
    limits = st.limits
    return {
        "model_id": st.served,
        "model_sha": None,
        "model_dtype": str(model.dtype).removeprefix("torch."),
        "served_model_name": st.served,
        "model_type": model_type,
        "max_concurrent_requests": limits.max_concurrent_requests,
        "max_input_length": st.max_len,
        "max_batch_tokens": limits.max_batch_tokens,
        "max_batch_requests": None,
        "max_client_batch_size": limits.max_inputs_per_request,
        "auto_truncate": st.options.auto_truncate,
        "tokenization_workers": 1,
        "version": __version__,
        "sha": None,
        "docker_label": None,
    }
