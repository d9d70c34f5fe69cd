"""jina-reranker-v3 (``JinaForRanking``): a listwise reranker on the Qwen3 decoder.

Jina publishes it as ``"architectures": ["JinaForRanking"]``, ``model_type`` ``qwen3``, with its
own ``modeling.py`` (``auto_map`` ``AutoModel``): ``Qwen3ForCausalLM`` with the LM head replaced by
nothing and a ``projector`` (Linear ``hidden -> hidden / 2``, ReLU, Linear ``hidden / 2 -> 512``,
no biases). One prompt holds the query and many documents: each document's text ends with
``<|embed_token|>``, the query (repeated after the documents) with ``<|rerank_token|>``; the
hidden states at those tokens go through the projector, and a document's score is the cosine of
its vector with the query's. vLLM's newest ``JinaForRanking`` runs the same layout.

Here the body is :class:`poolkit.builtin_models.qwen.Qwen3Model`, the model serves ``token_embed``
(the projected vectors at the embed tokens, documents first, then the query), and
:attr:`JinaForRanking.listwise` (a :class:`~poolkit.contracts.capabilities.ListwiseReranker`'s layout) tells the ``listwise`` scorer the published prompt and its limits,
so that ``LLM.score`` / ``LLM.rerank`` and the servers' score and rerank routes split many
documents into prompts as Jina's ``rerank`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Collection, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from poolkit.contracts.batch import PackedBatch
from poolkit.contracts.capabilities import ListwiseLayout, ListwiseReranker
from poolkit.contracts.errors import ModelLoadError
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.params import PoolingParams

from .qwen import Qwen3Model

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from poolkit.contracts.architecture import LoadedModel, TaskSpec
    from poolkit.contracts.model import Tokenizer
    from poolkit.contracts.pooling import Head

#: The width of the projected vectors: Jina's ``modeling.py`` fixes ``projector_dim = 512`` (vLLM
#: sets ``embedding_size`` to it); a checkpoint's ``projector.2.weight`` says its own.
PROJECTOR_DIM = 512

_SYSTEM = (
    "You are a search relevance expert who can determine a ranking of the passages based on how relevant they are to "
    "the query. If the query is a question, how relevant a passage is depends on how well it answers the question. If "
    "not, try to analyze the intent of the query and assess how well each passage satisfies the intent. If an "
    "instruction is provided, you should follow the instruction when determining the ranking."
)


class JinaRerankerV3Layout(ListwiseLayout):
    """jina-reranker-v3's prompt (``format_docs_prompts_func`` of Jina's ``modeling.py``, with
    thinking off, as its ``rerank`` calls it) and the limits its ``rerank`` applies: queries cut
    to 512 tokens, documents to 2048, at most 125 documents a prompt."""

    doc_token: ClassVar[str] = "<|embed_token|>"
    query_token: ClassVar[str] = "<|rerank_token|>"
    max_query_tokens: ClassVar[int] = 512
    max_doc_tokens: ClassVar[int] = 2048
    block_size: ClassVar[int] = 125

    def prompt(self, query: str, documents: list[str], instruction: str | None) -> str:
        query = self.sanitize(query)
        user = (
            f"I will provide you with {len(documents)} passages, each indicated by a numerical identifier. "
            f"Rank the passages based on their relevance to query: {query}\n"
        )
        if instruction:
            user += f"<instruct>\n{self.sanitize(instruction)}\n</instruct>\n"
        passages = (f'<passage id="{i}">\n{self.sanitize(doc)}{self.doc_token}\n</passage>' for i, doc in enumerate(documents))
        user += "\n".join(passages) + "\n" + f"<query>\n{query}{self.query_token}\n</query>"
        return (
            f"<|im_start|>system\n{_SYSTEM}<|im_end|>\n<|im_start|>user\n{user}"
            "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        )


class EmbedTokenVectorsHead:
    """``token_embed`` of a listwise reranker: per prompt, the projected hidden states at its embed
    tokens in prompt order, L2-normalised where a request's ``use_activation`` (else the model's
    default, ``use_activation``) says so; the listwise scorer asks for them raw, as Jina's
    ``rerank`` averages them unnormalised."""

    def __init__(self, projector: nn.Module, token_ids: Sequence[int], use_activation: bool) -> None:
        self.projector = projector
        self.token_ids = list(token_ids)
        self.use_activation = use_activation

    def __call__(self, hidden: torch.Tensor, batch: PackedBatch, params: Sequence[PoolingParams]) -> list[torch.Tensor]:
        ids = batch.input_ids
        marked = torch.isin(ids, torch.tensor(self.token_ids, device=ids.device))
        counts = torch.bincount(batch.seq_ids[marked], minlength=batch.num_seqs).tolist()
        vectors = self.projector(hidden[marked]).float()
        out = []
        for rows, p in zip(vectors.split(counts), params):
            activate = self.use_activation if p.use_activation is None else p.use_activation
            out.append(F.normalize(rows, dim=-1) if activate else rows)
        return out


class JinaForRanking(Qwen3Model, ListwiseReranker):
    """jina-reranker-v3: the Qwen3 body, then the ``projector`` at the embed tokens.

    The checkpoint keeps the body under ``model.`` and the projector as ``projector.0.weight`` /
    ``projector.2.weight`` (Jina's ``nn.Sequential``); it has no LM head. The embed tokens' ids are
    read from the tokenizer (151670 and 151671 in the published one, which Jina's code and vLLM
    hard-code).
    """

    pooling_tasks: ClassVar[frozenset[str] | None] = frozenset({"token_embed"})
    score_type: ClassVar[str | None] = "listwise"
    listwise: ClassVar[ListwiseLayout] = JinaRerankerV3Layout()
    classifier_prefixes: ClassVar[tuple[str, ...]] = ("projector.",)

    @classmethod
    def configure(cls, config: PretrainedConfig, tokenizer: Tokenizer) -> None:
        """Look up the ids of the document and query embed tokens.

        Raises:
            ModelLoadError: the tokenizer does not have one of them as a token of its own.
        """
        layout = cls.listwise
        ids = []
        for token in (layout.doc_token, layout.query_token):
            found = tokenizer.convert_tokens_to_ids(token)
            if not isinstance(found, int) or found == getattr(tokenizer, "unk_token_id", None):
                raise ModelLoadError(f"JinaForRanking needs the token '{token}' in its tokenizer; this tokenizer has none")
            ids.append(found)
        config.doc_embed_token_id, config.query_embed_token_id = ids

    @classmethod
    def check_config(cls, config: PretrainedConfig, shapes: Mapping[str, tuple[int, ...]] | None, overridden: Collection[str] = ()) -> None:
        """The projector's shapes: ``hidden -> hidden / 2 -> embedding_size`` (the checkpoint's width,
        512 when no checkpoint shapes are known).

        Raises:
            ModelLoadError: the checkpoint's projector does not fit the hidden size, or disagrees with
                an ``embedding_size`` given in ``hf_overrides``.
        """
        super().check_config(config, shapes, overridden)
        shapes = shapes or {}
        hidden = int(config.hidden_size)
        first, last = shapes.get("projector.0.weight"), shapes.get("projector.2.weight")
        if first is not None and tuple(first) != (hidden // 2, hidden):
            raise ModelLoadError(f"projector.0.weight has shape {tuple(first)}; JinaForRanking's takes ({hidden // 2}, {hidden})")
        if last is not None and (len(last) != 2 or int(last[1]) != hidden // 2):
            raise ModelLoadError(f"projector.2.weight has shape {tuple(last)}; JinaForRanking's takes {hidden // 2} features")
        width = int(last[0]) if last is not None else PROJECTOR_DIM
        if "embedding_size" in overridden and int(config.embedding_size) != width:
            raise ModelLoadError(f"embedding_size {config.embedding_size} does not match the projector's {width} outputs")
        config.embedding_size = width

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        hidden = int(config.hidden_size)
        width = int(getattr(config, "embedding_size", PROJECTOR_DIM))
        self.projector = nn.Sequential(
            nn.Linear(hidden, hidden // 2, bias=False), nn.ReLU(), nn.Linear(hidden // 2, width, bias=False)
        )
        self.embed_token_ids = (int(config.doc_embed_token_id), int(config.query_embed_token_id))

    @property
    def hidden_size(self) -> int:
        """The width of the vectors the model returns: the projector's outputs."""
        return int(self.projector[2].out_features)

    def task_head(self, task: TaskSpec, model: LoadedModel) -> Head | None:
        if task.name == "token_embed":
            return EmbedTokenVectorsHead(self.projector, self.embed_token_ids, model.use_activation().value)
        return None


@hookimpl
def poolkit_register_architectures(register):
    register("JinaForRanking", JinaForRanking)
