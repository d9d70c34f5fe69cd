"""The built-in scorers, registered through ``poolkit_register_scorers``.

- ``cross-encoder``: a classifier with one output reads each (query, document) pair together,
  as sentence-transformers' ``CrossEncoder`` does; score templates apply (LLM rerankers).
- ``bi-encoder``: the cosine similarity of the two embeddings.
- ``late-interaction``: MaxSim of query and document token vectors (ColBERT), through the
  ``maxsim`` kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from poolkit.errors import InvalidRequest
from poolkit.hookspecs import hookimpl
from poolkit.io import Prompt
from poolkit.kernel import select_kernel
from poolkit.plugins import registry
from poolkit.scoring import Scorer


class CrossEncoderScorer(Scorer):
    """Relevance of each pair read together by a one-output classifier."""

    name = "cross-encoder"
    priority = 20
    takes_template = True

    def supports(self, model: Any) -> bool:
        return "classify" in model.supported_tasks() and model.architecture.num_labels == 1

    def refusal(self, model: Any) -> str | None:
        if "classify" not in model.supported_tasks():
            return None
        # vLLM's words first (its LLM.score, and its server, which then mounts no /score or /rerank).
        return (
            f"Scoring API is only enabled for num_labels == 1. Model '{model.name}' has "
            f"{model.architecture.num_labels} labels: scoring needs a classifier with one output (use LLM.classify)"
        )

    def score(self, llm, first, second, pooling_params, *, use_tqdm, tokenization_kwargs, chat_template, instruction):
        prompts = self._pair_prompts(llm.model, first, second, chat_template, instruction)
        task = llm.task("classify")
        params = llm.check_params(pooling_params, len(prompts), task.name, tokenization_kwargs)
        results = llm.run(task, prompts, params, use_tqdm=use_tqdm)
        return [(float(data.reshape(-1)[0]), ids) for data, ids in results]

    @staticmethod
    def _pair_prompts(
        model: Any, first: list[str], second: list[str], chat_template: str | None, instruction: str | None
    ) -> list[Prompt]:
        """Prompts of (query, document) pairs: through a score template, or as tokenizer pairs."""
        processors = registry("io_processor")
        if chat_template is not None:
            processor = processors.get("score_template").with_template(chat_template)
        else:
            name = getattr(model.hf_config, "score_template", None)
            processor = processors.get(name) if name else None
        if processor is None:
            if instruction is not None:
                raise InvalidRequest("instruction needs a score template (chat_template=...)")
            return list(processors.get("text_pair").pre_process((first, second)))
        return list(processor.pre_process((first, second, instruction)))


class BiEncoderScorer(Scorer):
    """Cosine similarity of the two texts' embeddings; each distinct text is embedded once."""

    name = "bi-encoder"
    priority = 10

    def supports(self, model: Any) -> bool:
        return "embed" in model.supported_tasks()

    def score(self, llm, first, second, pooling_params, *, use_tqdm, tokenization_kwargs, chat_template, instruction):
        unique = list(dict.fromkeys(first + second))
        embedded = llm.encode(
            unique, pooling_params, pooling_task="embed", use_tqdm=use_tqdm, tokenization_kwargs=tokenization_kwargs
        )
        vectors = dict(zip(unique, embedded))
        out = []
        for a, b in zip(first, second):
            va, vb = vectors[a], vectors[b]
            score = torch.nn.functional.cosine_similarity(va.outputs.data.float(), vb.outputs.data.float(), dim=0)
            out.append((float(score), va.prompt_token_ids + vb.prompt_token_ids))
        return out


class LateInteractionScorer(Scorer):
    """MaxSim of query and document token vectors, with the model's ColBERT query/document markers."""

    name = "late-interaction"
    priority = 30

    def supports(self, model: Any) -> bool:
        return model.st is not None and model.st.late_interaction and "token_embed" in model.supported_tasks()

    def score(self, llm, first, second, pooling_params, *, use_tqdm, tokenization_kwargs, chat_template, instruction):
        colbert = registry("io_processor").get("colbert")
        queries = list(dict.fromkeys(first))
        docs = list(dict.fromkeys(second))
        prompts = list(colbert.pre_process({"texts": queries, "kind": "query", "model": llm.model}))
        prompts += colbert.pre_process({"texts": docs, "kind": "document", "model": llm.model})
        task = llm.task("token_embed")
        params = llm.check_params(pooling_params, len(prompts), task.name, None)
        results = llm.run(task, prompts, params, use_tqdm=use_tqdm)
        q_vectors = dict(zip(queries, results[: len(queries)]))
        d_vectors = dict(zip(docs, results[len(queries) :]))
        maxsim = select_kernel("maxsim", llm.model.device)
        out: list[tuple[float, list[int]] | None] = [None] * len(first)
        for query in queries:
            members = [i for i, q in enumerate(first) if q == query]
            doc_rows = [d_vectors[second[i]][0] for i in members]
            cu = torch.tensor([0] + [len(d) for d in doc_rows]).cumsum(0)
            scores = maxsim(q_vectors[query][0], torch.cat(doc_rows), cu)
            for i, score in zip(members, scores.tolist()):
                out[i] = (score, q_vectors[query][1] + d_vectors[second[i]][1])
        return out


@hookimpl
def poolkit_register_scorers(register):
    register("cross-encoder", CrossEncoderScorer)
    register("bi-encoder", BiEncoderScorer)
    register("late-interaction", LateInteractionScorer)
