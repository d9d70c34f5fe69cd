"""sentence-transformers' ``MultiVectorEncoder`` (ColBERT-style late interaction) on poolkit's engine.

``from poolkit import MultiVectorEncoder`` loads the checkpoints sentence-transformers 6's class
loads, read the way it reads them: colbert-ai's ``HF_ColBERT`` (``artifact.metadata``, or
colbert-ai's defaults without one), PyLate's configs, and sentence-transformers' own saves. Each
input becomes one vector per token: a query gets the query marker and ``[MASK]`` expansion (scored,
not attended to unless the model says so), a document the document marker, and its skiplist
tokens (punctuation, for colbert-ai and PyLate checkpoints) are left out. ``similarity`` scores by
MaxSim (or MeanMaxSim). What differs from sentence-transformers is what differs for the other
drop-in classes (:mod:`poolkit.api.st_compat`), and ``output_value=None`` gives each input's own
tensors, not rows padded to a batch.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..contracts.errors import InvalidRequest
from ..loading.token_pooling import kept, pool_tokens
from ..plugins.manager import registry
from .st_compat import _Embedder
from .st_functions import maxsim, maxsim_pairwise, multi_vector_similarity_name

if TYPE_CHECKING:
    from .llm import LLM

#: The checkpoints whose saved prompts sentence-transformers keeps when it loads them as a
#: MultiVectorEncoder (``model_type``; PyLate 3 saves say ``ColBERT``); it drops other kinds' prompts.
_KEEPS_PROMPTS = frozenset({None, "SentenceTransformer", "MultiVectorEncoder", "ColBERT"})
_NO_TENSOR = (
    "MultiVectorEncoder.encode() has no `convert_to_tensor`: it stacks embeddings into one tensor on the other "
    "model types, and multi-vector embeddings are variable-length, so there is nothing to stack. Encoding "
    "already returns a list of tensors. Drop the argument, or pass `convert_to_numpy=True` for a list of arrays."
)


class MultiVectorEncoder(_Embedder):
    """sentence-transformers' ``MultiVectorEncoder`` on poolkit's engine.

    Example:
        >>> from poolkit import MultiVectorEncoder
        >>> model = MultiVectorEncoder("path/to/colbert")
        >>> queries = model.encode_query(["What is the capital of France?"])
        >>> documents = model.encode_document(["Paris is the capital of France.", "Berlin is in Germany."])
        >>> model.similarity(queries, documents)  # [1, 2] MaxSim scores
    """

    _default_similarity = "maxsim"
    _similarity_name = staticmethod(multi_vector_similarity_name)

    def _attach(self, llm: "LLM", prompts: dict[str, str] | None, default_prompt_name: str | None, limit: int | None) -> None:
        self._colbert = registry("io_processor").get("colbert")
        self._settings = self._colbert.settings(llm.model, colbert_ai_defaults=True)
        self._foreign = False
        super()._attach(llm, prompts, default_prompt_name, limit)
        if self._foreign and default_prompt_name is None:
            self.default_prompt_name = None
        st = llm.model.st
        # sentence-transformers puts a token-level Normalize after every checkpoint it converts;
        # its own multi-vector saves say whether they have one.
        self._normalize = st is None or st.model_type != "MultiVectorEncoder" or st.normalize

    def _saved_prompts(self, llm: "LLM") -> dict[str, str]:
        """The saved prompts, a colbert-ai or PyLate marker put before the query and document ones
        (sentence-transformers turns those markers into the prompts); none of another kind of
        model's (a SparseEncoder's, say), as sentence-transformers converts it."""
        st = llm.model.st
        if st is not None and st.model_type not in _KEEPS_PROMPTS:
            self._foreign = True
            return {}
        saved = super()._saved_prompts(llm)
        if not self._settings.markers:
            return saved
        for name in ("query", "document"):
            marker = self._settings.prefix(name)
            if marker:
                saved[name] = marker + (saved.get(name) or "").removeprefix(marker)
        return saved

    def _configure(self, similarity_fn_name: str | None = None) -> None:
        st = self.llm.model.st
        configured = similarity_fn_name if similarity_fn_name is not None else (st.similarity_fn_name if st else None)
        if configured is not None and similarity_fn_name is None and getattr(configured, "value", configured) not in ("maxsim", "meanmaxsim"):
            configured = None  # a converted single-vector checkpoint's cosine / dot: MaxSim instead
        self._similarity_fn_name = self._similarity_name(configured) if configured is not None else None
        self.llm.task("token_embed")  # refuses a model without token vectors

    def similarity(self, embeddings1: Any, embeddings2: Any, **kwargs: Any) -> torch.Tensor:
        """MaxSim (or MeanMaxSim) of every query embedding with every document embedding: ``[n1, n2]``."""
        kwargs.setdefault("length_normalize", self.similarity_fn_name == "meanmaxsim")
        return maxsim(embeddings1, embeddings2, **kwargs)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any, **kwargs: Any) -> torch.Tensor:
        """MaxSim (or MeanMaxSim) of each pair ``(embeddings1[i], embeddings2[i])``."""
        kwargs.setdefault("length_normalize", self.similarity_fn_name == "meanmaxsim")
        return maxsim_pairwise(embeddings1, embeddings2, **kwargs)

    def encode_query(self, inputs: Any, prompt_name: str | None = None, prompt: str | None = None, **kwargs: Any) -> Any:
        """:meth:`encode` as a query: the ``query`` prompt (the query marker), the query length and expansion."""
        return super().encode_query(inputs, prompt_name, prompt, **{"task": "query", **kwargs})

    def encode_document(self, inputs: Any, prompt_name: str | None = None, prompt: str | None = None, **kwargs: Any) -> Any:
        """:meth:`encode` as a document: the ``document`` prompt (the document marker), length and skiplist."""
        return super().encode_document(inputs, prompt_name, prompt, **{"task": "document", **kwargs})

    def get_embedding_dimension(self) -> int | None:
        """The width of each token vector."""
        projection = getattr(self.llm.model.architecture, "linear", None)
        return getattr(projection, "out_features", None) or self.llm.model.embedding_size

    get_sentence_embedding_dimension = get_embedding_dimension

    def _task_settings(self, task: str | None) -> Any:
        """The ColBERT settings of one call: ``max_seq_length`` where the model sets no length of
        the task's own; no task reads as a document without the document length or marker."""
        settings, limit = self._settings, self.max_seq_length
        if task == "query":
            return dataclasses.replace(settings, query_length=settings.query_length or limit)
        return dataclasses.replace(settings, document_length=(settings.document_length if task == "document" else None) or limit)

    def encode(
        self,
        inputs: Any,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: str | None = "token_embeddings",
        convert_to_numpy: bool = False,
        device: Any = None,
        normalize_embeddings: bool = False,
        pool: Any = None,
        chunk_size: int | None = None,
        token_pooling: Any = None,
        task: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """One ``[tokens, dim]`` tensor per input (or array with ``convert_to_numpy``); ``task``
        ``"query"`` or ``"document"`` picks the marker, length, expansion and skiplist (prefer
        :meth:`encode_query` / :meth:`encode_document`). A single input gives its tensor alone."""
        if "convert_to_tensor" in kwargs:
            raise InvalidRequest(_NO_TENSOR)
        self._check_call(batch_size, kwargs)
        if output_value not in ("token_embeddings", None):
            raise InvalidRequest(
                f'output_value must be "token_embeddings" or None (raw per-input feature dicts), got {output_value!r}.'
            )
        if task not in (None, "query", "document"):
            raise InvalidRequest(f"task must be 'query', 'document' or None, got {task!r}")
        texts, single = self._inputs(inputs)
        prefix = self._resolve_prompt(prompt, prompt_name)
        settings = self._task_settings(task)
        kind = task or "document"
        prompts = self._colbert.pre_process(
            {"texts": texts, "kind": kind, "model": self.llm.model, "settings": settings, "prefix": prefix or ""}
        )
        skip = self._colbert.skipped(self.llm.model, kind, settings)
        results = self._run("token_embed", list(prompts)) if texts else []
        # The checkpoint's token pooling (a HierarchicalTokenPooling module, or --token-pool-factor) on
        # the side it applies to, after the skiplist, as sentence-transformers' pipeline runs it (and LLM's heads).
        spec = self.llm.model.token_pooling
        pooled = spec is not None and kind in spec.tasks
        out: list[Any] = []
        for vectors, ids in results:
            vectors = vectors.float()
            if self._normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            scored = kept(ids, skip)
            if output_value is None:
                out.append({"input_ids": torch.tensor(ids), "token_embeddings": vectors, "attention_mask": scored, "modality": "text"})
                continue
            vectors = pool_tokens(vectors, spec.pool_factor, spec, ids, skip) if pooled else vectors[scored]
            out.append(torch.nn.functional.normalize(vectors, dim=-1) if normalize_embeddings else vectors)
        if token_pooling is not None and output_value is not None:
            out = token_pooling.pool(out, task=task)
        if convert_to_numpy and output_value is not None:
            out = [np.asarray(v.cpu().numpy()) for v in out]
        elif output_value is not None:
            out = [self._on_model(v) for v in out]
        return out[0] if single else out
