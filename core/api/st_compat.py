"""sentence-transformers' inference API on poolkit's engine: swap the import, keep the code.

``from poolkit import SentenceTransformer, CrossEncoder, SparseEncoder`` gives classes with
sentence-transformers 6's constructor arguments, methods, defaults, return types and shapes, that
run on a poolkit :class:`~poolkit.LLM` (``.llm``). Where the two libraries' habits differ, these
classes follow sentence-transformers': inputs longer than the model's limit are cut silently (not
refused), results come as numpy arrays by default, and a single string gives a 1-D result.

What differs: the default dtype is poolkit's (``auto``: bf16 on bf16 hardware; pass
``model_kwargs={"dtype": torch.float32}`` for sentence-transformers' fp32 to the last digit),
training (``fit``, trainers) is refused with a pointer to sentence-transformers, no code shipped
with a model runs (``trust_remote_code=True`` is refused), and the multi-process pool arguments
are accepted but the engine batches on its own threads.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..contracts.errors import InvalidRequest
from ..contracts.params import PoolingParams
from ..contracts.tasks import ROLES
from ..inputs.chat import settled
from ..inputs.request import PoolRequest
from .st_adapters import PROMPT_NAME, TASK, AdapterMethods
from .st_functions import PRECISIONS, SIMILARITY, pairwise_similarity, quantize_embeddings, similarity_name

if TYPE_CHECKING:
    from .llm import LLM

logger = logging.getLogger(__name__)

#: Every call cuts long inputs to the model's limit (or ``max_seq_length``), as sentence-transformers does.
_CUT = -1
_TRAINING = (
    "poolkit's {cls} runs inference only: train with sentence-transformers ({what}), save the model, "
    "and load the saved directory here"
)


def _dtype(value: Any) -> str:
    """A ``model_kwargs`` dtype (a ``torch.dtype`` or a name) as poolkit's setting."""
    return "auto" if value is None or value == "auto" else str(value).removeprefix("torch.")


class _Model(AdapterMethods):
    """What the three classes share: the constructor, the prompts, the device and dtype settings."""

    #: The prompts every model of the class has (empty unless given or saved).
    _default_prompts: tuple[str, ...] = ()

    def __init__(
        self,
        model_name_or_path: str | None = None,
        *,
        device: str | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        cache_folder: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        local_files_only: bool = False,
        token: bool | str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        backend: str = "torch",
        max_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        from .llm import LLM

        cls = type(self).__name__
        if model_name_or_path is None:
            raise InvalidRequest(f"poolkit's {cls} loads a saved model: pass its name or path (building one from modules is training)")
        own = set(inspect.signature(self._configure).parameters)
        unknown = sorted(set(kwargs) - own)
        if unknown:
            raise InvalidRequest(f"{cls}() got arguments poolkit does not take: {', '.join(unknown)}")
        if trust_remote_code:
            raise InvalidRequest(f"{cls}(trust_remote_code=True): poolkit never runs code shipped with a model")
        if backend != "torch":
            raise InvalidRequest(f"{cls}(backend={backend!r}): poolkit runs its own engine; leave backend as 'torch'")
        if revision is not None or token not in (None, False):
            raise InvalidRequest(f"{cls}(revision=..., token=...): poolkit loads local directories and cached models only")
        settings = dict(model_kwargs or {})
        dtype = _dtype(settings.pop("dtype", settings.pop("torch_dtype", "auto")))
        settings.pop("attn_implementation", None)  # poolkit picks its own attention kernel
        if settings:
            raise InvalidRequest(f"{cls}(model_kwargs=...): poolkit takes dtype (or torch_dtype) only, not {', '.join(sorted(settings))}")
        tokenizer_settings = {**(tokenizer_kwargs or {}), **(processor_kwargs or {})}
        limit = tokenizer_settings.pop("model_max_length", None)
        if tokenizer_settings:
            raise InvalidRequest(f"{cls}(tokenizer_kwargs=...): poolkit takes model_max_length only, not {', '.join(sorted(tokenizer_settings))}")
        if config_kwargs:
            raise InvalidRequest(f"{cls}(config_kwargs=...): poolkit reads the model's config as saved")
        del cache_folder, local_files_only  # poolkit resolves local directories and its own cache, offline
        self._attach(LLM(model_name_or_path, dtype=dtype, device=device), prompts, default_prompt_name, limit if limit is not None else max_length)
        self._configure(**kwargs)

    @classmethod
    def from_llm(cls, llm: "LLM", **kwargs: Any) -> Any:
        """The class around a loaded :class:`~poolkit.LLM` (no second load): ``kwargs`` are the
        class's own constructor arguments (``truncate_dim``, ``similarity_fn_name``, ...)."""
        model = cls.__new__(cls)
        model._attach(llm, None, None, None)
        model._configure(**kwargs)
        return model

    def _attach(self, llm: "LLM", prompts: dict[str, str] | None, default_prompt_name: str | None, limit: int | None) -> None:
        #: The poolkit engine underneath.
        self.llm = llm
        st = llm.model.st
        # sentence-transformers' order: the class's empty prompts, the user's, then the saved ones where still unset
        merged: dict[str, str | None] = {**dict.fromkeys(self._default_prompts), **(prompts or {})}
        for name, text in self._saved_prompts(llm).items():
            if merged.get(name) is None:
                merged[name] = text
        self.prompts: dict[str, str] = {name: text or "" for name, text in merged.items()}
        self.default_prompt_name = default_prompt_name if default_prompt_name is not None else (st.default_prompt_name if st else None)
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise InvalidRequest(
                f"Default prompt name '{self.default_prompt_name}' not found in the configured prompts dictionary with keys {list(self.prompts)!r}."
            )
        self._max_seq_length: int | None = limit
        self.model_name_or_path = llm.args.model

    def _saved_prompts(self, llm: "LLM") -> dict[str, str]:
        """The prompts saved with the model (``config_sentence_transformers.json``), and the names of
        the checkpoint's own tasks (jina-embeddings-v3-hf's adapters, v5's task prompts): the model's
        :attr:`~poolkit.loading.model.PoolingModel.prompts`."""
        return llm.model.prompts

    def _configure(self) -> None:
        """The class's own constructor arguments (a subclass names them as its parameters)."""


    # -- what sentence-transformers users read and set ---------------------------------------

    @property
    def device(self) -> torch.device:
        """The model's device as its tensors name it (``cuda:0``, as sentence-transformers' reads its parameters')."""
        device = self.llm.model.device
        return torch.empty(0, device=device).device if device.index is None and device.type != "cpu" else device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.model.dtype

    @property
    def tokenizer(self) -> Any:
        return self.llm.get_tokenizer()

    def _on_model(self, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor result where sentence-transformers leaves it: on the model's device, and in
        the model's dtype where the user chose one (``half()``, ``model_kwargs={"dtype": ...}``);
        under poolkit's own ``auto`` default, float32, sentence-transformers' default dtype."""
        chosen = tensor.is_floating_point() and self.llm.args.dtype != "auto"
        return tensor.to(device=self.device, dtype=self.dtype if chosen else None)

    @property
    def max_seq_length(self) -> int | None:
        """The longest input in tokens; longer ones are cut. Settable, up to the model's limit."""
        if self._max_seq_length is not None:
            return self._max_seq_length
        return self.llm.model.max_model_len.value

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        limit = self.llm.model.max_model_len.value
        if value is not None and (not isinstance(value, int) or value < 1):
            raise InvalidRequest(f"max_seq_length must be a positive whole number, got {value!r}")
        if value is not None and limit is not None and value > limit:
            raise InvalidRequest(f"max_seq_length {value} is longer than the model's limit, {limit} tokens")
        self._max_seq_length = value

    def _cut(self) -> dict[str, Any]:
        """The tokenization settings of every call: cut at ``max_seq_length``."""
        return {"truncate_prompt_tokens": self._max_seq_length if self._max_seq_length is not None else _CUT}

    def tokenize(self, texts: list[str] | list[tuple[str, str]], **kwargs: Any) -> dict[str, torch.Tensor]:
        """The tokenizer's padded tensors of ``texts``, cut at ``max_seq_length``, as the model reads them."""
        tokenizer = self.tokenizer
        if texts and isinstance(texts[0], (tuple, list)):
            first, second = zip(*texts)
            return dict(tokenizer(list(first), list(second), padding=True, truncation="longest_first",
                                  max_length=self.max_seq_length, return_tensors="pt"))
        return dict(tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="pt"))

    preprocess = tokenize

    def eval(self) -> "_Model":
        """Inference is all poolkit does: a no-op returning the model, as ``nn.Module.eval`` does."""
        return self

    def to(self, device: Any) -> "_Model":
        """The model on ``device``: poolkit loads once per device, so another device loads the model again."""
        wanted = torch.device(device)
        if wanted.type != self.device.type:
            from .llm import LLM

            self.llm = LLM.from_args(self.llm.args.model_copy(update={"device": str(wanted)}))
        return self

    def _with_dtype(self, dtype: str) -> "_Model":
        from .llm import LLM

        if str(self.dtype).removeprefix("torch.") != dtype:
            self.llm = LLM.from_args(self.llm.args.model_copy(update={"dtype": dtype}))
        return self

    def half(self) -> "_Model":
        """The model in float16 (loaded again)."""
        return self._with_dtype("float16")

    def bfloat16(self) -> "_Model":
        """The model in bfloat16 (loaded again)."""
        return self._with_dtype("bfloat16")

    def float(self) -> "_Model":
        """The model in float32 (loaded again)."""
        return self._with_dtype("float32")

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None, task: str | None = None) -> str | None:
        """The prompt text a call puts before its inputs; the prompt's name also picks the task
        adapter of a model that carries one per prompt (jina-embeddings-v3), for this call, unless
        ``task`` (``encode``'s argument of Jina's modules, jina-embeddings-v5) names one."""
        PROMPT_NAME.set(prompt_name if prompt is None else None)
        TASK.set(self._task(task))
        if prompt is not None:
            if prompt_name is not None:
                logger.warning("Providing both `prompt` and `prompt_name` is not supported: `prompt` wins")
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise InvalidRequest(
                    f"Prompt name '{prompt_name}' not found in the configured prompts dictionary with keys {list(self.prompts)!r}."
                )
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts.get(self.default_prompt_name)
        return None

    def _run(
        self, pooling_task: str, inputs: list[Any], params: PoolingParams | None = None, prefix: str | None = None, side: str | None = None
    ) -> Any:
        """The engine's results of ``inputs`` (texts, or ``(text, text)`` pairs) for ``pooling_task``,
        each text after ``prefix`` (the prompt this class resolved: the model's default prompt is
        not added again), cut at ``max_seq_length``, on the retrieval ``side`` when given."""
        from ..contracts.io import Prompt

        if any(_is_media(i) for i in inputs):  # made prompts by the renderer's rule for text and media together
            media = [self._media_parts(i) if _is_media(i) else i for i in inputs]
            inputs = settled(self.llm.renderer.accept(PoolRequest(media, task=pooling_task), offline=True)).inputs
        if any(isinstance(i, (tuple, list)) for i in inputs):
            inputs = [Prompt(text=i[0], text_pair=i[1]) if isinstance(i, (tuple, list)) else Prompt(text=i) for i in inputs]
        task, parsed, checked = self.llm.render(PoolRequest(
            inputs, task=pooling_task, params=params, truncation=self._cut(), prefix=prefix or "", lora_request=self._lora_request(), side=side
        ))
        return self.llm.run(task, parsed, checked)

    def _media_parts(self, item: Any) -> Any:
        """A PIL image, or sentence-transformers' multimodal dict (``{"text": ..., "image": ...}``,
        ``"image"`` one image or a list), as chat content parts (a text alone as it is).

        As sentence-transformers turns such inputs into one chat message whose content parts follow
        the dict's keys, a vision-language model with a chat template reads that message rendered;
        without one, an image alone gets the media processor's placeholders and a text is the prompt
        (carrying the model's image placeholders). A dual encoder (CLIP) takes an image alone.
        """
        typed = dict(item) if isinstance(item, dict) else {"image": item}
        unknown = sorted(str(k) for k in typed if k not in ("text", "image"))
        if unknown:
            raise InvalidRequest(f"a multimodal input takes 'text' and 'image' keys, got {', '.join(unknown)}")
        images = typed.get("image")
        images = list(images) if isinstance(images, (list, tuple)) else [images] if images is not None else []
        text = typed.get("text")
        if text is not None and not isinstance(text, str):
            raise InvalidRequest(f"a multimodal input's 'text' must be a string, got {type(text).__name__}")
        if not images:
            return text if text is not None else ""
        content = [
            {"type": "text", "text": text} if key == "text" else {"type": "image_pil", "image_pil": image}
            for key in typed for image in ([None] if key == "text" else images)
        ]
        return content

    def _matrix(
        self, pooling_task: str, inputs: list[Any], params: PoolingParams | None = None, prefix: str | None = None, side: str | None = None
    ) -> torch.Tensor:
        """:meth:`_run`'s results as one float32 row per input."""
        data = self._run(pooling_task, inputs, params, prefix, side).data
        return (data if isinstance(data, torch.Tensor) else torch.stack(list(data))).float()

    def _check_call(self, batch_size: int, kwargs: dict[str, Any]) -> None:
        """sentence-transformers' checks of an ``encode`` call: a positive ``batch_size``, no keyword
        arguments but ``task`` and ``processing_kwargs`` (which poolkit takes and leaves)."""
        if batch_size <= 0:
            raise InvalidRequest(f"batch_size must be a positive integer, got {batch_size}.")
        unused = set(kwargs) - {"task", "processing_kwargs"}
        if unused:
            raise InvalidRequest(
                f"{type(self).__name__}.encode() has been called with additional keyword arguments that this model does not use: {sorted(unused)}."
            )

    @staticmethod
    def _inputs(inputs: Any) -> tuple[list[Any], bool]:
        """``inputs`` as a list, and whether they were one input (a string, a pair, a PIL image or a
        multimodal dict is one)."""
        if isinstance(inputs, (str, dict)) or _is_image(inputs) or (isinstance(inputs, tuple) and len(inputs) == 2 and all(isinstance(i, str) for i in inputs)):
            return [inputs], True
        if isinstance(inputs, np.ndarray):
            listed = inputs.tolist()
            if inputs.ndim == 2:
                return [tuple(row) for row in listed], False
            return ([listed], True) if inputs.ndim == 0 else (listed, False)
        return list(inputs), False

    # -- training is sentence-transformers' -------------------------------------------------

    def fit(self, *args: Any, **kwargs: Any) -> None:
        raise InvalidRequest(_TRAINING.format(cls=type(self).__name__, what="fit, the trainers and losses"))

    old_fit = fit

    def save(self, *args: Any, **kwargs: Any) -> None:
        raise InvalidRequest(f"poolkit's {type(self).__name__} does not save models: it runs the saved ones sentence-transformers writes")

    save_pretrained = save

    def push_to_hub(self, *args: Any, **kwargs: Any) -> None:
        raise InvalidRequest(f"poolkit's {type(self).__name__} does not publish models; use sentence-transformers' push_to_hub")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_name_or_path!r}, poolkit {self.llm.model.architecture_name}, {self.dtype})"


class _Embedder(_Model):
    """What the embedding classes share: the query and document prompts, the similarity function."""

    _default_prompts = ("query", "document")
    #: The similarity function unless the model's config or the constructor names one.
    _default_similarity = "cosine"

    #: The similarity function's name of a name or ``SimilarityFunction`` given (refusing others).
    _similarity_name = staticmethod(similarity_name)

    def _set_similarity(self, given: Any) -> None:
        st = self.llm.model.st
        configured = given if given is not None else (st.similarity_fn_name if st else None)
        self._similarity_fn_name = self._similarity_name(configured) if configured is not None else None

    @property
    def similarity_fn_name(self) -> str:
        """The model's similarity function's name (``cosine``, ``dot``, ``euclidean``, ``manhattan``; a
        multi-vector model's ``maxsim`` or ``meanmaxsim``)."""
        return self._similarity_fn_name or self._default_similarity

    @similarity_fn_name.setter
    def similarity_fn_name(self, value: Any) -> None:
        self._similarity_fn_name = self._similarity_name(value)

    def get_sentence_embedding_dimension(self) -> int | None:
        """:meth:`get_embedding_dimension`'s old name, with sentence-transformers 6's warning."""
        warnings.warn(
            "The `get_sentence_embedding_dimension` method has been renamed to `get_embedding_dimension`.", FutureWarning, stacklevel=2
        )
        return self.get_embedding_dimension()

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """The model's similarity of every embedding of ``embeddings1`` with every one of ``embeddings2``."""
        return SIMILARITY[self.similarity_fn_name](embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """The model's similarity of each pair ``(embeddings1[i], embeddings2[i])``."""
        return pairwise_similarity(self.similarity_fn_name, embeddings1, embeddings2)

    def encode_query(self, inputs: Any, prompt_name: str | None = None, prompt: str | None = None, **kwargs: Any) -> Any:
        """``encode`` with the model's ``query`` prompt, unless another is given."""
        if prompt is None and prompt_name is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def encode_document(self, inputs: Any, prompt_name: str | None = None, prompt: str | None = None, **kwargs: Any) -> Any:
        """``encode`` with the model's ``document`` prompt (or ``passage`` / ``corpus``), unless another is given."""
        if prompt is None and prompt_name is None:
            prompt_name = next((n for n in ("document", "passage", "corpus") if n in self.prompts), None)
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)


class SentenceTransformer(_Embedder):
    """sentence-transformers' ``SentenceTransformer`` on poolkit's engine.

    Example:
        >>> from poolkit import SentenceTransformer
        >>> model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
        >>> model.encode(["Hello", "World"]).shape
        (2, 384)
    """

    def _configure(self, similarity_fn_name: str | None = None, truncate_dim: int | None = None) -> None:
        self._set_similarity(similarity_fn_name)
        self.truncate_dim = truncate_dim

    # -- sizes ------------------------------------------------------------------------------

    def get_embedding_dimension(self) -> int | None:
        """The length of the embeddings ``encode`` returns (after ``truncate_dim``)."""
        width = self._native_dimension()
        return min(width, self.truncate_dim) if self.truncate_dim else width

    def _native_dimension(self) -> int:
        if not hasattr(self, "_dimension"):
            self._dimension = int(self._embed(["a"], None)[0].shape[-1])
        return self._dimension

    def get_max_seq_length(self) -> int | None:
        return self.max_seq_length

    # -- encoding ---------------------------------------------------------------------------

    def _embed(self, texts: list[Any], prompt: str | None) -> torch.Tensor:
        """One float32 row per text, as the model's modules compute it (its Normalize included)."""
        return self._matrix("embed", texts, None, prompt)

    def _token_embeddings(self, texts: list[Any], prompt: str | None) -> list[torch.Tensor]:
        results = self._run("token_embed", texts, PoolingParams(use_activation=False), prompt)
        return [row.float() for row in results.rows()]

    @contextlib.contextmanager
    def truncate_embeddings(self, truncate_dim: int | None) -> Iterator[None]:
        """Within it, ``encode`` truncates embeddings to ``truncate_dim`` dimensions (``None``: none)."""
        previous, self.truncate_dim = self.truncate_dim, truncate_dim
        try:
            yield
        finally:
            self.truncate_dim = previous

    truncate_sentence_embeddings = truncate_embeddings

    def encode(
        self,
        inputs: Any,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: str | None = "sentence_embedding",
        precision: str = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: Any = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        pool: Any = None,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Embeddings of ``inputs`` (a string gives one 1-D embedding), as sentence-transformers' ``encode``.

        ``batch_size``, ``show_progress_bar``, ``device``, ``pool`` and ``chunk_size`` are taken and
        left to the engine, which batches by tokens on its own threads.
        """
        self._check_call(batch_size, kwargs)
        if precision is not None and precision not in PRECISIONS:
            raise InvalidRequest(f"Precision {precision!r} is not supported, must be one of {PRECISIONS}")
        if output_value not in ("sentence_embedding", "token_embeddings", None):
            raise InvalidRequest(f"output_value {output_value!r} is not one of 'sentence_embedding', 'token_embeddings', None")
        if convert_to_tensor:
            convert_to_numpy = False
        if output_value != "sentence_embedding":
            convert_to_tensor = convert_to_numpy = False
        texts, single = self._inputs(inputs)
        resolved = self._resolve_prompt(prompt, prompt_name, kwargs.get("task"))
        truncate_dim = truncate_dim if truncate_dim is not None else self.truncate_dim
        if not texts:
            result: Any = np.array([]) if convert_to_numpy else (self._on_model(torch.tensor([])) if convert_to_tensor else [])
            return result
        quantized = precision is not None and precision != "float32"
        if output_value is None and quantized:
            raise InvalidRequest(f"precision {precision!r} quantizes embeddings; output_value=None returns every output as computed")
        if output_value == "token_embeddings":
            tokens: Any = self._token_embeddings(texts, resolved)
            if quantized:
                tokens = quantize_embeddings(tokens, precision)
            return tokens[0] if single else tokens
        rows = self._embed(texts, resolved)
        if truncate_dim is not None:
            rows = rows[:, :truncate_dim]
        if normalize_embeddings:
            rows = torch.nn.functional.normalize(rows, p=2, dim=1)
        if output_value is None:
            items = self._all_outputs(texts, resolved, rows, batch_size)
            return items[0] if single else items
        embeddings: Any = rows
        if precision and precision != "float32":
            embeddings = quantize_embeddings(rows, precision)
        if convert_to_tensor:
            embeddings = self._on_model(torch.as_tensor(embeddings))
        elif convert_to_numpy:
            embeddings = embeddings.numpy() if isinstance(embeddings, torch.Tensor) else embeddings
        else:
            embeddings = list(self._on_model(torch.as_tensor(embeddings)))
        return embeddings[0] if single else embeddings

    def _all_outputs(self, texts: list[Any], prompt: str | None, rows: torch.Tensor, batch_size: int) -> list[dict[str, Any]]:
        """``output_value=None``: each input's tokenizer tensors (padded within its batch of
        ``batch_size``, batches of inputs sorted by length as sentence-transformers makes them),
        token embeddings (padded with zeros) and sentence embedding, and ``prompt_length``."""
        if any(_is_media(t) for t in texts):
            raise InvalidRequest("output_value=None takes texts; encode images with output_value='sentence_embedding'")
        tokens = self._token_embeddings(texts, prompt)
        order = sorted(range(len(texts)), key=lambda i: -len(tokens[i]))
        items: list[dict[str, Any]] = [{} for _ in texts]
        prompt_length = len(self.tokenizer(prompt)["input_ids"]) - 1 if prompt else None
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            features = self.tokenize([(prompt or "") + t if isinstance(t, str) else t for t in (texts[i] for i in batch)])
            width = features["input_ids"].shape[1]
            for j, i in enumerate(batch):
                item = {name: value[j] for name, value in features.items()}
                item["token_embeddings"] = torch.nn.functional.pad(tokens[i], (0, 0, 0, width - len(tokens[i])))
                item["sentence_embedding"] = rows[i]
                if prompt_length is not None:
                    item["prompt_length"] = torch.tensor(prompt_length)
                items[i] = item
        return items

    def start_multi_process_pool(self, *args: Any, **kwargs: Any) -> dict:
        """Nothing to start: the engine runs on its own threads (``pool`` is accepted and ignored)."""
        return {}

    @staticmethod
    def stop_multi_process_pool(pool: Any) -> None:
        """Nothing to stop."""


class CrossEncoder(_Model):
    """sentence-transformers' ``CrossEncoder`` on poolkit's engine: ``predict`` and ``rank``."""

    def _configure(self, num_labels: int | None = None, activation_fn: Any = None, classifier_dropout: float | None = None) -> None:
        del classifier_dropout  # a training setting: no dropout runs at inference
        labels = int(getattr(self.llm.model.hf_config, "num_labels", 1) or 1)
        if num_labels is not None and num_labels != labels:
            raise InvalidRequest(f"CrossEncoder(num_labels={num_labels}): the model has {labels}; changing the head is training")
        self.num_labels = labels
        self.activation_fn = activation_fn if activation_fn is not None else self.get_default_activation_fn()

    def get_default_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The config's activation (``sentence_transformers.activation_fn``), else sigmoid for one
        label and none for several, as sentence-transformers chooses."""
        st = self.llm.model.st
        name = st.activation_fn if st is not None else None
        # sentence-transformers before 4 saved it in config.json: a "sentence_transformers" entry, or earlier
        # sbert_ce_default_activation_function
        config = self.llm.model.hf_config
        saved = getattr(config, "sentence_transformers", None)
        name = name or (saved.get("activation_fn") if isinstance(saved, dict) else None)
        name = name or getattr(config, "sbert_ce_default_activation_function", None)
        if name:
            from ..contracts.sentence_transformers import _torch_activation

            return _torch_activation(name)
        return torch.nn.Sigmoid() if self.num_labels == 1 else torch.nn.Identity()

    @property
    def max_length(self) -> int | None:
        """``max_seq_length``'s old name (sentence-transformers 6 keeps it, deprecated)."""
        return self.max_seq_length

    @max_length.setter
    def max_length(self, value: int | None) -> None:
        self.max_seq_length = value

    def _logits(self, pairs: list[tuple[str, str]]) -> torch.Tensor:
        """``[n, num_labels]`` float32 logits: one-label models through the scorer (which knows the
        score templates of LLM rerankers), others as pair classifiers."""
        if self.num_labels == 1:
            scored = self.llm.score(
                [p[0] for p in pairs], [p[1] for p in pairs], PoolingParams(use_activation=False), tokenization_kwargs=self._cut(),
                lora_request=self._lora_request(),
            )
            return torch.tensor([[s.outputs.score] for s in scored], dtype=torch.float32)
        return self._matrix("classify", pairs, PoolingParams(use_activation=False))

    @staticmethod
    def _pairs(inputs: Any) -> tuple[list[tuple[str, str]], bool]:
        """``inputs`` as pairs, and whether they were one pair (a 2-item list or 1-D array of texts)."""
        if isinstance(inputs, np.ndarray):
            inputs = inputs.tolist()
        if isinstance(inputs, (list, tuple)) and len(inputs) == 2 and all(isinstance(i, str) for i in inputs):
            return [(inputs[0], inputs[1])], True
        return [tuple(p) for p in inputs], False

    def predict(
        self,
        inputs: Any,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Callable | None = None,
        apply_softmax: bool | None = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Scores of (query, document) pairs (one pair gives one score), through the activation."""
        if batch_size <= 0:
            raise InvalidRequest(f"batch_size must be a positive integer, got {batch_size}.")
        for accepted in ("device", "pool", "chunk_size", "prompt", "prompt_name"):  # taken, left to the engine
            kwargs.pop(accepted, None)
        if kwargs:
            raise InvalidRequest(f"CrossEncoder.predict() got arguments poolkit does not take: {', '.join(sorted(kwargs))}")
        pairs, single = self._pairs(inputs)
        if not pairs:
            return self._on_model(torch.tensor([])) if convert_to_tensor else (np.array([]) if convert_to_numpy else [])
        scores = self._logits(pairs)
        fn = activation_fn if activation_fn is not None else self.activation_fn
        if fn is not None:
            scores = fn(scores)
        if self.num_labels == 1:
            scores = scores.squeeze(-1)
        elif apply_softmax:
            scores = torch.softmax(scores, dim=1)
        if convert_to_tensor:
            result: Any = self._on_model(scores)
        elif convert_to_numpy:
            result = scores.numpy()
        else:
            result = list(self._on_model(scores))
        return result[0] if single else result

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Callable | None = None,
        apply_softmax: bool = False,
        convert_to_numpy: bool | None = None,
        convert_to_tensor: bool = False,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """``documents`` by score against ``query``, best first: ``{"corpus_id", "score"}`` (and ``"text"``)."""
        if self.num_labels != 1:
            raise InvalidRequest("CrossEncoder.rank() only supports models with num_labels=1")
        for name, given in (("convert_to_numpy", convert_to_numpy is not None), ("convert_to_tensor", convert_to_tensor)):
            if given:
                logger.warning(
                    "The CrossEncoder.rank `%s` argument is deprecated and has no effect, as `rank` always returns Python floats.", name
                )
        scores = self.predict([(query, d) for d in documents], batch_size=batch_size, activation_fn=activation_fn,
                              apply_softmax=apply_softmax, convert_to_numpy=True, **kwargs)
        ranked = []
        for i, score in enumerate(np.atleast_1d(scores)):
            item: dict[str, Any] = {"corpus_id": i, "score": float(score)}
            if return_documents:
                item["text"] = documents[i]
            ranked.append(item)
        ranked.sort(key=lambda x: x["score"], reverse=True)
        return ranked[:top_k]


class SparseEncoder(_Embedder):
    """sentence-transformers' ``SparseEncoder`` (SPLADE) on poolkit's engine."""

    _default_similarity = "dot"

    def _configure(self, max_active_dims: int | None = None, similarity_fn_name: str | None = None) -> None:
        self.max_active_dims = max_active_dims
        self._set_similarity(similarity_fn_name)

    def get_embedding_dimension(self) -> int:
        """The vocabulary size: one dimension per token."""
        return len(self.tokenizer)

    def encode(
        self,
        inputs: Any,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        convert_to_tensor: bool = True,
        convert_to_sparse_tensor: bool = True,
        save_to_cpu: bool = False,
        device: Any = None,
        max_active_dims: int | None = None,
        pool: Any = None,
        chunk_size: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Sparse vocabulary-sized embeddings: a sparse COO tensor ``[n, vocab]`` by default (one
        input gives a 1-D one), the strongest ``max_active_dims`` weights of each kept."""
        self._check_call(batch_size, kwargs)
        texts, single = self._inputs(inputs)
        resolved = self._resolve_prompt(prompt, prompt_name)
        # Where sentence-transformers leaves the rows: on the CPU when asked, else on the model's device.
        place = (lambda rows: rows.cpu()) if save_to_cpu else self._on_model
        if not texts:
            if convert_to_tensor:
                empty = torch.zeros((0, self.get_embedding_dimension()))
                return place(empty.to_sparse() if convert_to_sparse_tensor else torch.tensor([]))
            return []
        side = kwargs.get("task")  # encode_query / encode_document's: the route of a model with a Router
        routed = side in ROLES and self.llm.model.st is not None and self.llm.model.st.router is not None
        dense = self._matrix("sparse_embed", texts, None, resolved, side if routed else None)
        keep = max_active_dims if max_active_dims is not None else self.max_active_dims
        if keep is not None and keep < dense.shape[1]:
            top = dense.topk(keep, dim=1)
            dense = torch.zeros_like(dense).scatter_(1, top.indices, top.values)
        rows = place(dense.to_sparse() if convert_to_sparse_tensor else dense)
        if convert_to_tensor:
            return rows[0] if single else rows
        listed = list(rows)
        return listed[0] if single else listed

    def encode_query(self, inputs: Any, prompt_name: str | None = None, prompt: str | None = None, **kwargs: Any) -> Any:
        """``encode`` with the ``query`` prompt, on a ``Router``'s query route (``task="query"``)."""
        return super().encode_query(inputs, prompt_name, prompt, **{"task": "query", **kwargs})

    def encode_document(self, inputs: Any, prompt_name: str | None = None, prompt: str | None = None, **kwargs: Any) -> Any:
        """``encode`` with the ``document`` prompt, on a ``Router``'s document route (``task="document"``)."""
        return super().encode_document(inputs, prompt_name, prompt, **{"task": "document", **kwargs})

    def decode(self, embeddings: torch.Tensor, top_k: int | None = None) -> Any:
        """``(token, weight)`` pairs of each embedding, strongest first (one embedding gives one list)."""
        if top_k is not None and top_k <= 0:
            raise InvalidRequest(f"top_k must be a positive integer, got {top_k}.")
        if not isinstance(embeddings, torch.Tensor):
            raise TypeError(f"Expected torch.Tensor, got {type(embeddings)}")
        if embeddings.dim() not in (1, 2):
            raise InvalidRequest(f"Input tensor must be 1D or 2D, got {embeddings.dim()}D.")
        dense = embeddings.to_dense() if embeddings.is_sparse else embeddings
        single = dense.dim() == 1
        tokenizer = self.tokenizer
        decoded = []
        for row in (dense.unsqueeze(0) if single else dense):
            ids = row.nonzero().squeeze(-1)
            weights = row[ids]
            order = weights.argsort(descending=True)[:top_k]
            tokens = tokenizer.convert_ids_to_tokens(ids[order].tolist())
            decoded.append(list(zip(tokens, weights[order].tolist())))
        return decoded[0] if single else decoded

    @staticmethod
    def intersection(embeddings_1: torch.Tensor, embeddings_2: torch.Tensor) -> torch.Tensor:
        """The dimensions both embeddings activate, with the product of their weights (sparse;
        ``embeddings_1`` one embedding, ``embeddings_2`` one or a batch)."""
        first = embeddings_1.to_dense() if embeddings_1.is_sparse else embeddings_1
        second = embeddings_2.to_dense() if embeddings_2.is_sparse else embeddings_2
        if first.dim() != 1:
            raise InvalidRequest(f"Expected 1D tensor for embeddings_1, but got {tuple(first.shape)} shape.")
        if first.shape[-1] != second.shape[-1]:
            raise InvalidRequest(
                f"Vocab dimension mismatch: embeddings_1 has {first.shape[-1]}, embeddings_2 has {second.shape[-1]}."
            )
        if second.dim() not in (1, 2):
            raise InvalidRequest(f"Expected 1D or 2D tensor for embeddings_2, but got {tuple(second.shape)} shape.")
        product = first * second
        return torch.where(product > 0, product, torch.zeros_like(product)).to_sparse()

    @staticmethod
    def sparsity(embeddings: torch.Tensor) -> dict[str, float]:
        """The mean number of non-zero dimensions and the share of zero ones."""
        dense = embeddings.to_dense() if embeddings.is_sparse else torch.as_tensor(embeddings)
        dense = dense.unsqueeze(0) if dense.dim() == 1 else dense
        active = (dense != 0).sum(dim=1).float().mean().item()
        return {"active_dims": active, "sparsity_ratio": 1.0 - active / dense.shape[1]}


def _is_image(value: Any) -> bool:
    """Whether ``value`` is a PIL image (without importing Pillow when it is not loaded)."""
    image = sys.modules.get("PIL.Image")
    return image is not None and isinstance(value, image.Image)


def _is_media(value: Any) -> bool:
    """Whether an ``encode`` input is an image or a multimodal dict (sentence-transformers' shapes)."""
    if isinstance(value, dict):  # {"text", "image"} (more keys are refused by name); vLLM's prompt dicts are not
        return bool(set(value) & {"text", "image"}) and not set(value) & {"prompt", "prompt_token_ids", "multi_modal_data"}
    return _is_image(value)
