"""vLLM's ``AsyncLLM`` for pooling models: :class:`~poolkit.api.llm.LLM`'s methods, awaited.

An application that answers its own requests on an event loop (FastAPI, a Ray actor, any asyncio
program) cannot call ``LLM.embed`` there: it would run the model on the loop, one caller at a
time. :class:`AsyncLLM` takes the same arguments and gives the same outputs. Each call builds the
request record and passes the renderer's door as ``LLM`` does (what comes before and after the run
is :mod:`poolkit.api.calls`, shared), and awaits its run on the batcher the server uses
(:class:`~poolkit.runtime.batching.Batcher`): the work of concurrent callers merges into one engine
call on a worker thread, and a caller cancelled while its work waits takes that work out of the queue.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, Callable, Sequence

from ..config.settings import EngineArgs
from ..contracts.outputs import (
    ClassificationRequestOutput,
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingRequestOutput,
    RerankResult,
    ScoringRequestOutput,
)
from ..contracts.sparse import SparseEmbeddingRequestOutput, check_pruning
from ..inputs.content import guess_tokens
from ..inputs.request import PoolRequest, Rendered
from ..runtime.batching import Batcher
from ..runtime.columns import Results
from .calls import (
    classification_outputs,
    embedding_outputs,
    encode_task,
    late_chunked,
    pooling_outputs,
    ranked,
    rerank_documents,
    sparse_outputs,
)
from .entities import Entities
from .llm import LLM

#: Estimated tokens allowed to wait for the model before a call is refused with
#: :class:`~poolkit.runtime.batching.QueueFull` (the server's ``--max-queue-tokens`` default).
MAX_QUEUE_TOKENS = 1_000_000


class AsyncLLM:
    """A pooling model, loaded once, whose calls are awaited and merged into batches (vLLM's ``AsyncLLM``).

    ``embed``, ``encode``, ``classify``, ``reward``, ``sparse_embed``, ``entities``, ``score`` and
    ``rerank`` take :class:`~poolkit.LLM`'s arguments (but ``use_tqdm``: a call that merges with
    others has no progress of its own) and return its outputs. A request whose inputs are texts or
    token ids is rendered on the calling event loop, which only checks it, as the server does; any
    other (prompt dicts, prompts with images, chat messages) on the batcher's worker thread, where
    decoding images and running a chat template are done. The prompts of concurrent calls of one task run as one engine
    call; ``score``, ``rerank`` and ``entities`` run whole on the worker thread, in turn with the
    batches, as the server runs them. The loaded :class:`~poolkit.LLM` is :attr:`llm`, its
    batcher :attr:`batcher`.

    The model loads in the constructor; inside a running event loop, ``await AsyncLLM.create(...)``
    loads it on a thread instead, so the loop goes on serving. :meth:`shutdown` (or leaving
    ``async with``) finishes the queued work, after which a call raises
    :class:`~poolkit.runtime.batching.ShuttingDown`.

    Args:
        model: as :class:`~poolkit.LLM`'s (default: the embedded all-MiniLM-L6-v2).
        max_queue_tokens: estimated tokens allowed to wait; beyond it a call raises
            :class:`~poolkit.runtime.batching.QueueFull` at once.
        **kwargs: :class:`~poolkit.LLM`'s settings (``dtype``, ``device``, ``pooler_config``, ...);
            ``max_batch_tokens`` also bounds the estimated tokens merged into one engine call.

    Example:
        >>> engine = await AsyncLLM.create("sentence-transformers/all-MiniLM-L6-v2")
        >>> outputs = await asyncio.gather(*(engine.embed(text) for text in ["a cat", "a dog"]))
        >>> len(outputs[0][0].outputs.embedding)
        384
        >>> await asyncio.to_thread(engine.shutdown)
        True
    """

    llm: LLM
    batcher: Batcher

    def __init__(self, model: str | None = None, *, max_queue_tokens: int = MAX_QUEUE_TOKENS, **kwargs: Any) -> None:
        self._start(LLM(model, **kwargs), max_queue_tokens)

    @classmethod
    def from_llm(cls, llm: LLM, *, max_queue_tokens: int = MAX_QUEUE_TOKENS) -> "AsyncLLM":
        """An engine on a loaded :class:`~poolkit.LLM`. Its work runs on the batcher's thread: call
        the ``LLM``'s own methods only while none is in flight (one model runs one batch at a time)."""
        engine = cls.__new__(cls)
        engine._start(llm, max_queue_tokens)
        return engine

    @classmethod
    def from_engine_args(cls, engine_args: EngineArgs, *, max_queue_tokens: int = MAX_QUEUE_TOKENS) -> "AsyncLLM":
        """The model that ``engine_args`` describes (vLLM's constructor; :class:`~poolkit.EngineArgs`)."""
        return cls.from_llm(LLM.from_args(engine_args), max_queue_tokens=max_queue_tokens)

    @classmethod
    async def create(cls, model: str | None = None, *, max_queue_tokens: int = MAX_QUEUE_TOKENS, **kwargs: Any) -> "AsyncLLM":
        """:class:`AsyncLLM`'s constructor, the model loaded on a thread: the event loop it is
        awaited in goes on serving while the weights load."""
        return await asyncio.to_thread(partial(cls, model, max_queue_tokens=max_queue_tokens, **kwargs))

    def _start(self, llm: LLM, max_queue_tokens: int) -> None:
        self.llm = llm
        budget = llm.args.max_batch_tokens  # the server's rule: the load setting, else the batcher's default
        self.batcher = Batcher(llm, **({"max_batch_tokens": budget} if budget else {}), max_queue_tokens=max_queue_tokens)

    # -- the run -------------------------------------------------------------------------------

    async def _run(self, request: PoolRequest) -> tuple[Rendered, Results]:
        """``request`` through the renderer's door (:meth:`LLM.render`) and its prompts run on the
        batcher, merged with other calls' prompts of its task."""
        llm = self.llm
        if _checked_only(request):
            rendered = llm.render(request)
        else:
            rendered = await self.batcher.call(partial(llm.render, request), _guess(request.inputs))
        results = await self.batcher.submit(*rendered, llm.estimate_tokens(rendered.prompts, rendered.params))
        return rendered, results

    async def _whole(self, call: Callable[[], Any], cost: int) -> Any:
        """``call()`` (an :class:`~poolkit.LLM` method that runs the model itself) on the batcher's
        worker thread, in turn with the batches."""
        return await self.batcher.call(call, cost)

    # -- API -----------------------------------------------------------------------------------

    async def encode(
        self,
        prompts: Any = None,
        pooling_params: Any = None,
        *,
        pooling_task: str | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        prompt_name: str | None = None,
        messages: Any = None,
        chat_template: str | None = None,
        lora_request: Any = None,
    ) -> list[PoolingRequestOutput[Any]]:
        """:meth:`poolkit.LLM.encode`, awaited: any pooling task; ``outputs.data`` holds each input's tensor."""
        llm = self.llm
        pooling_task = encode_task(llm, prompts, pooling_task, "AsyncLLM")
        if pooling_task == llm.plugin_task:  # the IO processor plugin's own steps around its run
            encode = partial(
                llm.encode, prompts, pooling_params, pooling_task=pooling_task, tokenization_kwargs=tokenization_kwargs,
                messages=messages, chat_template=chat_template,
            )
            return await self._whole(encode, _guess(prompts))
        rendered, results = await self._run(PoolRequest.of(
            prompts, pooling_params, task=pooling_task, tokenization_kwargs=tokenization_kwargs, prompt_name=prompt_name,
            lora_request=lora_request, messages=messages, chat_template=chat_template,
        ))
        build = partial(pooling_outputs, llm.new_request_ids(len(results)), results, rendered, llm.engine)
        return await self._whole(build, 0) if late_chunked(rendered) else build()  # late chunks' spans tokenize

    async def embed(
        self,
        prompts: Any = None,
        pooling_params: Any = None,
        *,
        tokenization_kwargs: dict[str, Any] | None = None,
        prompt_name: str | None = None,
        messages: Any = None,
        chat_template: str | None = None,
        lora_request: Any = None,
    ) -> list[EmbeddingRequestOutput]:
        """:meth:`poolkit.LLM.embed`, awaited: one embedding per input in ``outputs.embedding``."""
        _, results = await self._run(PoolRequest.of(
            prompts, pooling_params, task="embed", tokenization_kwargs=tokenization_kwargs, prompt_name=prompt_name,
            lora_request=lora_request, messages=messages, chat_template=chat_template,
        ))
        return embedding_outputs(self.llm.new_request_ids(len(results)), results)

    async def sparse_embed(
        self,
        prompts: Any,
        pooling_params: Any = None,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        return_tokens: bool = False,
        tokenization_kwargs: dict[str, Any] | None = None,
        prompt_name: str | None = None,
    ) -> list[SparseEmbeddingRequestOutput]:
        """:meth:`poolkit.LLM.sparse_embed`, awaited: sparse lexical embeddings (SPLADE), strongest weights first."""
        check_pruning(top_k, threshold)
        outputs = await self.encode(
            prompts, pooling_params, pooling_task="sparse_embed", tokenization_kwargs=tokenization_kwargs, prompt_name=prompt_name
        )
        return sparse_outputs(outputs, top_k, threshold, self.llm.model.tokenizer if return_tokens else None)

    async def classify(
        self,
        prompts: Any = None,
        pooling_params: Any = None,
        *,
        tokenization_kwargs: dict[str, Any] | None = None,
        messages: Any = None,
        chat_template: str | None = None,
        lora_request: Any = None,
    ) -> list[ClassificationRequestOutput]:
        """:meth:`poolkit.LLM.classify`, awaited: class probabilities per input, ``outputs.label`` the top class."""
        outputs = await self.encode(
            prompts, pooling_params, pooling_task="classify", tokenization_kwargs=tokenization_kwargs,
            messages=messages, chat_template=chat_template, lora_request=lora_request,
        )
        return classification_outputs(outputs, self.llm.model.id2label)

    async def reward(
        self,
        prompts: Any,
        pooling_params: Any = None,
        *,
        tokenization_kwargs: dict[str, Any] | None = None,
        lora_request: Any = None,
    ) -> list[PoolingRequestOutput[PoolingOutput]]:
        """:meth:`poolkit.LLM.reward`, awaited: token-level rewards (``token_classify``)."""
        return await self.encode(
            prompts, pooling_params, pooling_task="token_classify", tokenization_kwargs=tokenization_kwargs, lora_request=lora_request
        )

    async def entities(
        self,
        prompts: str | Sequence[str],
        pooling_params: Any = None,
        *,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[Entities]:
        """:meth:`poolkit.LLM.entities`, awaited: entity spans per input from a token classifier
        (their character offsets read with the tokenizer, on the worker thread)."""
        entities = partial(self.llm.entities, prompts, pooling_params, tokenization_kwargs=tokenization_kwargs)
        return await self._whole(entities, _guess(prompts))

    async def score(
        self,
        data_1: Any,
        data_2: Any,
        pooling_params: Any = None,
        *,
        tokenization_kwargs: dict[str, Any] | None = None,
        chat_template: str | None = None,
        instruction: str | None = None,
        lora_request: Any = None,
    ) -> list[ScoringRequestOutput]:
        """:meth:`poolkit.LLM.score`, awaited: scores of text pairs, 1:1, 1:N or N:N, by the model's scorer."""
        llm = self.llm
        tokens = llm.estimate_pair_tokens(*llm.pair(data_1, data_2))  # the sides checked here, as LLM.score checks them first
        score = partial(
            llm.score, data_1, data_2, pooling_params, tokenization_kwargs=tokenization_kwargs, chat_template=chat_template,
            instruction=instruction, lora_request=lora_request,
        )
        return await self._whole(score, tokens)

    async def rerank(
        self,
        query: Any,
        documents: Sequence[Any],
        top_n: int | None = None,
        pooling_params: Any = None,
        *,
        tokenization_kwargs: dict[str, Any] | None = None,
        chat_template: str | None = None,
        instruction: str | None = None,
        lora_request: Any = None,
    ) -> list[RerankResult]:
        """:meth:`poolkit.LLM.rerank`, awaited: documents sorted by relevance to ``query``, best first."""
        docs = rerank_documents(query, documents, top_n)
        scores = await self.score(
            query, docs, pooling_params, tokenization_kwargs=tokenization_kwargs, chat_template=chat_template,
            instruction=instruction, lora_request=lora_request,
        )
        return ranked(docs, scores, top_n)

    async def reset_prefix_cache(self) -> bool:
        """:meth:`poolkit.LLM.reset_prefix_cache`: forget the prefix states kept across calls; a
        batch running already keeps those it read."""
        return self.llm.reset_prefix_cache()

    # -- shutting down -------------------------------------------------------------------------

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Stop taking calls and finish the work queued and running (vLLM's ``shutdown``); True if
        done within ``timeout`` seconds, after which the work still queued fails with
        :class:`~poolkit.runtime.batching.ShuttingDown`, as every later call does. It waits: in an
        event loop, leave ``async with`` or ``await asyncio.to_thread(engine.shutdown)``."""
        return self.batcher.drain(timeout)

    async def __aenter__(self) -> "AsyncLLM":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.shutdown)


def _checked_only(request: PoolRequest) -> bool:
    """Whether rendering ``request`` only checks it: texts or token-id lists, no chat messages
    (what the event loop renders, as the server's does)."""
    inputs = request.inputs
    if request.messages is not None:
        return False
    return isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and set(map(type, inputs)) <= {str, list})


def _guess(inputs: Any) -> int:
    """Tokens of a call's inputs guessed before they are rendered (:func:`poolkit.inputs.content.guess_tokens`)."""
    return guess_tokens(inputs if isinstance(inputs, (list, tuple)) else [inputs])
