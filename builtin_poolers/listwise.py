"""The ``listwise`` scorer: a query and many documents read in one prompt (jina-reranker-v3).

A model whose architecture is a :class:`~poolkit.contracts.capabilities.ListwiseReranker` (its
:class:`~poolkit.contracts.capabilities.ListwiseLayout` in ``listwise``) scores this way, following Jina's published ``rerank``:

1. the pairs of a call are grouped by query (``LLM.rerank`` and a 1:N score are one group; N:N
   pairs with N different queries are N groups of one document);
2. a query is cut to the layout's ``max_query_tokens`` and each document to ``max_doc_tokens``
   (tokenized, cut, decoded back), as Jina's ``_truncate_texts``;
3. a group's documents fill prompts in order: a prompt is closed once it holds ``block_size``
   documents, or once what is left of the length budget (the tokenizer's ``model_max_length``, or
   the model's ``max_model_len`` when smaller, less twice the query's tokens) minus its documents'
   tokens is ``max_doc_tokens`` or less;
4. each prompt gives its documents' and its query's projected vectors (``token_embed``, raw);
5. a group with one prompt scores each document by the cosine of its vector with the query's (the
   model's own scores). With several prompts, the query's vectors are averaged, each weighted by its
   prompt's best ``(1 + cosine) / 2``, and every document is scored against that average: a
   document's score then depends on the documents that shared its prompt and on the other prompts.

The ``instruction`` of a score call (or ``chat_template_kwargs.instruction``, vLLM's way) goes into
every prompt's ``<instruct>`` block; a score template does not apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from poolkit.contracts.errors import InvalidRequest
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.io import Prompt
from poolkit.contracts.model import Tokenizer
from poolkit.contracts.architecture import LoadedModel
from poolkit.contracts.capabilities import ListwiseLayout, ListwiseReranker
from poolkit.contracts.scoring import ScoreCall, Scorer, template_kwargs


@dataclass
class _Text:
    """A query or document as the layout reads it: cut to its limit, its token count, whether it was cut."""

    text: str
    length: int
    cut: bool


def _cut(tokenizer: Tokenizer, texts: list[str], limit: int) -> list[_Text]:
    """``texts`` cut to ``limit`` tokens each and decoded back, as Jina's ``_truncate_texts``."""
    if not texts:
        return []
    out = []
    for text, ids in zip(texts, tokenizer(texts, truncation=True, max_length=limit)["input_ids"]):
        cut = len(ids) >= limit
        out.append(_Text(str(tokenizer.decode(ids)) if cut else text, len(ids), cut))
    return out


def _blocks(layout: ListwiseLayout, query: _Text, members: list[int], docs: list[_Text], budget: int) -> list[list[int]]:
    """A group's documents (pair indices) split into prompts, by the published rule (module docstring, step 3)."""
    blocks: list[list[int]] = []
    current: list[int] = []
    capacity = budget - 2 * query.length
    for index in members:
        current.append(index)
        capacity -= docs[index].length
        if len(current) >= layout.block_size or capacity <= layout.max_doc_tokens:
            blocks.append(current)
            current, capacity = [], budget - 2 * query.length
    if current:
        blocks.append(current)
    return blocks


def merged_scores(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Scores of a group's documents from its prompts' ``(document vectors, query vector)``."""
    if len(parts) == 1:
        docs, query = parts[0]
        return F.cosine_similarity(docs, query.unsqueeze(0), dim=-1)
    weights = torch.stack([((1.0 + F.cosine_similarity(d, q.unsqueeze(0), dim=-1)) / 2.0).max() for d, q in parts])
    queries = torch.stack([q for _, q in parts])
    merged = (weights.unsqueeze(1) * queries).sum(0) / weights.sum()
    docs = torch.cat([d for d, _ in parts])
    return F.cosine_similarity(docs, merged.unsqueeze(0), dim=-1)


def _layout(model: LoadedModel) -> ListwiseLayout | None:
    """The listwise layout of ``model``'s architecture, or ``None`` for a model that is no listwise reranker."""
    arch = model.architecture
    return arch.listwise if isinstance(arch, ListwiseReranker) else None


class ListwiseScorer(Scorer):
    """Documents scored within prompts that hold many of them, by the model's listwise layout."""

    name = "listwise"
    priority = 40
    # The call's instruction (and chat_template_kwargs) reach the scorer; a score template is refused.
    takes_template = True

    def supports(self, model: LoadedModel) -> bool:
        return _layout(model) is not None and "token_embed" in model.supported_tasks()

    def score_pairs(self, call: ScoreCall) -> list[tuple[float, list[int], bool]]:
        runner = call.runner
        model = runner.model
        layout = _layout(model)
        if layout is None:
            raise InvalidRequest(f"model '{model.name}' is no listwise reranker; its architecture names no listwise layout")
        if call.chat_template is not None:
            raise InvalidRequest(
                f"model '{model.name}' ranks with its own listwise prompt; a chat_template does not apply (send instruction)"
            )
        instruction = self._instruction(call.instruction, call.pooling_params)
        tok = model.tokenizer
        budget = min(int(v) for v in (tok.model_max_length, model.max_model_len.value) if v)
        groups: dict[str, list[int]] = {}
        for i, query in enumerate(call.first):
            groups.setdefault(query, []).append(i)
        queries = dict(zip(groups, _cut(tok, list(groups), layout.max_query_tokens)))
        docs = _cut(tok, list(call.second), layout.max_doc_tokens)
        blocks = [(q, block) for q, members in groups.items() for block in _blocks(layout, queries[q], members, docs, budget)]
        prompts = [Prompt(text=layout.prompt(queries[q].text, [docs[i].text for i in block], instruction)) for q, block in blocks]
        task = runner.task("token_embed")
        params = runner.check_params(call.pooling_params, len(prompts), task.name, call.tokenization_kwargs)
        params = [p.model_copy(update={"use_activation": False}) for p in params]
        results = runner.run(task, prompts, params, use_tqdm=call.use_tqdm)
        parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {q: [] for q in groups}
        read: dict[int, tuple[list[int], bool]] = {}
        for (q, block), (vectors, ids), prompt_cut in zip(blocks, results, results.truncated.tolist()):
            if vectors.shape[0] < len(block) + 1:
                raise InvalidRequest(
                    f"a listwise prompt of {len(block)} documents kept {len(ids)} tokens, which lost embed tokens: "
                    "send no truncate_prompt_tokens, or fewer or shorter documents"
                )
            if vectors.shape[0] > len(block) + 1:  # the layout's sanitize lets no text add one: a layout's bug
                raise RuntimeError(f"a listwise prompt of {len(block)} documents holds {vectors.shape[0]} embed tokens")
            parts[q].append((vectors[:-1].float(), vectors[-1].float()))
            read.update((i, (ids, bool(prompt_cut or queries[q].cut or docs[i].cut))) for i in block)
        out: dict[int, tuple[float, list[int], bool]] = {}
        for q, members in groups.items():
            # A group's blocks hold its members in order, so the merged scores come in that order.
            for i, score in zip(members, merged_scores(parts[q]).tolist()):
                out[i] = (score, *read[i])
        return [out[i] for i in range(len(call.first))]

    @staticmethod
    def _instruction(instruction: str | None, pooling_params: Any) -> str | None:
        """The call's instruction, else ``chat_template_kwargs.instruction`` (vLLM's way to send one).

        Raises:
            InvalidRequest: another ``chat_template_kwargs`` key, which no listwise prompt reads.
        """
        kwargs = template_kwargs(pooling_params) or {}
        unknown = sorted(set(kwargs) - {"instruction"})
        if unknown:
            raise InvalidRequest(f"chat_template_kwargs {', '.join(unknown)} do not apply to listwise scoring (only instruction)")
        given = kwargs.get("instruction")
        if given is not None and not isinstance(given, str):
            raise InvalidRequest(f"chat_template_kwargs instruction must be a string, got {type(given).__name__}")
        return instruction if instruction is not None else given


@hookimpl
def poolkit_register_scorers(register):
    register("listwise", ListwiseScorer)
