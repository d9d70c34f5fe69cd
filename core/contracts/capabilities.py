"""Capabilities: what a model family does beyond packed tokens in, hidden states out.

Each is a small protocol a family opts into by naming it among its bases (vLLM's ``SupportsLoRA``,
``SupportsMultiModal``), next to :class:`~poolkit.contracts.architecture.Architecture`::

    class Qwen2VLForConditionalGeneration(Architecture, SharesPrefixes, MediaPlaceholders): ...

and each is read by one consumer in the core, which asks ``isinstance(arch, Capability)``. The
checks are structural (``runtime_checkable``): an architecture that sets a capability's members
itself, as third-party architectures did when these were class attributes of ``Architecture``
(``shares_prefixes = True``), has it too. A family that has a capability only for some configs
says so per instance (``self.shares_prefixes = False``).

Capabilities whose every member is a class attribute (:class:`ClaimsNames`, :class:`StandsIn`,
:class:`BorrowsConfig`, :class:`RefusesDtypes`) are asked of the class, before the model is built.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, NamedTuple, Protocol, Sequence, runtime_checkable

import torch

#: What :meth:`TaskAdapters.task_adapters` returns: task name -> checkpoint layer name -> ``(A, B)``.
TaskAdapterFactors = Mapping[str, Mapping[str, tuple[torch.Tensor, torch.Tensor]]]

_CAPABLE: dict[tuple[type, type], bool] = {}


def capable(obj: object, capability: type) -> bool:
    """``isinstance(obj, capability)`` for the checks made on every batch: a structural check walks
    the capability's members through the class's bases (some fifty Python calls), so the answer is
    kept per class. For capabilities whose members are methods or class attributes (the same for
    every instance of a class), not those a family sets per instance."""
    key = (type(obj), capability)
    known = _CAPABLE.get(key)
    if known is None:
        known = _CAPABLE[key] = isinstance(obj, capability)
    return known


@runtime_checkable
class SharesPrefixes(Protocol):
    """The states of a prompt's first tokens depend on those tokens alone (causal attention,
    positions from 0, no sliding window, nothing read off a sequence's length), so prompts that
    begin alike have them computed once (:mod:`poolkit.runtime.prefix`, the one reader).

    Such an architecture honours :attr:`PackedBatch.starts` (its positions do) and runs its
    attention through ``batch.prefix.attention(op, device)`` when ``batch.prefix`` is set.
    """

    #: Whether this instance shares (a decoder with ``is_causal: false``, a sliding window or a
    #: soft-capped attention decides ``False`` from its config).
    shares_prefixes: bool = True


@runtime_checkable
class MediaPlaceholders(Protocol):
    """A vision-language model that can say where its media lie in a prompt: the token ids whose
    rows its media features fill. Read by prefix sharing (:mod:`poolkit.runtime.prefix`, with
    :class:`SharesPrefixes`): prompts with media then share prefixes that never split their media.

    A prefix ends before a prompt's first such token (text alone, run without the media) or holds
    them all (kept apart by the media). The architecture reads, in each sequence's media dict, only
    what describes that sequence's tokens: a ``positions`` tensor (``[..., tokens]``) is cut to them,
    and the other tensors (pixels, grids) are there only where the sequence holds the placeholders.
    """

    #: The placeholder token ids (set per instance from the config); empty: prompts with media share none.
    placeholder_tokens: frozenset[int] = frozenset()


class TaskPrompt(NamedTuple):
    """A prompt name a checkpoint's own task answers to (:meth:`TaskAdapters.task_prompts`).

    Attributes:
        adapter: the adapter of :meth:`TaskAdapters.task_adapters` it runs.
        prefix: the text it puts before each input (``""``: none).
    """

    adapter: str
    prefix: str


@runtime_checkable
class TaskAdapters(Protocol):
    """The checkpoint carries LoRA adapters of its own, one per task (jina-embeddings-v3's
    ``retrieval.query``, ``retrieval.passage``, ``separation``, ``classification``,
    ``text-matching``; jina-embeddings-v5's), kept in memory once and mixed in a batch as any
    adapter. Read by the model's adapters (:func:`poolkit.lora.manager.model_adapters`); the loaded
    model's prompt names (:attr:`poolkit.loading.model.PoolingModel.prompts`) list its tasks.
    """

    #: The adapter a prompt naming no task runs (jina-embeddings-v3: ``text-matching``, as vLLM
    #: merges it); ``None`` runs the base weights.
    default_task_adapter: str | None = None

    def task_adapters(self) -> TaskAdapterFactors:
        """The adapters (:mod:`poolkit.lora`): task name -> checkpoint layer name -> ``(A [r, in],
        B [out, r])``, the layer's scaling folded into ``B``; an embedding table's ``A`` is
        ``[r, vocab]``. A request picks one by its prompt name (``prompt_name``, the ``task`` of
        Jina's API). Called once, after :meth:`~poolkit.Architecture.load_companion_files`."""
        return {}

    def task_prompts(self) -> Mapping[str, TaskPrompt]:
        """The prompt names the checkpoint's own tasks answer to, each with its adapter and the text it
        puts before an input (jina-embeddings-v5: Jina's API task ``retrieval.query`` runs the
        ``retrieval`` adapter with ``"Query: "`` first), beside the sentence-transformers prompts
        (whose text wins for a name in both). Called after ``load_companion_files``; none by default:
        a prompt name runs the adapter of that name, if any."""
        return {}


class ListwiseLayout:
    """How a listwise reranker lays one query and many documents out in one prompt: what a
    :class:`ListwiseReranker` names for the scorer that reads it.

    Each document's text in the prompt ends with :attr:`doc_token` and the query's with
    :attr:`query_token`, after the documents; the architecture's ``token_embed`` head returns the
    vectors at those tokens in prompt order (the documents', then the query's). Before the layout,
    a query is cut to :attr:`max_query_tokens` tokens and a document to :attr:`max_doc_tokens`
    (and decoded back); a prompt holds at most :attr:`block_size` documents. A layout sets each of
    these: they have no defaults.
    """

    doc_token: ClassVar[str]
    query_token: ClassVar[str]
    max_query_tokens: ClassVar[int]
    max_doc_tokens: ClassVar[int]
    block_size: ClassVar[int]

    def prompt(self, query: str, documents: list[str], instruction: str | None) -> str:
        """The prompt text of ``query`` with ``documents`` (already cut), and an optional instruction;
        each text passed through :meth:`sanitize`."""
        raise NotImplementedError

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The tokens whose vectors the head returns, which no input text may hold."""
        return tuple(t for t in (self.doc_token, self.query_token) if t)

    def sanitize(self, text: str) -> str:
        """``text`` with no :attr:`special_tokens` left in it, each of which would add a vector of its
        own and shift every score of its prompt.

        Removed to a fixed point, not once: removing a nested token (``<|embed<|embed_token|>_token|>``)
        joins the text around it into another. Linear in the text, however deep the nesting.
        """
        tokens = self.special_tokens
        for token in tokens:  # the usual case: no token, or tokens that removing once does away with
            text = text.replace(token, "")
        if not any(token in text for token in tokens):
            return text
        ends = {token[-1] for token in tokens}
        out: list[str] = []  # holds no token at any step: one can only end at the character just added
        for char in text:
            out.append(char)
            if char in ends:
                for token in tokens:
                    if len(out) >= len(token) and "".join(out[-len(token):]) == token:
                        del out[-len(token):]
                        break
        return "".join(out)


@runtime_checkable
class ListwiseReranker(Protocol):
    """A listwise reranker (jina-reranker-v3): one prompt holds a query and many documents, laid out
    as its :attr:`listwise` says. Read by the built-in ``listwise`` scorer."""

    #: The layout of its prompts.
    listwise: ClassVar[ListwiseLayout]


@runtime_checkable
class MaskedLMHead(Protocol):
    """The model's :meth:`~poolkit.Architecture.lm_head` is a masked-LM head, whose logits at a token
    are a distribution over what that token itself is (``BertForMaskedLM``), not a causal LM's
    next-token head. Such a head is the token classifier of a model with no ``token_classifier()``:
    every token's softmax over the vocabulary, as vLLM serves a masked LM's token task. Read by the
    ``token_classify`` task."""

    #: Whether this class's ``lm_head()`` is one (a subclass may say ``False``).
    masked_lm_head: ClassVar[bool] = True


@runtime_checkable
class TakesTokenTypes(Protocol):
    """The forward pass reads token type (segment) ids, ``batch.token_type_ids``. Read by the
    engine's tokenizer (:mod:`poolkit.runtime.tokenizing`), which feeds them when the tokenizer
    makes them too; otherwise batches carry ``None``."""

    #: Whether this instance reads them (a RoBERTa with one token type does not).
    uses_token_type_ids: bool = True


@runtime_checkable
class SkipsInstruction(Protocol):
    """Sequence pooling leaves a prompt's leading tokens out (the instruction of an
    instruction-following embedder, GritLM's ``<|user|>...<|embed|>``); positions and attention
    still count them. Read by the engine's pooling columns (:mod:`poolkit.runtime.columns`)."""

    def pool_start(self, token_ids: Sequence[int]) -> int:
        """How many leading tokens of a prompt of ``token_ids`` pooling leaves out. Called once per
        prompt, after tokenization and truncation. A sentence-transformers prompt excluded with
        ``include_prompt: false`` is left out too (the larger of the two counts)."""
        ...


@runtime_checkable
class ClaimsNames(Protocol):
    """The architecture serves names registered for other architectures when the checkpoint's
    ``config.json`` holds given values, as published checkpoints of another layout use them.
    Read by the loader's architecture choice (:mod:`poolkit.loading.load`), of the class."""

    #: Name -> the config values that make a checkpoint of that name this architecture's:
    #: ``{"XLMRobertaModel": {"position_embedding_type": "rotary"}}`` (jina-embeddings-v3 is
    #: published as ``XLMRobertaModel``; vLLM builds its Jina model from that name on the same
    #: config value). A claim wins over the name's own registration.
    claims: ClassVar[Mapping[str, Mapping[str, Any]]]


@runtime_checkable
class StandsIn(Protocol):
    """The architecture stands in for architectures poolkit cannot run (checkpoints that ship only
    remote code, which poolkit never runs): the error that refuses such a model names it, with a
    checkpoint to use instead. Read by the loader (:mod:`poolkit.loading.load`), of the class."""

    #: Refused architecture name -> a checkpoint to suggest: ``{"Phi3VForCausalLM": "Qwen/Qwen3-VL-Embedding-2B"}``.
    alternative_for: ClassVar[Mapping[str, str]]


@runtime_checkable
class BorrowsConfig(Protocol):
    """The checkpoints' ``config.json`` names a ``model_type`` transformers does not know (one
    written for remote code, such as ``llama_bidirec``), which a transformers config class reads.
    Read by the config loader (:mod:`poolkit.loading.hf_config`), of the class."""

    #: The transformers ``model_type`` whose config class reads it (``"llama"``).
    config_model_type: ClassVar[str | None]


@runtime_checkable
class RunsSTModules(Protocol):
    """The architecture runs sentence-transformers modules of its publisher's own (``modules.json``
    types such as ``st_quantize.FlexibleQuantizer``, remote code there) itself, in its task head:
    the sentence-transformers reader (:mod:`poolkit.loading.st_config`) passes over them instead of
    refusing the model. Read by the loader (:mod:`poolkit.loading.load`), of the class."""

    #: The ``modules.json`` types (as written there) the architecture runs.
    st_modules: ClassVar[frozenset[str]]


@runtime_checkable
class RefusesDtypes(Protocol):
    """The architecture refuses to run in some dtypes. Read by the loader
    (:mod:`poolkit.loading.load`), of the class, before the tokenizer and the weights load."""

    #: Dtype name (``"float16"``) -> the reason the error gives (Gemma 2 and 3 overflow in fp16, as vLLM says).
    unsupported_dtypes: ClassVar[Mapping[str, str]]

