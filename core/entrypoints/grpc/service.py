"""The RPCs of TEI's five services (``tei.v1``: Info, Embed, Predict, Rerank, Tokenize): each reads
its message into TEI's request (:mod:`poolkit.entrypoints.serving.tei`), runs the work TEI's HTTP
routes run too, on the server's models and batchers, and writes TEI's message of the result.

What differs from the HTTP routes is what TEI's gRPC API says differently: one input a message;
proto3's defaults (``truncate`` false whatever ``--auto-truncate`` says, ``normalize`` true when
unset, ``add_special_tokens`` and ``skip_special_tokens`` false); gRPC status codes for TEI's error
types (:func:`grpc_status`); the model chosen by the ``x-model`` metadata (the first when absent).

The key and the wire's bytes are checked before an RPC runs (:class:`~poolkit.entrypoints.grpc.guard.CallGuard`).
Streams (``EmbedStream``, ``PredictStream``, ...) answer each message as soon as it and those
before it are done, in order; each message takes a slot of the server's one admission limit
(:mod:`~poolkit.entrypoints.serving.admission`: it waits for room instead of being refused), at most
:data:`~poolkit.entrypoints.serving.admission.STREAM_WINDOW` of a stream's messages are taken and not
yet sent (a client that stops reading stops the stream), and the model or LoRA adapter ``x-model``
names is resolved again for each message (an adapter unloaded meanwhile ends the stream with
``NotFound``; one reloaded answers with its new weights). A message that fails ends the stream with
its status, after the answers before it. ``RerankStream`` collects its messages, one (query, text)
pair each, within the HTTP body limit in all, checking each as it arrives, and answers once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

import grpc

from ...contracts.errors import PoolkitError
from ..serving import tei
from ..serving.admission import STREAM_WINDOW
from ..serving.call import Call
from ..serving.compute_times import ComputeTimes, characters, metadata_headers
from ..serving.door import ready_model
from ..serving.errors import ApiError, ClientGone, clean_message, status_of, tei_status
from ..serving.scoring import has_scorer
from ..serving.tei import CLASSIFY, EMBED, SPARSE_EMBED, TOKEN_EMBED
from .guard import Refused

if TYPE_CHECKING:
    import torch

    from ...api.llm import LLM
    from ..serving.state import ModelState, ServerState

logger = logging.getLogger(__name__)

#: The gRPC code of each HTTP status the server's errors carry that names one outright.
_BY_STATUS = {
    401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED, 500: grpc.StatusCode.INTERNAL, 501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
#: TEI's gRPC code of each of its error types (its ``router/src/grpc/server.rs``).
_BY_TEI_TYPE = {
    "Validation": grpc.StatusCode.INVALID_ARGUMENT, "Empty": grpc.StatusCode.INVALID_ARGUMENT,
    "Backend": grpc.StatusCode.FAILED_PRECONDITION, "Tokenizer": grpc.StatusCode.FAILED_PRECONDITION,
    "Overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED, "Unhealthy": grpc.StatusCode.UNAVAILABLE,
}
#: TEI's ``TruncationDirection`` values.
_DIRECTIONS = {0: "right", 1: "left"}
#: TEI's ``ModelType`` values by :func:`~poolkit.entrypoints.serving.tei.model_kind`.
_MODEL_TYPES = {"embedding": 0, "classifier": 1, "reranker": 2}


def grpc_status(exc: BaseException, scrub: list[tuple[str, str]]) -> tuple[grpc.StatusCode, str]:
    """The gRPC code and message of an error a call raised: the HTTP route's message, with the
    code TEI's gRPC server gives its error type (``InvalidArgument`` for validation,
    ``FailedPrecondition`` for a model of the wrong type, ``ResourceExhausted`` when overloaded)."""
    if isinstance(exc, Refused):
        return exc.code, exc.message
    if isinstance(exc, ClientGone):
        return grpc.StatusCode.CANCELLED, "the client cancelled the call"
    if isinstance(exc, ApiError):
        status, kind, message = exc.status, (exc.tei or tei_status(exc.status))[1], exc.message
    elif isinstance(exc, PoolkitError):
        status = status_of(exc)
        kind, message = tei_status(status)[1], str(exc) or type(exc).__name__
    else:
        logger.error("gRPC call failed: %r", exc, exc_info=exc)
        return grpc.StatusCode.INTERNAL, "internal server error"
    code = _BY_STATUS.get(status) or _BY_TEI_TYPE.get(kind, grpc.StatusCode.INVALID_ARGUMENT)
    return code, clean_message(message, scrub)


class _Outcome:
    """How an RPC ended, counted in ``/metrics`` under its method and status code: an error ends
    the call with its status (:func:`grpc_status`); an exception of ``cancelled`` counts as
    ``Cancelled`` and is raised on."""

    def __init__(self, state: ServerState, context: grpc.aio.ServicerContext, method: str,
                 cancelled: tuple[type[BaseException], ...]) -> None:
        self.state, self.context, self.method, self.cancelled = state, context, method, cancelled
        self.start = time.perf_counter()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: Any) -> bool:
        code, failure = grpc.StatusCode.OK, None
        if isinstance(exc, self.cancelled):
            code = grpc.StatusCode.CANCELLED
        elif isinstance(exc, Exception):  # every error is a status
            code, message = grpc_status(exc, self.state.scrub)
            failure = (code, message)
        self.state.metrics.observe(self.method, code.name, time.perf_counter() - self.start)
        if failure is None:
            return False
        await self.context.abort(*failure)
        return True


def _direction(value: int) -> str:
    if value not in _DIRECTIONS:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"truncation_direction must be 0 (right) or 1 (left), got {value}")
    return _DIRECTIONS[value]


def _optional(message: Any, field: str, default: Any = None) -> Any:
    return getattr(message, field) if message.HasField(field) else default


def _unary(method: str, one: str) -> Callable[..., Awaitable[Any]]:
    """A unary RPC answering its message with the service's method ``one``."""

    async def rpc(self: TeiService, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer(context, method, lambda *a: getattr(self, one)(request, *a))

    return rpc


def _streaming(method: str, one: str) -> Callable[..., AsyncIterator[Any]]:
    """A bidirectional streaming RPC answering each message with the service's method ``one``
    (an async generator function, as grpc.aio serves streams; the answers' stream is closed with it)."""

    async def rpc(self: TeiService, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with contextlib.aclosing(self._stream(requests, context, method, getattr(self, one))) as answers:
            async for answer in answers:
                yield answer

    return rpc


class TeiService:
    """Every RPC of ``tei.v1``'s services, registered once for each of them.

    Args:
        state: the HTTP server's state (its models, limits, API key and metrics).
        pb: TEI's message classes (:func:`~poolkit.entrypoints.grpc.stubs.tei`).
    """

    def __init__(self, state: ServerState, pb: Any) -> None:
        self.state = state
        self.pb = pb

    # -- the call: key, model, admission, status ---------------------------------------------------

    def _model(self, context: grpc.aio.ServicerContext, opening: bool = True) -> ModelState:
        """The model or adapter a call names (``x-model``, the first when absent), resolved now
        and taking requests (:func:`~poolkit.entrypoints.serving.door.ready_model`; the key was
        checked before the call reached its RPC). A stream open before a shutdown began
        (``opening`` false: its later messages) is drained to its end."""
        return ready_model(self.state, dict(context.invocation_metadata() or ()).get("x-model"), opening)

    def _busy(self) -> Refused:
        return Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the server is busy ({self.state.in_flight} requests in flight); retry later")

    async def _answer(self, context: grpc.aio.ServicerContext, method: str,
                      work: Callable[[ModelState, LLM, Call], Awaitable[Any]], admit: bool = True) -> Any:
        """Run one call's ``work`` as the HTTP guard runs a request: the model, then a slot of the
        server's admission limit (``ResourceExhausted`` when none is free); counted in ``/metrics``
        under the method's name and its status code."""
        st, admitted = self.state, False
        async with _Outcome(st, context, method, cancelled=(asyncio.CancelledError,)):
            try:
                model = self._model(context)
                if admit:
                    if not st.admission.try_admit():
                        raise self._busy()
                    admitted = True
                answer = await work(model, model.llm, Call.of_rpc(context))
                if answer.DESCRIPTOR.fields_by_name.get("metadata") is not None:  # TEI's x-compute-* headers, as HTTP's
                    await context.send_initial_metadata(tuple(metadata_headers(answer.metadata, model.llm.model.device.type).items()))
                return answer
            finally:
                if admitted:
                    st.admission.release()

    async def _stream(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, method: str,
                      one: Callable[[Any, ModelState, LLM, Call], Awaitable[Any]]) -> AsyncIterator[Any]:
        """Answer a bidirectional stream: each message as a call of its own, several at once, the
        answers in the order of the messages; the first failure ends the stream with its status."""
        st = self.state
        admission = st.admission
        pending: asyncio.Queue = asyncio.Queue()  # each message's task, in order; None after the last
        window = asyncio.Semaphore(STREAM_WINDOW)  # messages taken and not yet sent
        reader: asyncio.Future | None = None
        async with _Outcome(st, context, method, cancelled=(asyncio.CancelledError, GeneratorExit)):
            try:
                self._model(context)  # an unknown model or a server not serving ends the stream at once
                call = Call.of_rpc(context)

                async def run(message: Any) -> Any:
                    try:
                        model = self._model(context, opening=False)  # now: the adapter may have been unloaded or reloaded
                        return await one(message, model, model.llm, call)
                    finally:
                        admission.release(streamed=True)

                async def read() -> None:
                    messages = requests.__aiter__()
                    try:
                        while True:
                            await window.acquire()  # a client that stops reading stops the stream here
                            try:
                                message = await messages.__anext__()
                            except StopAsyncIteration:
                                return
                            await admission.admit_message()  # a stream waits for room, it is not refused
                            pending.put_nowait(asyncio.ensure_future(run(message)))
                    finally:
                        pending.put_nowait(None)

                reader = asyncio.ensure_future(read())
                while (task := await pending.get()) is not None:
                    yield await task
                    window.release()
                await reader  # what reading the messages raised, if anything
            finally:
                if reader is not None:
                    reader.cancel()
                while not pending.empty():
                    task = pending.get_nowait()
                    if task is not None:
                        task.cancel()

    # -- Info ----------------------------------------------------------------------------------------

    async def Info(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work(st: ModelState, llm: LLM, call: Call) -> Any:
            info = tei.info_of(st, llm)
            return self.pb.InfoResponse(
                version=info["version"], model_id=str(info["model_id"]), model_dtype=info["model_dtype"],
                model_type=_MODEL_TYPES[tei.model_kind(llm)], max_concurrent_requests=info["max_concurrent_requests"],
                max_input_length=info["max_input_length"] or 0, max_batch_tokens=info["max_batch_tokens"],
                max_client_batch_size=info["max_client_batch_size"], tokenization_workers=info["tokenization_workers"],
            )

        return await self._answer(context, "/tei.v1.Info/Info", work, admit=False)

    # -- Embed ---------------------------------------------------------------------------------------

    async def _embedding(self, m: Any, st: ModelState, llm: LLM, call: Call, kind: type[tei.EmbedSparse],
                         rows_of: Callable[..., Awaitable[tei.Rows]], **fields: Any) -> tuple[torch.Tensor, Any]:
        """The row ``rows_of`` computes for an Embed service message read as TEI's request ``kind``
        (``fields``: those only ``kind`` has), and the call's metadata."""
        asked = kind(
            inputs=m.inputs, truncate=m.truncate, truncation_direction=_direction(m.truncation_direction),
            prompt_name=_optional(m, "prompt_name"), **fields,
        )
        with ComputeTimes() as times:
            rows, tokens = await rows_of(asked, call, st, llm)
        return rows[0], times.metadata(self.pb, len(m.inputs), tokens)

    async def _embed(self, m: Any, st: ModelState, llm: LLM, call: Call) -> Any:
        row, metadata = await self._embedding(
            m, st, llm, call, tei.Embed, tei.embed_rows, normalize=_optional(m, "normalize", True), dimensions=_optional(m, "dimensions")
        )
        return self.pb.EmbedResponse(embeddings=row.float().tolist(), metadata=metadata)

    async def _embed_sparse(self, m: Any, st: ModelState, llm: LLM, call: Call) -> Any:
        row, metadata = await self._embedding(m, st, llm, call, tei.EmbedSparse, tei.sparse_rows)
        values = [self.pb.SparseValue(index=i, value=v) for i, v in zip(*tei.nonzero(row))]
        return self.pb.EmbedSparseResponse(sparse_embeddings=values, metadata=metadata)

    async def _embed_all(self, m: Any, st: ModelState, llm: LLM, call: Call) -> Any:
        row, metadata = await self._embedding(m, st, llm, call, tei.EmbedAll, tei.embed_all_rows)
        vectors = [self.pb.TokenEmbedding(embeddings=token) for token in row.float().tolist()]
        return self.pb.EmbedAllResponse(token_embeddings=vectors, metadata=metadata)

    Embed = _unary("/tei.v1.Embed/Embed", "_embed")

    EmbedSparse = _unary("/tei.v1.Embed/EmbedSparse", "_embed_sparse")

    EmbedAll = _unary("/tei.v1.Embed/EmbedAll", "_embed_all")

    EmbedStream = _streaming("/tei.v1.Embed/EmbedStream", "_embed")

    EmbedSparseStream = _streaming("/tei.v1.Embed/EmbedSparseStream", "_embed_sparse")

    EmbedAllStream = _streaming("/tei.v1.Embed/EmbedAllStream", "_embed_all")

    # -- Predict -------------------------------------------------------------------------------------

    async def _predict(self, m: Any, st: ModelState, llm: LLM, call: Call, inputs: Any = None) -> Any:
        asked = tei.Predict(
            inputs=m.inputs if inputs is None else inputs, truncate=m.truncate, raw_scores=m.raw_scores,
            truncation_direction=_direction(m.truncation_direction),
        )
        with ComputeTimes() as times:
            ((row,), tokens), _ = await tei.predict_rows(asked, call, st, llm)
        scored = [self.pb.Prediction(score=score, label=label) for score, label in tei.predictions(row, llm.model.id2label)]
        chars = characters(m.inputs if inputs is None else inputs)
        return self.pb.PredictResponse(predictions=scored, metadata=times.metadata(self.pb, chars, tokens))

    async def _predict_pair(self, m: Any, st: ModelState, llm: LLM, call: Call) -> Any:
        if not 1 <= len(m.inputs) <= 2:  # TEI's check and words
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"`inputs` must have a single or two elements. Given: {len(m.inputs)}")
        return await self._predict(m, st, llm, call, list(m.inputs))

    Predict = _unary("/tei.v1.Predict/Predict", "_predict")

    PredictPair = _unary("/tei.v1.Predict/PredictPair", "_predict_pair")

    PredictStream = _streaming("/tei.v1.Predict/PredictStream", "_predict")

    PredictPairStream = _streaming("/tei.v1.Predict/PredictPairStream", "_predict_pair")

    # -- Rerank --------------------------------------------------------------------------------------

    async def _rerank(self, first: Any, queries: list[str], texts: list[str], st: ModelState, llm: LLM, call: Call) -> Any:
        """Rank ``texts`` against their queries (one, or one a text) with ``first``'s options."""
        asked = tei.Rerank(
            truncate=first.truncate, raw_scores=first.raw_scores, return_text=first.return_text,
            truncation_direction=_direction(first.truncation_direction),
        )
        with ComputeTimes() as times:
            ranks, tokens = await tei.rerank_pairs(call, st, llm, queries, texts, asked)
        chars = characters(texts) + characters(queries * len(texts) if len(queries) == 1 else queries)
        ranked = [self.pb.Rank(**rank) for rank in ranks]
        return self.pb.RerankResponse(ranks=ranked, metadata=times.metadata(self.pb, chars, tokens))

    async def Rerank(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._answer(
            context, "/tei.v1.Rerank/Rerank", lambda *a: self._rerank(request, [request.query], list(request.texts), *a)
        )

    async def RerankStream(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        """Each message a (query, text) pair; ``raw_scores``, ``return_text`` and the truncation
        are the first message's (TEI reads the first two so; poolkit the truncation too). The
        messages are checked as they arrive and held within ``--max-body-bytes`` in all, as one
        HTTP body; the slot of the admission limit is taken once they are in, as HTTP's."""
        st = self.state

        async def work(model: ModelState, llm: LLM, call: Call) -> Any:
            limits, messages, size = st.limits, [], 0
            async for message in requests:
                size += message.ByteSize()
                if size > limits.max_body_bytes:
                    raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"the stream's messages are larger than the limit of {limits.max_body_bytes} bytes")
                if len(messages) == limits.max_inputs_per_request:
                    raise tei.batch_too_large(model, len(messages) + 1)
                tei.check_pair(message.query, message.text)
                messages.append(message)
            if not st.admission.try_admit():
                raise self._busy()
            try:
                first = messages[0] if messages else self.pb.RerankStreamRequest()
                return await self._rerank(first, [m.query for m in messages], [m.text for m in messages], model, llm, call)
            finally:
                st.admission.release()

        return await self._answer(context, "/tei.v1.Rerank/RerankStream", work, admit=False)

    # -- Tokenize ------------------------------------------------------------------------------------

    async def _tokenize(self, m: Any, st: ModelState, llm: LLM, call: Call) -> Any:
        asked = tei.Tokenize(inputs=m.inputs, add_special_tokens=m.add_special_tokens, prompt_name=_optional(m, "prompt_name"))
        (tokens,) = await tei.tokens_of(asked, call, st, llm)
        return self.pb.EncodeResponse(tokens=[self.pb.SimpleToken(**{k: v for k, v in t.items() if v is not None}) for t in tokens])

    async def _decode(self, m: Any, st: ModelState, llm: LLM, call: Call) -> Any:
        (text,) = await tei.texts_of(tei.Decode(ids=list(m.ids), skip_special_tokens=m.skip_special_tokens), call, st, llm)
        return self.pb.DecodeResponse(text=text)

    Tokenize = _unary("/tei.v1.Tokenize/Tokenize", "_tokenize")

    Decode = _unary("/tei.v1.Tokenize/Decode", "_decode")

    TokenizeStream = _streaming("/tei.v1.Tokenize/TokenizeStream", "_tokenize")

    DecodeStream = _streaming("/tei.v1.Tokenize/DecodeStream", "_decode")


def serving(state: ServerState, service: str) -> bool | None:
    """Whether a ``tei.v1`` service (or the whole server, ``""``) takes calls, for the health
    service: ``None`` for a name the server does not serve. Embed, Predict and Rerank serve once
    the default model is loaded, each where that model does its work (Rerank: any model that can
    score, as the routes)."""
    if service not in ("", "tei.v1.Info", "tei.v1.Tokenize", "tei.v1.Embed", "tei.v1.Predict", "tei.v1.Rerank"):
        return None
    if state.draining:
        return False
    if service in ("", "tei.v1.Info", "tei.v1.Tokenize"):
        return True
    model = state.first
    if not model.ready:
        return False
    tasks = model.llm.supported_tasks
    if service == "tei.v1.Embed":
        return bool({EMBED, TOKEN_EMBED, SPARSE_EMBED} & set(tasks))
    if service == "tei.v1.Predict":
        return CLASSIFY in tasks
    return has_scorer(model.llm)

