"""The vLLM-compatible Python API: ``LLM(model).embed(...)`` and friends.

A vLLM pooling user switches by changing one import: the constructor arguments, the method
names and the output objects are vLLM's.
"""

from __future__ import annotations

import itertools
import logging
from functools import cached_property, partial
from typing import Any, Sequence

from ..config.settings import DEFAULT_MODEL, IGNORED_ENGINE_ARGS, EngineArgs  # noqa: F401 - DEFAULT_MODEL is part of this module's API
from ..contracts.errors import InvalidRequest
from ..contracts.io import Prompt
from ..contracts.outputs import (
    ClassificationRequestOutput,
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingRequestOutput,
    RerankResult,
    ScoringOutput,
    ScoringRequestOutput,
)
from ..contracts.params import PoolingParams
from ..contracts.scoring import Scorer, score_extra
from ..contracts.sparse import SparseEmbeddingRequestOutput, check_pruning
from ..contracts.tasks import PLUGIN, Task
from ..inputs.chat import conversations
from ..inputs.media import IMAGE_TOKEN_GUESS
from ..inputs.pairs import MediaItem, check_side_limit, cut_sides, has_media, pair, pair_prompts, skiplist
from ..inputs.params import check_params
from ..inputs.renderer import Renderer
from ..inputs.request import PoolRequest, Rendered
from ..loading.load import load_model
from ..loading.model import PoolingModel
from ..lora.manager import adapted_params, model_adapters
from ..plugins.lookup import select_scorer
from ..plugins.manager import registry
from ..runtime.allocator import freeze_python_heap
from ..runtime.columns import Results
from ..runtime.engine import Engine
from ..runtime.estimates import estimate_costs, estimate_pair_tokens
from ..runtime.progress import progress_bar
from .calls import classification_outputs, embedding_outputs, encode_task, pooling_outputs, rerank_documents, ranked, sparse_outputs
from .entities import Entities, group_entities
from .model_config import ModelConfig, model_config
from .plugin_io import PluginIO

logger = logging.getLogger(__name__)

#: Tokens an image is guessed at before it is decoded (the score routes' token limit).


class LLM:
    """A pooling model, loaded once, with vLLM's offline API.

    Args:
        model: a local directory, a Hugging Face id, or an installed model package's name;
            default: the embedded all-MiniLM-L6-v2.
        tokenizer: a directory with the tokenizer, if not the model's.
        runner: ``"auto"`` or ``"pooling"`` (poolkit runs pooling models only).
        convert: ``"auto"``, ``"none"``, ``"embed"`` or ``"classify"``: how to adapt an
            architecture that is not a pooling model as such.
        model_impl: ``"auto"`` (poolkit's native code where it has some, else the transformers
            fallback), ``"poolkit"`` (native only; vLLM's ``"vllm"`` means the same) or
            ``"transformers"`` (the transformers fallback even for a native family, say to
            measure what the native code gains: ``poolkit bench --vs fallback``).
        pooler_config: a :class:`PoolerConfig`, a dict or a JSON string.
        token_pool_factor: pool documents' token vectors (``token_embed`` inputs encoded as documents,
            or any input of a model without query and document sides) by this factor when a request
            sets none (the pooler configuration's field of that name; never queries).
        hf_overrides: keys patched into the model's ``config.json``.
        dtype: ``"auto"`` (bf16 on GPUs and CPUs with native bf16, else fp32; see
            ``POOLKIT_DTYPE``), ``"float32"`` (strict), ``"bfloat16"``, ...
        device: ``"cpu"``, ``"cuda"``, ... (default: a GPU if there is one).
        allow_pickle: load ``pytorch_model.bin`` weights (with ``weights_only=True``) when a
            model has no safetensors.
        allow_external_symlinks: follow symlinks in the model (or tokenizer) directory that point
            outside it, which are refused by default; a Hugging Face cache snapshot's links into
            its own ``blobs/`` count as inside.
        trust_remote_code: accepted for compatibility; poolkit never runs code from a model.
        max_model_len: cap the tokens per input below the model's own limit.
        max_batch_tokens: the token budget of one packed batch.
        quantization: ``"int8"`` runs the linear layers in int8 (weights per output channel,
            activations per token), calibrated as the model loads so that its outputs keep a
            cosine similarity of at least 0.9995 to the float model's on the calibration texts
            (docs/performance.md); native families only.
        calibration: a text file (one text a line) to calibrate on instead of the built-in texts.
        quantization_budget: the least cosine similarity to the float model that ``quantization``
            keeps on the calibration texts (0.9995 unless given); a looser one runs faster.
        limit_mm_per_prompt: most media items one prompt may carry, per kind (vLLM's):
            ``{"image": 4}``; default 16 images (``POOLKIT_MAX_IMAGES_PER_PROMPT``).
        mm_processor_kwargs: settings of a vision-language model's media processor over its
            ``preprocessor_config.json`` (vLLM's): ``{"min_pixels": ..., "max_pixels": ...}``.
        max_image_pixels: most pixels an image may have, read from its header before decoding
            (default 40,000,000, or ``POOLKIT_MAX_IMAGE_PIXELS``).
        max_image_bytes: most bytes of an image given as bytes, a data URI or a fetched URL
            (default 20 MiB, or ``POOLKIT_MAX_IMAGE_BYTES``).
        enable_prefix_caching: compute a prefix that prompts share once, within a call and across
            calls (vLLM's): ``None`` (the default) is on for causal decoders; ``False`` turns it off.
        enable_lora: take LoRA adapters (PEFT) per prompt: the methods' ``lora_request`` (vLLM's).
        max_lora_rank: the highest rank an adapter may have (16).
        max_loras: the most adapters one batch mixes (1; a batch with more runs in parts).
        max_cpu_loras: the most adapters kept loaded, least recently used out first (default ``max_loras``).

    Example:
        >>> llm = LLM(model="sentence-transformers/all-MiniLM-L6-v2", runner="pooling")
        >>> (output,) = llm.embed("Hello, my name is")
        >>> len(output.outputs.embedding)
        384
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        tokenizer: str | None = None,
        runner: str = "auto",
        convert: str = "auto",
        model_impl: str = "auto",
        pooler_config: Any = None,
        token_pool_factor: float | None = None,
        hf_overrides: dict[str, Any] | None = None,
        dtype: Any = "auto",
        device: Any = None,
        allow_pickle: bool = False,
        allow_external_symlinks: bool = False,
        trust_remote_code: bool = False,
        max_model_len: int | None = None,
        max_batch_tokens: int | None = None,
        io_processor_plugin: str | None = None,
        quantization: str | None = None,
        calibration: str | None = None,
        quantization_budget: float | None = None,
        limit_mm_per_prompt: dict[str, int] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        max_image_pixels: int | None = None,
        max_image_bytes: int | None = None,
        enable_prefix_caching: bool | None = None,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        max_loras: int = 1,
        max_cpu_loras: int | None = None,
        **engine_kwargs: Any,
    ) -> None:
        args = EngineArgs.build(
            engine_kwargs,
            model=model,
            tokenizer=tokenizer,
            runner=runner,
            convert=convert,
            model_impl=model_impl,
            pooler_config=pooler_config,
            token_pool_factor=token_pool_factor,
            hf_overrides=hf_overrides,
            dtype=dtype,
            device=device,
            allow_pickle=allow_pickle,
            allow_external_symlinks=allow_external_symlinks,
            trust_remote_code=trust_remote_code,
            max_model_len=max_model_len,
            max_batch_tokens=max_batch_tokens,
            io_processor_plugin=io_processor_plugin,
            quantization=quantization,
            calibration=calibration,
            quantization_budget=quantization_budget,
            limit_mm_per_prompt=limit_mm_per_prompt,
            mm_processor_kwargs=mm_processor_kwargs,
            max_image_pixels=max_image_pixels,
            max_image_bytes=max_image_bytes,
            enable_prefix_caching=enable_prefix_caching,
            enable_lora=enable_lora,
            max_lora_rank=max_lora_rank,
            max_loras=max_loras,
            max_cpu_loras=max_cpu_loras,
        )
        ignored = sorted(set(engine_kwargs) & IGNORED_ENGINE_ARGS)
        if ignored:
            logger.info("ignoring vLLM engine arguments with no meaning here: %s", ", ".join(ignored))
        #: The resolved load settings (:class:`EngineArgs`); pass them on to load the same model elsewhere.
        self.args = args
        self.model: PoolingModel = load_model(args)
        self.model.adapters = model_adapters(self.model, args)
        self.engine = Engine(self.model, args.max_batch_tokens)
        self._request_ids = itertools.count()
        self.io_processor_plugin = args.io_processor_plugin or getattr(self.model.hf_config, "io_processor_plugin", None)
        self._plugin_io = PluginIO(self.model)
        freeze_python_heap(self)  # the loaded model's objects leave the collector's full passes until this LLM is freed

    @classmethod
    def from_args(cls, args: EngineArgs) -> "LLM":
        """Load the model that ``args`` describes (what the CLI, the server, jobs and Ray do)."""
        return cls(**{name: getattr(args, name) for name in EngineArgs.model_fields})

    def get_tokenizer(self) -> Any:
        return self.model.tokenizer

    @cached_property
    def model_config(self) -> ModelConfig:
        """The loaded model as vLLM describes it: ``max_model_len``, ``embedding_size``,
        ``pooler_config``, ``hf_config``, ``is_matryoshka``, ... (:class:`poolkit.ModelConfig`)."""
        return model_config(self.model)

    @property
    def supported_tasks(self) -> list[str]:
        tasks = self.model.supported_tasks()
        plugin = self.plugin_task
        return tasks + [plugin] if plugin and self.io_processor_plugin else tasks

    @property
    def default_task(self) -> str | None:
        """The task a request that names none runs: the supported task of lowest ``default_rank``."""
        tasks = registry("task")
        configured = self.model.pooler_config.task
        if configured is not None:  # vLLM: the pooler config's task comes first
            task = tasks.get(configured)
            return task.alias_of or task.name
        ranked = [(tasks.get(n).default_rank, n) for n in self.model.supported_tasks()]
        ranked = sorted((rank, n) for rank, n in ranked if rank is not None)
        if ranked:
            return ranked[0][1]
        return next(iter(self.model.supported_tasks()), None)

    @property
    def plugin_task(self) -> str | None:
        """The registered task whose requests an IO processor plugin handles (``{"data": ...}``)."""
        return next((e.name for e in registry("task").entries() if e.obj.granularity == PLUGIN), None)

    def task(self, name: str) -> Task:
        """The registered task ``name``, checked against what the model supports."""
        return self.model.task(name)

    # -- inputs --------------------------------------------------------------------------------

    @cached_property
    def renderer(self) -> Renderer:
        """The model's :class:`~poolkit.inputs.Renderer`: what turns every input into a prompt."""
        return Renderer(self.model)

    def check_truncation(self, truncate_prompt_tokens: int | None) -> None:
        """Refuse a truncation longer than the model's limit (vLLM's wording).

        Raises:
            InvalidRequest: ``truncate_prompt_tokens`` exceeds ``max_model_len``.
        """
        self.engine.check_truncation(truncate_prompt_tokens)

    def estimate_tokens(self, prompts: Sequence[Prompt], params: Sequence[PoolingParams]) -> int:
        """Tokens of prepared prompts, estimated before tokenizing, each capped at its truncation limit."""
        total = 0
        limits: dict[int, int | None] = {}  # by params object: the engine's rule (Engine.limit)
        for n, p in zip(estimate_costs(prompts), params):
            if id(p) not in limits:
                limits[id(p)] = self.engine.limit(p)
            limit = limits[id(p)]
            total += min(n, limit) if limit else n
        return total

    def check_params(
        self, pooling_params: Any, count: int, task_name: str, tokenization_kwargs: dict[str, Any] | None = None
    ) -> list[PoolingParams]:
        """One verified :class:`PoolingParams` per prompt, the task's defaults filled in.

        Args:
            pooling_params: ``None``, one :class:`PoolingParams` (or dict) for all prompts, or one per prompt.
            count: how many prompts.
            task_name: the task they run.
            tokenization_kwargs: ``truncate_prompt_tokens`` / ``truncation_side`` defaults, and vLLM's
                ``truncation`` switch (``True``: to the model's limit; ``False``: no truncation).

        Raises:
            InvalidRequest: a parameter the task does not take, or a value it cannot honour.
        """
        return check_params(self.model, self.engine, pooling_params, count, task_name, tokenization_kwargs)

    def run(self, task: Task, prompts: Sequence[Prompt], params: list[PoolingParams], *, use_tqdm: bool = False) -> Results:
        """Run prepared prompts through the engine: one ``(result, prompt token ids)`` per prompt (the
        step :class:`~poolkit.api.async_llm.AsyncLLM` awaits on its batcher instead)."""
        engine: Engine = self.engine
        with progress_bar(len(prompts), enabled=use_tqdm) as advance:
            return engine.run(task, prompts, params, progress=advance)

    # -- API -----------------------------------------------------------------------------------

    def encode(
        self,
        prompts: Any = None,
        pooling_params: Any = None,
        *,
        pooling_task: str | None = None,
        use_tqdm: bool = False,
        tokenization_kwargs: dict[str, Any] | None = None,
        prompt_name: str | None = None,
        messages: Any = None,
        chat_template: str | None = None,
        lora_request: Any = None,
    ) -> list[PoolingRequestOutput[PoolingOutput]]:
        """Run any pooling task; ``outputs.data`` holds each input's tensor.

        Args:
            prompts: a string, a list of strings, ``{"prompt": ...}`` /
                ``{"prompt_token_ids": [...]}`` dicts, or chat inputs (``{"messages": [...]}``,
                :class:`poolkit.inputs.Chat`) rendered with the model's chat template.
            pooling_params: one :class:`PoolingParams` for all prompts, or one per prompt.
            pooling_task: the task name (``"embed"``, ``"token_embed"``, ...); by default the
                model's default task (:attr:`default_task`), with a warning, as vLLM does.
            use_tqdm: show a progress bar on stderr.
            tokenization_kwargs: ``truncate_prompt_tokens`` / ``truncation_side`` defaults, and
                ``add_special_tokens`` (``False``: tokenize without the tokenizer's special tokens).
            prompt_name: a prompt from the model's sentence-transformers config to prepend.
            messages: instead of ``prompts``, one conversation (a list of chat messages) or a list
                of conversations, each rendered with the chat template as one prompt (vLLM's
                chat-style input; ``{"messages": ..., "add_generation_prompt": ...}`` in ``prompts``
                sets the other chat fields).
            chat_template: the template ``messages`` are rendered with instead of the tokenizer's.
            lora_request: a :class:`~poolkit.lora.request.LoRARequest` for every prompt, or a list of
                one per prompt (``None``: the base model); needs ``LLM(enable_lora=True)``.
        """
        pooling_task = encode_task(self, prompts, pooling_task)
        if pooling_task == self.plugin_task:
            return self._encode_plugin(conversations(prompts, messages, chat_template), pooling_params, use_tqdm, tokenization_kwargs)
        rendered = self.render(PoolRequest.of(
            prompts, pooling_params, task=pooling_task, tokenization_kwargs=tokenization_kwargs, prompt_name=prompt_name,
            lora_request=lora_request, messages=messages, chat_template=chat_template,
        ))
        results = self.run(*rendered, use_tqdm=use_tqdm)
        return pooling_outputs(self.new_request_ids(len(results)), results, rendered, self.engine)

    def new_request_ids(self, n: int) -> list[str]:
        """The next ``n`` request ids, which number the outputs of every call on this model."""
        return list(map(str, itertools.islice(self._request_ids, n)))

    def prepare(
        self,
        prompts: Any,
        pooling_params: Any = None,
        *,
        pooling_task: str,
        tokenization_kwargs: dict[str, Any] | None = None,
        prompt_name: str | None = None,
        prefix: str | None = None,
        lora_request: Any = None,
        messages: Any = None,
        chat_template: str | None = None,
    ) -> tuple[Any, list[Prompt], list[PoolingParams]]:
        """Validate a request without running it: the task, its prompts (the renderer's,
        :meth:`poolkit.inputs.Renderer.request`) and verified parameters.

        The server prepares requests on the event loop (cheap checks only, no tokenization) and
        runs them later, merged with others, through ``engine.run``. ``prefix``: a prompt's text to
        put before each input instead of ``prompt_name``'s (``""``: none, not even the model's default).
        ``lora_request``: the LoRA adapter of every prompt, or a list of one per prompt (read and
        checked here). ``messages`` and ``chat_template``: chat messages instead of ``prompts``, as
        :meth:`encode` takes them.
        """
        return self.render(PoolRequest.of(
            prompts, pooling_params, task=pooling_task, tokenization_kwargs=tokenization_kwargs, prompt_name=prompt_name,
            prefix=prefix, lora_request=lora_request, messages=messages, chat_template=chat_template,
        ))

    def render(self, request: PoolRequest) -> Rendered:
        """A :class:`~poolkit.inputs.request.PoolRequest` through the renderer's door
        (:meth:`poolkit.inputs.Renderer.render`): its task, prompts and verified parameters, not run."""
        return self.renderer.render(request, self.engine)

    def _encode_plugin(
        self,
        prompts: Any,
        pooling_params: Any,
        use_tqdm: bool,
        tokenization_kwargs: dict[str, Any] | None,
    ) -> list[PoolingRequestOutput[Any]]:
        """``pooling_task="plugin"``: the IO processor turns ``{"data": ...}`` into prompts and back."""
        processor = self._plugin_io.processor(self.io_processor_plugin)
        if not (isinstance(prompts, dict) and "data" in prompts):
            raise InvalidRequest(f"pooling_task='{self.plugin_task}' takes {{'data': ...}} as its prompt")
        request_id = str(next(self._request_ids))
        data = processor.parse_data(prompts["data"])
        parsed = list(processor.pre_process(data, request_id=request_id))
        params = processor.merge_pooling_params(pooling_params, self.default_task)
        if not isinstance(params, PoolingParams) or params.task in (None, self.plugin_task):
            raise InvalidRequest(f"IO processor '{self.io_processor_plugin}' must choose the task to run in merge_pooling_params")
        task = self.model.task(params.task)
        per_prompt = [p.params or params for p in parsed]
        checked = [self.check_params(p, 1, task.name, tokenization_kwargs)[0] for p in per_prompt]
        results = self.run(task, parsed, checked, use_tqdm=use_tqdm)
        outputs = [PoolingRequestOutput(f"{request_id}-{i}", PoolingOutput(d), ids) for i, (d, ids) in enumerate(results)]
        return [PoolingRequestOutput("", processor.post_process(outputs, request_id=request_id, data=data))]

    def embed(
        self,
        prompts: Any = None,
        pooling_params: Any = None,
        *,
        use_tqdm: bool = False,
        tokenization_kwargs: dict[str, Any] | None = None,
        prompt_name: str | None = None,
        messages: Any = None,
        chat_template: str | None = None,
        lora_request: Any = None,
    ) -> list[EmbeddingRequestOutput]:
        """One embedding per input; ``outputs.embedding`` is a list of floats. ``messages`` (or chat
        inputs in ``prompts``) are rendered with the chat template, and ``lora_request`` chooses
        LoRA adapters, as in :meth:`encode`."""
        rendered = self.render(PoolRequest.of(
            prompts, pooling_params, task="embed", tokenization_kwargs=tokenization_kwargs, prompt_name=prompt_name,
            lora_request=lora_request, messages=messages, chat_template=chat_template,
        ))
        results = self.run(*rendered, use_tqdm=use_tqdm)
        return embedding_outputs(self.new_request_ids(len(results)), results)

    def sparse_embed(
        self,
        prompts: Any,
        pooling_params: Any = None,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        return_tokens: bool = False,
        use_tqdm: bool = False,
        tokenization_kwargs: dict[str, Any] | None = None,
        prompt_name: str | None = None,
    ) -> list[SparseEmbeddingRequestOutput]:
        """Sparse lexical embeddings (SPLADE), strongest weights first.

        ``outputs.indices`` are vocabulary ids, ``outputs.values`` their weights (descending) and,
        with ``return_tokens``, ``outputs.tokens`` the vocabulary tokens; ``outputs.to_dict()``
        is JSON-ready. ``encode(..., pooling_task="sparse_embed")`` gives the dense ``[vocab]``
        vectors instead.

        Args:
            top_k: keep at most the ``top_k`` strongest weights of each input.
            threshold: drop weights below this.
            return_tokens: fill ``outputs.tokens``.

        Example:
            >>> (out,) = llm.sparse_embed("The capital of France is Paris.", top_k=3, return_tokens=True)
            >>> out.outputs.tokens
            ['capital', 'paris', 'france']
        """
        check_pruning(top_k, threshold)
        outputs = self.encode(
            prompts,
            pooling_params,
            pooling_task="sparse_embed",
            use_tqdm=use_tqdm,
            tokenization_kwargs=tokenization_kwargs,
            prompt_name=prompt_name,
        )
        return sparse_outputs(outputs, top_k, threshold, self.model.tokenizer if return_tokens else None)

    def classify(
        self,
        prompts: Any = None,
        pooling_params: Any = None,
        *,
        use_tqdm: bool = False,
        tokenization_kwargs: dict[str, Any] | None = None,
        messages: Any = None,
        chat_template: str | None = None,
        lora_request: Any = None,
    ) -> list[ClassificationRequestOutput]:
        """Class probabilities per input; ``outputs.label`` names the top class (``id2label``).
        ``messages`` (or chat inputs in ``prompts``) are rendered with the chat template, and
        ``lora_request`` chooses LoRA adapters, as in :meth:`encode`."""
        outputs = self.encode(
            prompts, pooling_params, pooling_task="classify", use_tqdm=use_tqdm, tokenization_kwargs=tokenization_kwargs,
            messages=messages, chat_template=chat_template, lora_request=lora_request,
        )
        return classification_outputs(outputs, self.model.id2label)

    def reward(
        self,
        prompts: Any,
        pooling_params: Any = None,
        *,
        use_tqdm: bool = False,
        tokenization_kwargs: dict[str, Any] | None = None,
        lora_request: Any = None,
    ) -> list[PoolingRequestOutput[PoolingOutput]]:
        """Token-level rewards (``token_classify``): ``outputs.data`` is ``[n_tokens, num_labels]``;
        ``lora_request`` as in :meth:`encode`."""
        return self.encode(
            prompts,
            pooling_params,
            pooling_task="token_classify",
            use_tqdm=use_tqdm,
            tokenization_kwargs=tokenization_kwargs,
            lora_request=lora_request,
        )

    def entities(
        self,
        prompts: str | Sequence[str],
        pooling_params: Any = None,
        *,
        use_tqdm: bool = False,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[Entities]:
        """Entity spans per input from a token classifier (label, character offsets, score).

        Tokens are grouped by the IOB/IOBES labels of ``id2label`` as transformers' NER pipeline
        does with ``aggregation_strategy="simple"``.
        """
        if self.model.architecture.token_classifier() is None:
            raise InvalidRequest(
                f"entities need a token classifier with labels (id2label); model '{self.model.name}' has none"
            )
        texts = [prompts] if isinstance(prompts, str) else prompts
        outputs = self.encode(
            texts, pooling_params, pooling_task="token_classify", use_tqdm=use_tqdm, tokenization_kwargs=tokenization_kwargs
        )
        tok = self.model.tokenizer
        results = []
        for text, out in zip(texts, outputs):
            if not isinstance(text, str):
                raise InvalidRequest("entities() takes strings")
            ids = out.prompt_token_ids
            enc = tok(text, truncation=True, max_length=len(ids), return_offsets_mapping=True)
            if enc["input_ids"] != ids:
                raise InvalidRequest("entity offsets need the tokens of the text itself (right truncation, no prompt)")
            found = Entities(group_entities(text, out.outputs.data, enc["offset_mapping"], self.model.id2label))
            found.truncated = out.truncated
            results.append(found)
        return results

    @property
    def scorer(self) -> Scorer:
        """The registered scorer :meth:`score` and :meth:`rerank` use with this model.

        Raises:
            InvalidRequest: the model cannot score; the message says why.
        """
        return select_scorer(self.model)

    @property
    def score_type(self) -> str:
        """How :meth:`score` compares texts: ``cross-encoder``, ``late-interaction``, ``bi-encoder``, or a plugin's."""
        return self.scorer.name

    def pair(self, first: Any, second: Any) -> tuple[list[str], list[str]]:
        """Both sides of a score request as equal-length lists: 1:1, one against N (1:N), or N:N
        (:func:`poolkit.inputs.pairs.pair`).

        Raises:
            InvalidRequest: with vLLM's wording, for an empty side or lengths that do not pair.
        """
        return pair(first, second)

    def estimate_pair_tokens(self, first: Sequence[Any], second: Sequence[Any]) -> int:
        """Tokens of scoring ``first`` against ``second``, estimated before tokenizing (the server's
        limits); an input with images counts its text and :data:`IMAGE_TOKEN_GUESS` tokens an image."""
        if not has_media(first, second):
            return estimate_pair_tokens(first, second, self.model.max_model_len.value)
        images = sum(len(x.images) for x in (first if len(first) > 1 else first * len(second)) + list(second) if isinstance(x, MediaItem))
        texts = [[x if isinstance(x, str) else x.text or "" for x in side] for side in (first, second)]
        return estimate_pair_tokens(*texts, None) + IMAGE_TOKEN_GUESS * images

    def score(
        self,
        data_1: Any,
        data_2: Any,
        pooling_params: Any = None,
        *,
        use_tqdm: bool = False,
        tokenization_kwargs: dict[str, Any] | None = None,
        chat_template: str | None = None,
        instruction: str | None = None,
        lora_request: Any = None,
    ) -> list[ScoringRequestOutput]:
        """Scores of text pairs: 1:1, one against N (1:N), or pairwise (N:N).

        The model's :attr:`scorer` decides how: a cross-encoder (a classifier with one output)
        reads each pair together; an embedding model scores the cosine similarity of the two
        embeddings; a late-interaction model (ColBERT) the MaxSim of their token vectors.

        A side may hold images for a model that reads them, as vLLM's multimodal score input:
        ``{"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}, ...]}``
        is one input, all its parts in one prompt (vLLM's ``ScoreMultiModalParam``), and a side may be
        a list of strings and such inputs; ``image_url`` may also name a file, and ``{"type": "image_pil",
        "image_pil": img}`` passes a PIL image (:func:`poolkit.inputs.pairs.score_side`).

        Args:
            chat_template: a score template (Jinja text or a file) rendering each (query,
                document) pair into one prompt, for LLM rerankers; a model recognised as one
                (Qwen3-Reranker) brings its own.
            instruction: the task instruction a score template shows the model.
            lora_request: the LoRA adapter every pair runs with (``LLM(enable_lora=True)``), or,
                for a cross-encoder, a list of one per pair (vLLM's), ``None`` for the base model.
        """
        first, second = cut_sides(self.engine, *pair(data_1, data_2), pooling_params)
        scorer = self.scorer
        if has_media(first, second):
            self._check_media_scoring(scorer)
        templated = chat_template is not None or instruction is not None
        if not scorer.takes_template and (templated or score_extra(pooling_params).get("chat_template_kwargs") is not None):
            takers = [e.name for e in registry("scorer").entries() if e.obj.takes_template]
            what = "chat_template and instruction" if templated else "chat_template_kwargs"
            raise InvalidRequest(f"{what} apply to {' or '.join(takers)} scoring only")
        scored = scorer.score(
            _ScoreRunner(self, lora_request),
            first,
            second,
            pooling_params,
            use_tqdm=use_tqdm,
            tokenization_kwargs=tokenization_kwargs,
            chat_template=chat_template,
            instruction=instruction,
        )
        return [
            ScoringRequestOutput(str(next(self._request_ids)), ScoringOutput(score), ids, truncated=bool(cut and cut[0]))
            for score, ids, *cut in scored
        ]

    def _check_media_scoring(self, scorer: Scorer) -> None:
        """Refuse score inputs with images for a model that reads no images (vLLM's words), or whose
        scorer reads each pair as one text (a cross-encoder) without reading text and images together."""
        if not self.renderer.reads.images:
            raise InvalidRequest(f"MultiModalParam is not supported for {self.model.architecture_name}")
        if scorer.takes_template and not self.renderer.reads.media:
            raise InvalidRequest(
                f"model '{self.model.name}' scores with the {scorer.name}, which reads each pair as one text; inputs with "
                "images need a model that embeds each side (bi-encoder cosine or late interaction)"
            )

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        top_n: int | None = None,
        pooling_params: Any = None,
        *,
        use_tqdm: bool = False,
        tokenization_kwargs: dict[str, Any] | None = None,
        chat_template: str | None = None,
        instruction: str | None = None,
        lora_request: Any = None,
    ) -> list[RerankResult]:
        """Documents sorted by relevance to ``query``, best first, each with its original index.

        Args:
            query: the query text, or for a model that reads images, an input with images as
                :meth:`score` takes it (``{"content": [...]}``).
            documents: the texts to rank.
            top_n: keep only the best ``top_n`` (default: all).
            chat_template: a score template, as for :meth:`score`.
            instruction: the task instruction a score template shows the model.
        """
        docs = rerank_documents(query, documents, top_n)
        scores = self.score(
            query,
            docs,
            pooling_params,
            use_tqdm=use_tqdm,
            tokenization_kwargs=tokenization_kwargs,
            chat_template=chat_template,
            instruction=instruction,
            lora_request=lora_request,
        )
        return ranked(docs, scores, top_n)

    def check_score_limit(self, name: str, limit: Any) -> None:
        """Check a ``max_tokens_per_query`` / ``max_tokens_per_doc`` value (vLLM's wording;
        :func:`poolkit.inputs.pairs.check_side_limit`).

        Raises:
            InvalidRequest: not a positive integer, or not below the model's ``max_model_len``.
        """
        check_side_limit(name, limit, self.model.max_model_len.value)

    def reset_prefix_cache(self) -> bool:
        """Forget the prefix states kept across calls (vLLM's ``LLM.reset_prefix_cache``), so that
        the next call computes every prompt's states afresh; True, as vLLM answers when it is done
        (also for a model that keeps none: bidirectional, or ``enable_prefix_caching=False``)."""
        if self.engine.prefixes is not None:
            self.engine.prefixes.reset()
        return True


class _ScoreRunner:
    """The :class:`~poolkit.contracts.scoring.ScoreRunner` :meth:`LLM.score` hands its scorer: the
    LLM's model, task lookup (:meth:`LLM.task`), parameter checks (:meth:`LLM.check_params`),
    prompt preparation (:meth:`LLM.prepare`; pairs and retrieval roles as ``poolkit.inputs`` makes them) and engine
    run (:meth:`LLM.run`), and nothing else of the LLM (a scorer calls no API method back)."""

    __slots__ = ("model", "task", "run", "pair_prompts", "skiplist", "_llm", "_lora")

    def __init__(self, llm: LLM, lora_request: Any = None) -> None:
        self.model = llm.model
        self.task = llm.task
        self.run = llm.run
        self.pair_prompts = partial(pair_prompts, llm.model, renderer=llm.renderer)
        self.skiplist = partial(skiplist, llm.model)
        self._llm = llm
        self._lora = lora_request

    def role_prompts(self, texts: list[str], kind: str) -> list[Prompt]:
        """Texts as the model's queries or documents: ``token_embed``'s prompts on that side, through the renderer's door."""
        return list(self._llm.render(PoolRequest(list(texts), task="token_embed", side=kind)).prompts)

    def check_params(
        self, pooling_params: Any, count: int, task_name: str, tokenization_kwargs: dict[str, Any] | None = None
    ) -> list[PoolingParams]:
        """:meth:`LLM.check_params`, each prompt with the score's LoRA adapter."""
        params = self._llm.check_params(pooling_params, count, task_name, tokenization_kwargs)
        return adapted_params(params, self._lora, self.model.adapters)

    def prepare(
        self, texts: Sequence[str], pooling_params: Any, task_name: str, tokenization_kwargs: dict[str, Any] | None = None
    ) -> tuple[Task, Sequence[Prompt], list[PoolingParams]]:
        """Texts as :meth:`LLM.encode` prepares them, with the task and verified parameters; an
        input with images (:class:`~poolkit.inputs.pairs.MediaItem`) is prepared as its prompt with images."""
        if isinstance(self._lora, (list, tuple)):
            raise InvalidRequest(
                f"a lora_request per pair takes a cross-encoder; model '{self.model.name}' embeds each side: give one lora_request"
            )
        prompts = [t.prompt() if isinstance(t, MediaItem) else t for t in texts]
        return self._llm.render(
            PoolRequest.of(prompts, pooling_params, task=task_name, tokenization_kwargs=tokenization_kwargs, lora_request=self._lora)
        )
