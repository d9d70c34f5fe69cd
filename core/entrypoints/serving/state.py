"""What the routes of one application share: the limits, the models, their batchers and counters.

One :class:`ServerState` per application, at ``app.state.poolkit``, holding one :class:`ModelState`
per served model. The middleware picks the model a request names; routes reach that model's state
through the :func:`~poolkit.entrypoints.server.deps.server_state` dependency.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ...contracts.errors import InvalidRequest
from ...inputs import Renderer
from ...inputs.media import MediaPolicy
from ...inputs.request import InputLimits
from ...lora.manager import enabled
from ...lora.request import LoRARequest
from ...runtime.batching import Batcher
from .admission import Admission
from .cache import EmbeddingCache
from .metrics import ModelMetrics, ServerMetrics

if TYPE_CHECKING:
    from ...api.llm import LLM

MiB = 1024 * 1024


@dataclasses.dataclass
class ServerLimits:
    """The server's limits; each has a CLI option (``poolkit serve --help``).

    Attributes:
        max_inputs_per_request: inputs (texts, token-id lists, images, documents) in one request.
        max_request_tokens: tokens in one request, estimated before tokenizing (about four
            characters a token, each input capped at its truncation limit).
        max_body_bytes: bytes of a request body.
        max_concurrent_requests: requests being handled at once; more get 429.
        max_batch_tokens: estimated tokens the batcher merges into one engine call.
        max_queue_tokens: estimated tokens allowed to wait; more get 429.
        shutdown_timeout: seconds to finish in-flight requests and queued work on SIGTERM.
        header_timeout: seconds a client has to send a request's complete headers, from connecting
            or from the first byte of its next request on a keep-alive connection; then 408.
        body_timeout: seconds an admitted request has to send its whole body once its headers are
            in; then 408 and the connection is closed, so a stalled body cannot hold a slot.
        max_response_bytes: bytes of one response, estimated before the work (the inputs or their
            tokens times the width of a task's results) and counted again before the body is built;
            beyond it 413.
    """

    max_inputs_per_request: int = 2048
    max_request_tokens: int = 300_000
    max_body_bytes: int = 16 * MiB
    max_concurrent_requests: int = 512
    max_batch_tokens: int = 16384
    max_queue_tokens: int = 1_000_000
    shutdown_timeout: float = 30.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_response_bytes: int = 64 * MiB

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not (0 < value < math.inf):  # NaN compares false to everything: `value <= 0` let it through
                option = "--" + field.name.replace("_", "-")
                raise InvalidRequest(f"server limit {field.name} ({option}) must be a positive finite number, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """What the command line sets for each served model (:func:`~poolkit.entrypoints.server.create_app`'s
    arguments of the same names).

    Attributes:
        chat_template: the chat template ``messages`` are rendered with (``--chat-template``),
            instead of the tokenizer's.
        score_template: the score template of ``/score`` and ``/rerank`` (``--score-template``).
        cache_size, cache_max_bytes: entries and bytes of the model's embedding cache (0 entries: none).
        auto_truncate: TEI's routes truncate inputs to the model's length unless a request says
            ``truncate: false`` (TEI's ``--auto-truncate``).
        default_prompt_name: the prompt TEI's routes use when a request names none
            (``--default-prompt-name``).
    """

    chat_template: str | None = None
    score_template: str | None = None
    cache_size: int = 0
    cache_max_bytes: int = 256 * MiB
    auto_truncate: bool = False
    default_prompt_name: str | None = None

    def __post_init__(self) -> None:
        if self.cache_size < 0:
            raise InvalidRequest(f"the cache size must be 0 (no cache) or more, got {self.cache_size}")
        if self.cache_max_bytes <= 0:
            raise InvalidRequest(f"the cache's byte limit must be positive, got {self.cache_max_bytes}")


class ModelState:
    """One served model: its name, the loaded :class:`poolkit.LLM`, its batcher, limits and counters.

    The routes receive the model state a request chose (``st``); what the whole server shares (the
    shutdown deadline, the metrics registry) they reach through :attr:`server`.

    Attributes:
        served: the name requests give in ``model`` (the model's name until one is loaded).
        llm: the loaded :class:`poolkit.LLM`, ``None`` while loading.
        batcher: the dynamic batcher running ``llm``'s work, ``None`` while loading.
        limits: this model's limits (its own batch and queue budgets).
        ready: a model is attached; ``load_error``: why its background load failed, if it did.
        scrub: ``(text, replacement)`` pairs applied to error messages, so that they name the
            served model and never the directory it was read from.
        options: what the command line sets for the model (:class:`ModelOptions`).
        cache: the model's :class:`~poolkit.entrypoints.serving.cache.EmbeddingCache`, ``None`` without one.
        metrics: the model's series of the server's metrics (the ``model`` label).
    """

    #: The LoRA adapter this name serves (:class:`AdapterState`); ``None``: the model itself.
    lora: LoRARequest | None = None

    def __init__(self, server: "ServerState", served_model_name: str | None, limits: ServerLimits, options: ModelOptions) -> None:
        self.server = server
        self.served = served_model_name
        self.limits = limits
        self.options = options
        self.cache = EmbeddingCache(options.cache_size, options.cache_max_bytes) if options.cache_size > 0 else None
        self.metrics = (ModelMetrics if server.tracing is None else server.tracing.metrics)(server.metrics, self)
        self.llm: LLM | None = None
        #: The model's renderer with this server's settings (chat template, media policy, names), once loaded.
        self.renderer: Renderer | None = None
        self.batcher: Batcher | None = None
        self.ready = False
        self.load_error: BaseException | None = None
        self.scrub: list[tuple[str, str]] = []
        self.max_len: int | None = None
        self.vocab: int | None = None
        self.embedding_size: int | None = None
        self._label: tuple[tuple[Any, ...], str] | None = None  # (every model's served name, the label)

    @property
    def label(self) -> str:
        """The model's name on the routes open without the key (``/metrics``, ``/openapi.json``):
        the served name, except that a model served under the path of its local directory (no
        ``--served-model-name``) shows the directory's last part (numbered when two models share
        it), so that no open route shows where the model lies.

        Every answered request counts under it: it is worked out again only when a served name
        changes (a file-system check and paths each time cost the single-text path measurably)."""
        names = tuple(m.served for m in self.server.models)
        if self._label is None or self._label[0] != names:
            self._label = (names, self._public_label())
        return self._label[1]

    def _public_label(self) -> str:
        def public(model: ModelState) -> str:
            name = str(model.served or "")
            if name and (os.path.isabs(name) or os.path.exists(name)):
                return Path(name).name or "model"
            return name

        mine = public(self)
        if mine == self.served:
            return mine
        twins = [m for m in self.server.models if public(m) == mine]
        return mine if len(twins) < 2 else f"{mine}-{twins.index(self) + 1}"

    @property
    def input_limits(self) -> InputLimits:
        """The limits a request's inputs are checked against at the renderer (:mod:`poolkit.inputs.shapes`)."""
        return InputLimits(self.limits.max_inputs_per_request, self.vocab)

    @property
    def give_up(self) -> asyncio.Future | None:
        """The server's shutdown deadline (:meth:`ServerState.shutdown_deadline`)."""
        return self.server.give_up

    @property
    def draining(self) -> bool:
        return self.server.draining

    @property
    def accepting(self) -> bool:
        """Whether inference requests are taken: loaded and the server not draining."""
        return self.ready and not self.server.draining

    def attach(self, llm: LLM) -> None:
        """Take a loaded model: note the sizes the routes check requests against, start the batcher."""
        model = llm.model
        self.max_len = model.max_model_len.value
        self.vocab = getattr(model.hf_config, "vocab_size", None)
        try:
            self.embedding_size = int(model.embedding_size)
        except Exception:  # noqa: BLE001 - a model without a vector size
            self.embedding_size = None
        prompt_name = self.options.default_prompt_name
        if prompt_name is not None and prompt_name not in (model.prompts or {}):
            raise InvalidRequest(
                f"--default-prompt-name '{prompt_name}' is not a prompt of model '{self.served or model.name}'; "
                f"its prompts: {', '.join(model.prompts or {}) or 'none'}"
            )
        if self.served is None:
            self.served = model.name
        self.scrub = sorted({(str(model.name), self.served), (str(model.path), self.served)}, key=lambda p: -len(p[0]))
        self.llm = llm
        self.renderer = llm.renderer.configured(
            chat_template=self.options.chat_template, media_policy=self.server.media, served=self.served,
            max_messages=self.limits.max_inputs_per_request, template_hint=", or serve it with --chat-template",
        )
        for adapter in self.server.adapters.values():  # the --lora-modules of this model, read and checked now
            if adapter.base is self:
                adapter.check()
        self.batcher = self.new_batcher()
        self.ready = True

    def new_batcher(self) -> Batcher:
        """A batcher for the attached model with this model's token budgets."""
        return Batcher(self.llm, self.limits.max_batch_tokens, self.limits.max_queue_tokens)

    def score_template_for(self, scorer: Any) -> str | None:
        """The template ``/score`` and ``/rerank`` give a scorer that takes one, else ``None``.

        ``--score-template``; failing that ``--chat-template``, which vLLM also applies to
        cross-encoder scoring (a vLLM command line with ``--chat-template reranker.jinja`` works
        unchanged). A scorer that takes no template gets none.
        """
        if not getattr(scorer, "takes_template", False):
            return None
        return self.options.score_template or self.options.chat_template


class AdapterState:
    """A served LoRA adapter (``--lora-modules``): its base model's state (the loaded model, its
    batcher, limits and cache), answering under the adapter's name, each request run with the
    adapter. Its requests merge into the base model's batches with the base's and other adapters'.

    Attributes:
        base: the :class:`ModelState` of the model the adapter belongs to.
        lora: the adapter's :class:`~poolkit.lora.request.LoRARequest`; ``served``: its name.
    """

    def __init__(self, base: ModelState, lora: LoRARequest) -> None:
        self.base = base
        self.lora = lora
        self.served = lora.lora_name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def check(self) -> None:
        """Read and check the adapter on the loaded base model.

        Raises:
            InvalidRequest: the model was loaded without ``--enable-lora``, or the adapter cannot
                be read or does not fit it.
        """
        enabled(self.base.llm.model.adapters, self.lora).check(self.lora)


class ServerState:
    """What the whole application shares: its models, the key, admission and shutdown.

    Attributes:
        models: the served models, in the order given (the first answers requests that name none).
        limits: the server's limits (the body size and concurrency are the server's; each model
            keeps its own batch and queue budgets).
        draining: the server is shutting down; ``drained``: its batchers were drained.
        in_flight: inference requests being handled (admitted by the middleware once their body
            is in); ``receiving``: requests whose body is still arriving (counted apart: they hold
            no admission slot).
    """

    def __init__(self, api_key: str | None, limits: ServerLimits, media: MediaPolicy | None = None) -> None:
        self.key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None
        self.limits = limits
        #: The remote images requests may name (``--allowed-media-domains``); none by default.
        self.media = media or MediaPolicy()
        self.models: list[ModelState] = []
        #: The served LoRA adapters by name (``--lora-modules``, ``/v1/load_lora_adapter``).
        self.adapters: dict[str, AdapterState] = {}
        #: Held by each load, unload and in-place reload of an adapter: one at a time, each whole.
        self.lora_updates: asyncio.Lock | None = None
        self.metrics = ServerMetrics(self)
        self.draining = False
        self.drained = False
        #: The one limit on work in flight, for HTTP requests, gRPC calls and stream messages alike.
        self.admission = Admission(self)
        self.receiving = 0
        self.request_exit: Callable[[], None] = lambda: None
        #: With several API processes (:mod:`~poolkit.entrypoints.server.processes`), the engine
        #: process's: stop the fronts when SIGTERM arrives, and wait for them before draining.
        self.on_exit_signal: Callable[[], None] | None = None
        self.before_drain: Callable[[], None] | None = None
        #: Set when the shutdown timeout is about to run out: requests still waiting answer 503.
        self.give_up: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The inference routes the guard answers itself (:class:`~poolkit.entrypoints.server.lane.Lane`), set
        #: once the application's routes are mounted.
        self.lane: Any = None
        #: The application's endpoints (:class:`~poolkit.entrypoints.server.endpoints.Endpoint`) by
        #: ``(method, path)``, set as they are mounted: ``/invocations`` passes bodies to them.
        self.endpoints: dict[tuple[str, str], Any] = {}
        #: The application's :class:`~poolkit.entrypoints.server.guard.Guard`, once the application has built its
        #: middleware: the HTTP front (:mod:`poolkit.entrypoints.server.front`) hands it the requests it reads.
        #: With tracing on, the :class:`~poolkit.entrypoints.server.tracing.Traced` middleware around the guard.
        self.guard: Any = None
        #: The server's :class:`~poolkit.entrypoints.server.tracing.Tracing` (``--otlp-traces-endpoint``), else ``None``.
        self.tracing: Any = None
        #: TEI's gRPC API while it runs (``--grpc-port``, :mod:`poolkit.entrypoints.grpc`), and its port.
        self.grpc_server: Any = None
        self.grpc_port: int | None = None

    def add_model(self, served_model_name: str | None, options: ModelOptions) -> ModelState:
        """A new served model with this server's limits and the command line's ``options``."""
        model = ModelState(self, served_model_name, dataclasses.replace(self.limits), options)
        self.models.append(model)
        return model

    @property
    def in_flight(self) -> int:
        """Requests, gRPC calls and stream messages holding an admission slot."""
        return self.admission.in_flight

    @property
    def first(self) -> ModelState:
        """The model that answers requests naming none."""
        return self.models[0]

    def model(self, name: str | None) -> ModelState | None:
        """The served model called ``name`` (the first for ``None``); ``None`` for an unknown name."""
        if name is None:
            return self.first
        return next((m for m in self.models if m.served == name), None) or self.adapters.get(name)

    @property
    def served_names(self) -> list[str]:
        return [str(m.served) for m in self.models] + list(self.adapters)

    def add_adapter(self, lora: LoRARequest) -> AdapterState:
        """Serve ``lora`` under its name, on the model its ``base_model_name`` names (default: the first).

        Raises:
            InvalidRequest: the name is taken, or no served model has the base model's name.
        """
        if self.model(lora.lora_name) is not None:
            raise InvalidRequest(f"The lora adapter '{lora.lora_name}' has already been loaded.")
        base = self.model(lora.base_model_name) if lora.base_model_name is not None else self.first
        if not isinstance(base, ModelState) or base.lora is not None:
            raise InvalidRequest(f"LoRA adapter '{lora.lora_name}': no served model is called '{lora.base_model_name}'")
        adapter = self.adapters[lora.lora_name] = AdapterState(base, lora)
        return adapter

    # The first model's, for the single-model code paths (the OpenAPI document, tests).
    @property
    def llm(self) -> Any:
        return self.first.llm

    @property
    def batcher(self) -> Batcher | None:
        return self.first.batcher

    @property
    def served(self) -> str | None:
        return self.first.served

    @property
    def ready(self) -> bool:
        """Every model is loaded."""
        return all(m.ready for m in self.models)

    @property
    def load_error(self) -> BaseException | None:
        """Why a model failed to load, if one did."""
        return next((m.load_error for m in self.models if m.load_error is not None), None)

    @property
    def accepting(self) -> bool:
        return self.ready and not self.draining

    @property
    def scrub(self) -> list[tuple[str, str]]:
        """Every model's :attr:`ModelState.scrub` pairs, longest text first."""
        return sorted((p for m in self.models for p in m.scrub), key=lambda p: -len(p[0]))

    def started(self) -> None:
        """Called on the event loop when the app starts: the shutdown deadline is a future on it,
        which every waiting request awaits beside its work."""
        self._loop = asyncio.get_running_loop()
        self.give_up = self._loop.create_future()

    def begin_draining(self) -> bool:
        """Stop taking requests (503 from now on); the first time, give the requests still waiting
        for their work until just before ``shutdown_timeout`` runs out (:meth:`shutdown_deadline`),
        so they are answered before their connections close. Whether this call began it."""
        if self.draining:
            return False
        timeout = self.limits.shutdown_timeout
        self.shutdown_deadline(timeout - min(1.0, 0.2 * timeout))
        self.draining = True
        return True

    def shutdown_deadline(self, seconds: float) -> None:
        """From any thread: in ``seconds``, requests still waiting for their work give up with a
        503, answered before the server closes their connections."""
        loop, deadline = self._loop, self.give_up
        if loop is not None and deadline is not None and not loop.is_closed():

            def give_up() -> None:
                if not deadline.done():
                    deadline.set_result(None)

            loop.call_soon_threadsafe(loop.call_later, max(0.0, seconds), give_up)
