"""The built-in scorers, registered through ``poolkit_register_scorers``.

- ``cross-encoder``: a classifier with one output reads each (query, document) pair together,
  as sentence-transformers' ``CrossEncoder`` does; score templates apply (LLM rerankers). A
  CrossEncoder export scores as sentence-transformers does: its default prompt, its saved chat
  template when its Transformer declares the "message" modality, and over-long pairs truncated.
- ``bi-encoder``: the cosine similarity of the two embeddings.
- ``late-interaction``: MaxSim of query and document token vectors (ColBERT), through the
  ``maxsim`` kernel.

The two scorers that encode a pair's sides apart report the pair's prompt tokens as vLLM does:
the query's, the pad token, then the document's.
"""

from __future__ import annotations

import torch

from poolkit.contracts.architecture import LoadedModel
from poolkit.contracts.hookspecs import hookimpl
from poolkit.contracts.params import PoolingParams
from poolkit.contracts.scoring import ScoreCall, Scorer, template_kwargs
from poolkit.plugins.lookup import select_kernel


class CrossEncoderScorer(Scorer):
    """Relevance of each pair read together by a one-output classifier."""

    name = "cross-encoder"
    priority = 20
    takes_template = True

    def supports(self, model: LoadedModel) -> bool:
        return "classify" in model.supported_tasks() and model.architecture.num_labels == 1

    def refusal(self, model: LoadedModel) -> str | None:
        if "classify" not in model.supported_tasks():
            return None
        # vLLM's words first (its LLM.score, and its server, which then mounts no /score or /rerank).
        return (
            f"Scoring API is only enabled for num_labels == 1. Model '{model.name}' has "
            f"{model.architecture.num_labels} labels: scoring needs a classifier with one output (use LLM.classify)"
        )

    def score_pairs(self, call: ScoreCall) -> list[tuple[float, list[int], bool]]:
        runner = call.runner
        kwargs = template_kwargs(call.pooling_params)
        prompts = runner.pair_prompts(call.first, call.second, call.chat_template, call.instruction, kwargs)
        task = runner.task("classify")
        params = runner.check_params(call.pooling_params, len(prompts), task.name, call.tokenization_kwargs)
        params = self._default_truncation(runner.model, params)
        results = runner.run(task, prompts, params, use_tqdm=call.use_tqdm)
        return [(float(data.reshape(-1)[0]), ids, bool(cut)) for (data, ids), cut in zip(results, results.truncated)]

    @staticmethod
    def _default_truncation(model: LoadedModel, params: list[PoolingParams]) -> list[PoolingParams]:
        """A CrossEncoder export cuts over-long pairs (``longest_first``) as sentence-transformers
        does, rather than refusing them, unless a request says how to truncate: a truncation side,
        a number of tokens, or ``truncate_prompt_tokens`` set to ``None`` explicitly (vLLM's opt-out:
        an over-long pair is then an error)."""
        limit = model.st.pair_truncation if model.st is not None else None
        if limit is None:
            return params
        model_max = model.max_model_len.value
        if model_max is not None and limit >= model_max:
            limit = -1
        return [
            p if "truncate_prompt_tokens" in p.model_fields_set or p.truncation_side is not None
            else p.model_copy(update={"truncate_prompt_tokens": limit})
            for p in params
        ]


def _separator(model: LoadedModel) -> list[int]:
    """What joins a pair's query and document tokens when they are encoded apart: the pad token,
    as vLLM's scoring output (and so its usage) counts it; nothing for a tokenizer without one."""
    pad = getattr(model.tokenizer, "pad_token_id", None)
    return [] if pad is None else [pad]


def _each_text(call: ScoreCall, task_name: str) -> dict[str, tuple[tuple[torch.Tensor, list[int]], bool]]:
    """Each distinct text of the call's pairs run once through ``task_name``, as ``LLM.encode`` runs
    it: text -> ``((result, prompt token ids), truncated)``."""
    unique = list(dict.fromkeys(call.first + call.second))
    task, prompts, params = call.runner.prepare(unique, call.pooling_params, task_name, call.tokenization_kwargs)
    results = call.runner.run(task, prompts, params, use_tqdm=call.use_tqdm)
    return dict(zip(unique, zip(results, results.truncated.tolist())))


class BiEncoderScorer(Scorer):
    """Cosine similarity of the two texts' embeddings; each distinct text is embedded once."""

    name = "bi-encoder"
    priority = 10

    def supports(self, model: LoadedModel) -> bool:
        return "embed" in model.supported_tasks()

    def score_pairs(self, call: ScoreCall) -> list[tuple[float, list[int], bool]]:
        vectors = _each_text(call, "embed")
        pad = _separator(call.runner.model)
        out: list[tuple[float, list[int], bool]] = []
        for a, b in zip(call.first, call.second):
            ((da, ia), ca), ((db, ib), cb) = vectors[a], vectors[b]
            score = torch.nn.functional.cosine_similarity(da.float(), db.float(), dim=0)
            out.append((float(score), ia + pad + ib, ca or cb))
        return out


def _scored(row: tuple[torch.Tensor, list[int]], skip: torch.Tensor | None) -> torch.Tensor:
    """The token vectors of a result row that MaxSim reads: those whose tokens are not in ``skip``."""
    vectors, ids = row
    return vectors if skip is None else vectors[~torch.isin(torch.tensor(ids), skip)]


class LateInteractionScorer(Scorer):
    """MaxSim of query and document token vectors, with the model's ColBERT query/document markers,
    query expansion and skiplist."""

    name = "late-interaction"
    priority = 30

    def supports(self, model: LoadedModel) -> bool:
        return model.st is not None and model.st.late_interaction and "token_embed" in model.supported_tasks()

    def score_pairs(self, call: ScoreCall) -> list[tuple[float, list[int], bool]]:
        runner, first, second = call.runner, call.first, call.second
        if runner.model.architecture.media_processor is not None:
            return self._score_media(call)
        queries = list(dict.fromkeys(first))
        docs = list(dict.fromkeys(second))
        prompts = runner.role_prompts(queries, "query") + runner.role_prompts(docs, "document")
        task = runner.task("token_embed")
        params = runner.check_params(call.pooling_params, len(prompts), task.name, None)
        results = runner.run(task, prompts, params, use_tqdm=call.use_tqdm)
        q_skip, d_skip = (runner.skiplist(kind) for kind in ("query", "document"))
        q_vectors = {q: (_scored(row, q_skip), row[1]) for q, row in zip(queries, results[: len(queries)])}
        d_vectors = {d: (_scored(row, d_skip), row[1]) for d, row in zip(docs, results[len(queries) :])}
        cut = dict(zip([("q", q) for q in queries] + [("d", d) for d in docs], results.truncated.tolist()))
        pad = _separator(runner.model)
        # Results come back on the host: score them there, whatever device the model runs on.
        maxsim = select_kernel("maxsim", results[0][0].device if results else "cpu")
        out: dict[int, tuple[float, list[int], bool]] = {}
        for query in queries:
            members = [i for i, q in enumerate(first) if q == query]
            doc_rows = [d_vectors[second[i]][0] for i in members]
            cu = torch.tensor([0] + [len(d) for d in doc_rows]).cumsum(0)
            scores = maxsim(q_vectors[query][0], torch.cat(doc_rows), cu)
            for i, score in zip(members, scores.tolist()):
                out[i] = (score, q_vectors[query][1] + pad + d_vectors[second[i]][1], cut["q", query] or cut["d", second[i]])
        return [out[i] for i in range(len(first))]

    @staticmethod
    def _score_media(call: ScoreCall) -> list[tuple[float, list[int], bool]]:
        """MaxSim for a model whose media processor shapes its prompts (a visual retriever: a text is
        a query in its template, an image a page in its visual prompt): every token vector scored."""
        first, second = call.first, call.second
        rows = _each_text(call, "token_embed")
        pad = _separator(call.runner.model)
        maxsim = select_kernel("maxsim", next(iter(rows.values()))[0][0].device if rows else "cpu")
        out: dict[int, tuple[float, list[int], bool]] = {}
        for query in dict.fromkeys(first):
            members = [i for i, q in enumerate(first) if q == query]
            (q_vectors, q_ids), q_cut = rows[query]
            docs = [rows[second[i]] for i in members]
            cu = torch.tensor([0] + [len(d[0][0]) for d in docs]).cumsum(0)
            scores = maxsim(q_vectors, torch.cat([d[0][0] for d in docs]), cu)
            for i, score, ((_, d_ids), d_cut) in zip(members, scores.tolist(), docs):
                out[i] = (score, q_ids + pad + d_ids, q_cut or d_cut)
        return [out[i] for i in range(len(first))]


@hookimpl
def poolkit_register_scorers(register):
    register("cross-encoder", CrossEncoderScorer)
    register("bi-encoder", BiEncoderScorer)
    register("late-interaction", LateInteractionScorer)
